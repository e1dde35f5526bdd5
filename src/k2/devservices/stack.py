"""DevStack: the distributed-mode services together (Kafka, Apicurio Registry, s3proxy, PostgreSQL).

``k2 dev up`` starts them detached and records their process ids, ports and credentials in
``<root>/state.json`` (mode 0600) so that ``k2 dev status``/``down``/``env`` work from another shell.
The stack is ephemeral: ``down`` stops every process and deletes the stack's data.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from k2.devservices.common import HOST, cache_dir, maven_artifact, port_open
from k2.devservices.kafka import KafkaCluster, kafka_classpath
from k2.devservices.postgres import PostgresServer, postgres_bindir
from k2.devservices.registry import ApicurioRegistry, apicurio_home
from k2.devservices.s3 import REGION, S3PROXY_VERSION, S3Proxy
from k2.errors import DevServiceError, K2Error
from k2.logging import get_logger

log = get_logger(__name__)

SERVICES = ("kafka", "registry", "s3", "postgres")
FETCHABLE = (*SERVICES, "spark")  # spark: only jars for the Spark tests (k2.devservices.spark), never started
WAREHOUSE_BUCKET = "k2-warehouse"


@dataclass(frozen=True)
class DevPorts:
    """Fixed ports of ``k2 dev up`` (tests pick free ports instead)."""

    kafka: int = 19092
    kafka_controller: int = 19093
    registry: int = 18081
    s3: int = 19000
    postgres: int = 15432


class _Service(Protocol):
    def start(self, timeout_s: float = ...) -> None: ...
    def stop(self) -> None: ...


def default_root() -> Path:
    return cache_dir() / "devstack"


def fetch(services: tuple[str, ...] = FETCHABLE) -> dict[str, float]:
    """Download (or find in the cache) what each service needs, without starting it; seconds per service."""
    from k2.devservices.spark import spark_jars

    steps: dict[str, Callable[[], object]] = {
        "spark": spark_jars,
        "kafka": kafka_classpath,
        "registry": apicurio_home,
        "s3": lambda: maven_artifact(
            f"org.gaul:s3proxy:{S3PROXY_VERSION}:jar:jar-with-dependencies", cache_dir() / "maven"
        ),
        "postgres": postgres_bindir,
    }
    timings: dict[str, float] = {}
    for name in services:
        start = time.monotonic()
        steps[name]()
        timings[name] = time.monotonic() - start
    return timings


@dataclass
class DevStack:
    """Start/stop the chosen services under ``root``; :meth:`env` gives the K2_* settings to reach them."""

    root: Path = field(default_factory=default_root)
    services: tuple[str, ...] = SERVICES
    ports: DevPorts = field(default_factory=DevPorts)
    detach: bool = False  # True: the processes outlive this Python process (k2 dev up)

    def __post_init__(self) -> None:
        unknown = set(self.services) - set(SERVICES)
        if unknown:
            raise DevServiceError(f"unknown service(s) {sorted(unknown)}: choose from {', '.join(SERVICES)}")
        keep = not self.detach
        self.kafka = KafkaCluster(
            self.root / "kafka", ports=[self.ports.kafka, self.ports.kafka_controller], die_with_parent=keep
        )
        self.registry = ApicurioRegistry(self.root / "registry", port=self.ports.registry, die_with_parent=keep)
        self.s3 = S3Proxy(self.root / "s3", port=self.ports.s3, buckets=(WAREHOUSE_BUCKET,), die_with_parent=keep)
        self.postgres = PostgresServer(self.root / "postgres", port=self.ports.postgres, die_with_parent=keep)

    def _service(self, name: str) -> _Service:
        services: dict[str, _Service] = {
            "kafka": self.kafka,
            "registry": self.registry,
            "s3": self.s3,
            "postgres": self.postgres,
        }
        return services[name]

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    def up(self) -> dict[str, float]:
        """Start the services (in parallel), write the state file; returns each service's start seconds."""
        if self.state_path.exists():
            raise DevServiceError(f"a dev stack is already recorded in {self.state_path}: run `k2 dev down` first")
        busy = [name for name, port in self._ports().items() if name in self.services and port_open(port)]
        if busy:
            raise DevServiceError(f"port(s) already in use for {', '.join(busy)}: stop whatever listens there")
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)

        def timed(name: str) -> float:
            start = time.monotonic()
            self._service(name).start()
            return time.monotonic() - start

        timings: dict[str, float] = {}
        errors = []
        if self.detach:  # in parallel: detached processes do not die with the starting thread
            with ThreadPoolExecutor(max_workers=len(self.services)) as pool:
                futures = {name: pool.submit(timed, name) for name in self.services}
                for name, future in futures.items():
                    try:
                        timings[name] = future.result()
                    except Exception as exc:  # collect, stop what started, then report
                        errors.append(f"{name}: {exc}")
        else:  # in this thread: PR_SET_PDEATHSIG fires when the *thread* that started a child exits
            for name in self.services:
                try:
                    timings[name] = timed(name)
                except K2Error as exc:
                    errors.append(f"{name}: {exc}")
                    break
        if errors:
            self.down()
            raise DevServiceError("dev stack failed to start:\n" + "\n".join(errors))
        self._write_state()
        return timings

    def _ports(self) -> dict[str, int]:
        p = self.ports
        return {"kafka": p.kafka, "registry": p.registry, "s3": p.s3, "postgres": p.postgres}

    def endpoints(self) -> dict[str, str]:
        """Human-readable endpoints (no secrets)."""
        all_endpoints = {
            "kafka": self.kafka.bootstrap_servers,
            "registry": self.registry.url,
            "s3": f"{self.s3.endpoint} (bucket {WAREHOUSE_BUCKET}, region {REGION})",
            "postgres": f"{HOST}:{self.postgres.port}/{self.postgres.credentials.database}",
        }
        return {name: all_endpoints[name] for name in self.services}

    def env(self) -> dict[str, str]:
        """``K2_*`` environment variables pointing K2 at this stack (includes credentials)."""
        env: dict[str, str] = {}
        if "kafka" in self.services:
            env["K2_KAFKA__BOOTSTRAP_SERVERS"] = self.kafka.bootstrap_servers
        if "registry" in self.services:
            env["K2_KAFKA__SCHEMA_REGISTRY_URL"] = self.registry.url
        if "s3" in self.services:
            env |= {
                "K2_LAKE__WAREHOUSE_URI": f"s3://{WAREHOUSE_BUCKET}/warehouse",
                "K2_LAKE__S3__ENDPOINT": self.s3.endpoint,
                "K2_LAKE__S3__REGION": REGION,
                "K2_LAKE__S3__ACCESS_KEY_ID": self.s3.credentials.access_key,
                "K2_LAKE__S3__SECRET_ACCESS_KEY": self.s3.credentials.secret_key,
            }
        if "postgres" in self.services:
            env["K2_LAKE__CATALOG_URI"] = self.postgres.sqlalchemy_url
        return env

    def _write_state(self) -> None:
        processes: dict[str, list[dict[str, Any]]] = {}
        for name in self.services:
            procs = self._processes(name)
            processes[name] = [
                {"pid": p.pid, "started": _start_ticks(p.pid), "signal": int(p.stop_signal)} for p in procs
            ]
        state = {
            "services": list(self.services),
            "processes": processes,
            "ports": self._ports(),
            "endpoints": self.endpoints(),
            "env": self.env(),
            "postgres_data": str(self.postgres.data_dir),
        }
        fd = os.open(self.state_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(state, handle, indent=2)

    def _processes(self, name: str) -> list[Any]:
        if name == "kafka":
            return [n.process for n in self.kafka.nodes if n.process is not None]
        service = self._service(name)
        process = getattr(service, "process", None)
        return [process] if process is not None else []

    def down(self) -> None:
        """Stop everything this object started, or (from another process) what the state file records."""
        started = [p for name in self.services for p in self._processes(name)]
        if started:
            for process in started:
                process.terminate()
            for process in started:
                process.stop(timeout_s=30.0)
        elif self.state_path.exists():
            state = read_state(self.root)
            for entries in state["processes"].values():
                for entry in entries:
                    _signal_group(int(entry["pid"]), signal.Signals(int(entry["signal"])), int(entry["started"]))
            for entries in state["processes"].values():
                for entry in entries:
                    _wait_gone(int(entry["pid"]), timeout_s=30.0, started=int(entry["started"]))
        shutil.rmtree(self.postgres.data_dir, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)
        log.info("devstack_down", root=str(self.root))


def read_state(root: Path) -> dict[str, Any]:
    path = root / "state.json"
    if not path.exists():
        raise DevServiceError(f"no dev stack recorded in {root} (start one with `k2 dev up`)")
    state: dict[str, Any] = json.loads(path.read_text())
    return state


def status(root: Path) -> dict[str, str]:
    """``service -> "up" | "down"`` for a stack started by ``k2 dev up``."""
    state = read_state(root)
    result: dict[str, str] = {}
    for name in state["services"]:
        entries = state["processes"].get(name, [])
        alive = bool(entries) and all(_is_ours(int(e["pid"]), int(e["started"])) for e in entries)
        result[name] = "up" if alive and port_open(int(state["ports"][name])) else "down"
    return result


def _start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), or None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return None if fields[0] == "Z" else int(fields[19])


def _is_ours(pid: int, started: int) -> bool:
    """True if ``pid`` is still the process the stack started (guards against pid reuse)."""
    return _start_ticks(pid) == started


def _signal_group(pid: int, sig: signal.Signals, started: int) -> None:
    if _is_ours(pid, started):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)


def _wait_gone(pid: int, *, timeout_s: float, started: int) -> None:
    deadline = time.monotonic() + timeout_s
    while _is_ours(pid, started) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _is_ours(pid, started):
        log.warning("devstack_force_kill", pid=pid)
        _signal_group(pid, signal.SIGKILL, started)
