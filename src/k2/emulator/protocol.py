"""Binance spot stream protocol details the emulator needs: request targets and control messages.

Pure functions: request path -> subscription, control message -> decoded request or error reply.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import msgspec

MAX_STREAMS_PER_CONNECTION = 1024


class PathError(Exception):
    """A request target the server refuses at the handshake, with its HTTP status."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def parse_target(target: str) -> tuple[bool, list[str]]:
    """``(combined, streams)`` for a request target such as ``/stream?streams=a@trade/b@trade``.

    ``/stream`` serves combined-stream envelopes, ``/ws[/<stream>...]`` raw events; both may start
    empty and SUBSCRIBE later. Raises :class:`PathError` (404 unknown path, 400 bad parameters).
    """
    parts = urllib.parse.urlsplit(target)
    query = urllib.parse.parse_qs(parts.query)
    time_unit = query.get("timeUnit", ["MILLISECOND"])[-1].upper()
    if time_unit not in ("MILLISECOND", "MS"):
        raise PathError(400, "the emulator replays recorded millisecond timestamps only\n")
    path = parts.path.rstrip("/") or "/"
    if path == "/stream":
        combined, names = True, "/".join(query.get("streams", [])).split("/")
    elif path == "/ws" or path.startswith("/ws/"):
        combined, names = False, path[4:].split("/")
    else:
        raise PathError(404, "Not Found\n")
    streams = list(dict.fromkeys(n for n in names if n))
    if len(streams) > MAX_STREAMS_PER_CONNECTION:
        raise PathError(400, f"at most {MAX_STREAMS_PER_CONNECTION} streams per connection\n")
    return combined, streams


class ControlRequest(msgspec.Struct):
    """``{"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1}``"""

    method: str
    params: list[str] = []
    id: int | str | None = None


_request_decoder = msgspec.json.Decoder(ControlRequest)
_encode = msgspec.json.Encoder().encode


def decode_control(message: str | bytes) -> ControlRequest | bytes:
    """The decoded request, or the error reply to send back (Binance's ``code``/``msg`` shape)."""
    try:
        return _request_decoder.decode(message)
    except msgspec.ValidationError as exc:
        return error_reply(2, f"Invalid request: {exc}")
    except msgspec.DecodeError as exc:
        return error_reply(3, f"Invalid JSON: {exc}")


def result_reply(request_id: int | str | None, result: Any = None) -> bytes:
    return _encode({"result": result, "id": request_id})


def error_reply(code: int, msg: str, request_id: int | str | None = None) -> bytes:
    body: dict[str, Any] = {"code": code, "msg": msg}
    if request_id is not None:
        body["id"] = request_id
    return _encode(body)
