"""Operations routes: health, readiness, Prometheus metrics, feed freshness, what the service offers,
and the key list for admins."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

import k2
from k2.api.formats import Format
from k2.api.keys import Scope
from k2.api.models import ApiKeyInfo, ApiKeyList, Dataset, Feed, Feeds, Health, Meta, Readiness, VenueStatus
from k2.api.queries import feeds as table_feeds
from k2.api.security import require
from k2.api.service import service
from k2.errors import K2Error
from k2.metrics import REGISTRY

_RATE_WINDOW_S = 10.0
_COUNTERS = {  # counter sample name -> what it counts per venue
    "k2_ws_messages_received_total": "frames",
    "k2_records_normalized_total": "records",
    "k2_messages_rejected_total": "rejected",
}


@dataclass(frozen=True)
class _Sample:
    at: float
    values: dict[tuple[str, str], float]  # (metric, venue) -> counter value


class ProcessCounters:
    """Rates from this process's own metrics registry (the pipeline's, inside `k2 run --serve`).

    :meth:`sample` reads the counters (called about once a second by the service); rates are the
    difference to the sample about ``_RATE_WINDOW_S`` seconds older.
    """

    def __init__(self) -> None:
        self._samples: deque[_Sample] = deque(maxlen=64)
        self._lock = threading.Lock()

    def sample(self) -> None:
        values: dict[tuple[str, str], float] = {}
        for family in REGISTRY.collect():
            for s in family.samples:
                name = _COUNTERS.get(s.name)
                if name is not None:
                    key = (name, s.labels.get("venue", ""))
                    values[key] = values.get(key, 0.0) + s.value
        with self._lock:
            self._samples.append(_Sample(time.monotonic(), values))

    def venues(self) -> list[VenueStatus]:
        connected: dict[str, bool] = {}
        last_event: dict[str, dict[str, datetime]] = {}
        for family in REGISTRY.collect():
            for s in family.samples:
                if s.name == "k2_ws_connected":
                    connected[s.labels["venue"]] = s.value >= 1
                elif s.name == "k2_last_event_timestamp_seconds" and s.value > 0:
                    at = datetime.fromtimestamp(s.value, tz=UTC)
                    last_event.setdefault(s.labels["venue"], {})[s.labels["symbol"]] = at
        with self._lock:
            samples = list(self._samples)
        rates: dict[tuple[str, str], float] = {}
        if len(samples) >= 2:
            new = samples[-1]
            old = next((s for s in samples if new.at - s.at <= _RATE_WINDOW_S), samples[0])
            span = new.at - old.at
            if span > 0:
                rates = {k: (v - old.values.get(k, 0.0)) / span for k, v in new.values.items()}

        def rate(kind: str, venue: str) -> float | None:
            return None if not rates else round(rates.get((kind, venue), 0.0), 3)

        return [
            VenueStatus(
                venue=venue,
                connected=connected.get(venue, False),
                frames_per_s=rate("frames", venue),
                records_per_s=rate("records", venue),
                rejected_per_s=rate("rejected", venue),
                last_event=last_event.get(venue, {}),
            )
            for venue in sorted(set(connected) | set(last_event))
        ]

    @staticmethod
    def last_commit() -> datetime | None:
        newest = 0.0
        for family in REGISTRY.collect():
            for s in family.samples:
                if s.name == "k2_lake_last_commit_timestamp_seconds":
                    newest = max(newest, s.value)
        return datetime.fromtimestamp(newest, tz=UTC) if newest > 0 else None


def build_router(datasets: list[Dataset]) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", response_model=Health, dependencies=[Depends(require(Scope.READ))], summary="Liveness")
    async def healthz() -> Health:
        return Health(status="ok")

    @router.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "The table cannot be read."}},
        dependencies=[Depends(require(Scope.READ))],
        summary="Readiness: the trades table can be planned",
    )
    async def readyz(request: Request) -> Any:
        svc = service(request)
        table = f"{svc.settings.lake.namespace}.{svc.settings.lake.trades_table}"
        try:
            plan = await svc.run(lambda w: w.engine.plan())
        except K2Error as exc:
            body = Readiness(status="not_ready", table=table, snapshot_id=None, detail=svc.redact(str(exc)))
            return JSONResponse(body.model_dump(), status_code=503)
        return Readiness(status="ready", table=table, snapshot_id=plan.snapshot_id, detail=f"{len(plan.files)} files")

    @router.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}},
        dependencies=[Depends(require(Scope.READ))],
        summary="Prometheus metrics of this process",
    )
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @router.get(
        "/v1/feeds",
        response_model=Feeds,
        dependencies=[Depends(require(Scope.READ))],
        summary="Freshness and rate per feed",
    )
    async def feeds(request: Request) -> Feeds:
        """Per instrument, from the table: newest trade, seconds since the newest ingestion, trades in
        the last minute. Inside `k2 run --serve` also the pipeline's own counters per venue."""
        svc = service(request)
        now = datetime.now(tz=UTC)
        rows: list[dict[str, Any]] | None = svc.feeds.get("table")
        if rows is None:
            rows = await svc.run(lambda w: table_feeds(w, now))
            svc.feeds.put("table", rows)
        counters: ProcessCounters | None = svc.extras.get("counters")
        return Feeds(
            now=now,
            source="process" if counters is not None else "table",
            feeds=[Feed(**r) for r in rows],
            venues=counters.venues() if counters is not None else [],
            last_commit=counters.last_commit() if counters is not None else None,
        )

    @router.get("/v1/meta", response_model=Meta, dependencies=[Depends(require(Scope.READ))], summary="Service facts")
    async def meta(request: Request) -> Meta:
        svc = service(request)
        return Meta(
            version=k2.__version__,
            auth=svc.guard.mode(),
            datasets=datasets,
            formats=[f.value for f in Format],
            max_rows=svc.settings.api.max_rows,
            query_timeout_s=svc.settings.api.query_timeout_s,
        )

    @router.get(
        "/v1/admin/keys",
        response_model=ApiKeyList,
        dependencies=[Depends(require(Scope.ADMIN))],
        summary="API keys (never their secrets)",
    )
    async def keys(request: Request) -> ApiKeyList:
        records = service(request).guard.store.records()
        return ApiKeyList(data=[ApiKeyInfo.model_validate(r.public()) for r in records])

    return router
