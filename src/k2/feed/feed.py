"""VenueFeed: one venue's part of a run. Its sessions, its parser, completeness per record kind, and the
pipeline columns stamped after deduplication.

Built from the venue's registry entry (:class:`k2.sources.venue.Venue`) and a :class:`FeedStart`
(what is already stored: the next platform sequence per kind, the completeness state, gaps left
OPEN), which the service reads from the sink's side (the tables in embedded mode, the topics in
`k2 ingest`). The :class:`~k2.feed.runner.FeedRunner` drives it::

    frames -> parser (rows per kind, rejects) -> quarantine
           -> trades: TradeCompleteness (gaps, dedup, checks, backfill)   -> stamp -> sink
           -> quotes: QuoteCompleteness (repeats, crossed books, stale)   -> stamp -> sink

``platform_sequence`` is kept per venue and kind (``k2.platform-sequence.<venue>`` in each commit), so
several feeds can share a table without handing out the same numbers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from k2.config import K2Settings
from k2.feed.offload import ParseProcess
from k2.feed.quotes import QuoteCompleteness
from k2.feed.sink import Checkpoint
from k2.feed.stamp import stamp
from k2.feed.trades import TradeCompleteness
from k2.lake.quarantine import Quarantine
from k2.logging import get_logger
from k2.metrics import LAST_EVENT_TIME, RECORDS_NORMALIZED
from k2.quality.records import events_batch
from k2.quality.sequence import Gap, Seed, StreamKey, StreamState
from k2.schema.kinds import RecordKind
from k2.sources.base import ParsedBatch, RawFrame
from k2.sources.session import WebSocketSession, wall_clock_us
from k2.sources.venue import SymbolRules, Venue

log = get_logger(__name__)

PLATFORM_SEQUENCE_PREFIX = "k2.platform-sequence."
LEGACY_PLATFORM_SEQUENCE = "k2.platform-sequence"  # before sequences were per venue (Binance trades only)
# With source.parse_process: batches handed to the parse process before the feed waits for the oldest.
MAX_BATCHES_IN_FLIGHT = 2


def platform_sequence_property(venue: str) -> str:
    return PLATFORM_SEQUENCE_PREFIX + venue


@dataclass
class FeedStart:
    """What a feed starts from (read by the service from the tables or the topics)."""

    next_sequence: dict[RecordKind, int] = field(default_factory=dict)  # platform_sequence of the next row
    trade_state: Mapping[StreamKey, StreamState] | None = None  # recorded with the newest commit
    trade_seed: Mapping[str, Seed] | None = None  # stored ids, when no state was recorded
    quote_state: Mapping[StreamKey, int] | None = None
    open_gaps: list[Gap] = field(default_factory=list)  # recorded OPEN, never settled


class VenueFeed:
    """One venue's streams for ``symbols`` x ``kinds`` (implements :class:`k2.feed.runner.Feed`)."""

    def __init__(
        self,
        venue: Venue,
        settings: K2Settings,
        *,
        symbols: Sequence[str],
        kinds: Sequence[RecordKind],
        rules: SymbolRules,
        quarantine: Quarantine,
        start: FeedStart,
        is_sample_data: bool = False,
        ws_base_url: str | None = None,
        rest_url: str | None = None,
        **parser_options: Any,
    ) -> None:
        self.venue = venue
        self.name = venue.name
        self.settings = settings
        self.is_sample_data = is_sample_data
        self.quarantine = quarantine
        self.parser = venue.build_parser(
            symbols, kinds, rules=rules, validation=settings.source.validation, is_sample_data=is_sample_data,
            **parser_options,
        )  # fmt: skip
        self.kinds = self.parser.kinds
        self.urls = self.parser.stream_urls(ws_base_url or settings.source.ws_url or venue.ws_url)
        subscribe = self.parser.subscribe_messages()
        self.sessions = [
            WebSocketSession(url, venue=venue.name, settings=settings.source, subscribe_messages=subscribe)
            for url in self.urls
        ]
        self._next = {k: start.next_sequence.get(k, 1) for k in self.kinds}
        self._symbols = set(self.parser.symbols)
        self.rules = rules
        self.instruments: dict[str, str] = {s: rules.instrument(s).name for s in self.parser.symbols}
        now = wall_clock_us()
        self.trades: TradeCompleteness | None = None
        self.quotes: QuoteCompleteness | None = None
        self._backfilled: list[pa.RecordBatch] = []
        if RecordKind.TRADES in self.kinds:
            url = rest_url or settings.source.rest_url or venue.rest_url
            fetcher = None
            if venue.backfill is not None and url is not None:
                fetcher = lambda: venue.fetcher(settings, rules, url)  # noqa: E731 - built when backfill starts
            self.trades = TradeCompleteness(
                settings, exchange=venue.exchange, venue=venue.name, is_sample_data=is_sample_data, now_us=now,
                stream=venue.streams[RecordKind.TRADES], seed=start.trade_seed, state=start.trade_state,
                fetcher=fetcher, quarantine=quarantine.add,
            )  # fmt: skip
            self.trades.resolve_stored(start.open_gaps, start.trade_seed, now)
        if RecordKind.QUOTES in self.kinds:
            self.quotes = QuoteCompleteness(
                settings, exchange=venue.exchange, venue=venue.name, stream=venue.streams[RecordKind.QUOTES],
                state=start.quote_state,
            )  # fmt: skip
        self._parse_process: ParseProcess | None = None  # started at the first batch (source.parse_process)
        self._in_flight: deque[tuple[list[RawFrame], asyncio.Future[ParsedBatch]]] = deque()
        self.frames = 0
        self.rejected = 0
        self.rows: dict[str, int] = {}
        self.rows_by_symbol: dict[str, int] = {}

    def next_sequence(self, kind: RecordKind) -> int:
        """The platform_sequence the next ``kind`` row gets (recovered from the table on start)."""
        return self._next[kind]

    # --- the runner's Feed protocol ---------------------------------------------------------------
    async def parse(self, frames: list[RawFrame]) -> list[tuple[RecordKind, pa.RecordBatch]]:
        if not self.settings.source.parse_process:
            return self.take(frames, self.parser.parse(frames)) if frames else []
        # In a child process, pipelined: this batch is handed over, and the rows of the batches handed
        # over before it that are parsed by now are returned, in order (waiting for the oldest when
        # too many are out: that is the backpressure). The runner calls again while parsing().
        if self._parse_process is None:
            self._parse_process = ParseProcess(self.parser, self.name)
        if frames:
            self._in_flight.append((frames, asyncio.ensure_future(self._parse_process.parse(frames))))
        out: list[tuple[RecordKind, pa.RecordBatch]] = []
        while self._in_flight and (self._in_flight[0][1].done() or len(self._in_flight) > MAX_BATCHES_IN_FLIGHT):
            sent, parsed = self._in_flight.popleft()
            out.extend(self.take(sent, await parsed))
        return out

    def parsing(self) -> bool:
        return bool(self._in_flight)

    def take(self, frames: list[RawFrame], parsed: ParsedBatch) -> list[tuple[RecordKind, pa.RecordBatch]]:
        """What ``frames`` parsed to, through quarantine, completeness and stamping: rows per kind to store."""
        self.frames += len(frames)
        if parsed.rejected:
            self.rejected += len(parsed.rejected)
            self.quarantine.add(parsed.rejected)
            for intake in (self.trades, self.quotes):
                if intake is not None:
                    intake.rejected(parsed.rejected)
        now = wall_clock_us()
        out: list[tuple[RecordKind, pa.RecordBatch]] = []
        for kind, batch in parsed.records.items():
            if batch.num_rows == 0:
                continue
            RECORDS_NORMALIZED.labels(venue=self.name, data_type=kind.value).inc(batch.num_rows)
            if kind is RecordKind.TRADES and self.trades is not None:
                batch = self.trades.ingest(batch, now)  # duplicates dropped (and resets held) here
                self._observe_trades(batch)
            elif kind is RecordKind.QUOTES and self.quotes is not None:
                batch = self.quotes.ingest(batch, now)
            if batch.num_rows:
                out.append((kind, self._stamp(kind, batch)))
        return out

    def close(self) -> None:
        for _, parsed in self._in_flight:  # a run that failed: what was handed over is not stored
            if not parsed.done():
                parsed.cancel()
            elif not parsed.cancelled():
                parsed.exception()  # seen: the run's own error is the one raised
        self._in_flight.clear()
        if self._parse_process is not None:
            self._parse_process.close()
            self._parse_process = None

    def backfilled(self) -> list[tuple[RecordKind, pa.RecordBatch]]:
        batches, self._backfilled = self._backfilled, []
        return [(RecordKind.TRADES, self._stamp(RecordKind.TRADES, b)) for b in batches if b.num_rows]

    def tick(self, now_us: int) -> None:
        for intake in (self.trades, self.quotes):
            if intake is not None:
                intake.tick(now_us)

    def take_events(self) -> pa.RecordBatch | None:
        events = [
            *(self.trades.take_events() if self.trades else []),
            *(self.quotes.take_events() if self.quotes else []),
        ]
        return events_batch(events) if events else None

    def checkpoint(self) -> Checkpoint:
        props: dict[RecordKind, dict[str, str]] = {}
        for kind in self.kinds:
            props[kind] = {platform_sequence_property(self.name): str(self._next[kind] - 1)}
        if self.trades is not None:
            props[RecordKind.TRADES].update(self.trades.recorded_state())
        if self.quotes is not None:
            props[RecordKind.QUOTES].update(self.quotes.recorded_state())
        return Checkpoint(props)

    def backfill_task(self) -> Callable[[], Coroutine[Any, Any, None]] | None:
        trades = self.trades
        if trades is None or not self.settings.quality.backfill or self.venue.backfill is None:
            return None
        return lambda: trades.run_backfill(self._deliver_backfilled)

    def get_stats(self) -> dict[str, Any]:
        return {
            "venue": self.name,
            "frames": self.frames,
            "rejected": self.rejected,
            "rows": dict(self.rows),
            "rows_by_symbol": dict(self.rows_by_symbol),
            "sessions": [s.get_stats() for s in self.sessions],
            "quarantine": dict(self.quarantine.counts),
            "quality": {
                **({"trades": self.trades.stats.as_dict()} if self.trades else {}),
                **({"quotes": self.quotes.stats.as_dict()} if self.quotes else {}),
            },
        }

    # --- internals ------------------------------------------------------------------------------
    def _deliver_backfilled(self, batch: pa.RecordBatch) -> None:
        """Rows the backfill task fetched (already deduplicated by the tracker), for :meth:`backfilled`."""
        self._backfilled.append(batch)

    def _stamp(self, kind: RecordKind, batch: pa.RecordBatch) -> pa.RecordBatch:
        first = self._next[kind]
        self._next[kind] = first + batch.num_rows
        self.rows[kind.value] = self.rows.get(kind.value, 0) + batch.num_rows
        for symbol in set(batch.column("symbol").unique().to_pylist()) - self.instruments.keys():
            self.instruments[symbol] = self.rules.instrument(symbol).name  # a parser keeps to its symbols
        return stamp(kind, batch, first, self.is_sample_data, self.instruments)

    def _observe_trades(self, batch: pa.RecordBatch) -> None:
        """Rows and newest trade time per symbol (integer microseconds: no value can fail to convert)."""
        if batch.num_rows == 0:
            return
        table = pa.Table.from_batches([batch]).select(["symbol", "timestamp"])
        grouped = (
            table.set_column(1, "t", table.column("timestamp").cast(pa.int64()))
            .group_by("symbol")
            .aggregate([("t", "max"), ("symbol", "count")])
        )
        for symbol, newest_us, count in zip(
            grouped["symbol"].to_pylist(),
            grouped["t_max"].to_pylist(),
            grouped["symbol_count"].to_pylist(),
            strict=True,
        ):
            self.rows_by_symbol[symbol] = self.rows_by_symbol.get(symbol, 0) + count
            if symbol in self._symbols:
                LAST_EVENT_TIME.labels(venue=self.name, symbol=symbol).set(newest_us / 1e6)


def recovered_sequences(properties: Mapping[RecordKind, Mapping[str, str]], venue: str) -> dict[RecordKind, int]:
    """The next platform sequence per kind from each kind's committed summary properties."""
    out: dict[RecordKind, int] = {}
    for kind, props in properties.items():
        value = props.get(platform_sequence_property(venue))
        if value is None and kind is RecordKind.TRADES and venue == "binance":
            value = props.get(LEGACY_PLATFORM_SEQUENCE)
        out[kind] = (int(value) if value is not None else 0) + 1
    return out


__all__ = ["FeedStart", "VenueFeed", "platform_sequence_property", "recovered_sequences"]
