"""DevStack: the distributed-mode services together (Kafka, Apicurio Registry, s3proxy, PostgreSQL).

``k2 dev up`` starts them detached and records their process ids, ports and credentials in
``<root>/state.json`` (mode 0600) so that ``k2 dev status``/``restart``/``down``/``env`` work from
another shell. Each service keeps its data under ``root`` (the registry too: its H2 database is in
files), so ``k2 dev restart SERVICE`` stops one service and starts it again with its data, ports and
credentials. ``status`` reports what answers on each port, not only whether the recorded process
lives: a service restarted by hand (another pid) is up, and recognised as the stack's own by its
command line naming the stack's directories. ``down`` stops every process and deletes the data.
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
from urllib.parse import unquote, urlsplit

from k2.devservices.common import (
    HOST,
    cache_dir,
    listening_pids,
    maven_artifact,
    port_open,
    process_mentions,
)
from k2.devservices.kafka import KafkaCluster, kafka_classpath
from k2.devservices.postgres import PostgresCredentials, PostgresServer, postgres_bindir
from k2.devservices.registry import ApicurioRegistry, apicurio_home, http_status
from k2.devservices.s3 import REGION, S3PROXY_VERSION, S3Credentials, S3Proxy
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
    s3_credentials: S3Credentials | None = None  # None: new ones (a restart passes the recorded ones)
    postgres_credentials: PostgresCredentials | None = None

    def __post_init__(self) -> None:
        unknown = set(self.services) - set(SERVICES)
        if unknown:
            raise DevServiceError(f"unknown service(s) {sorted(unknown)}: choose from {', '.join(SERVICES)}")
        keep = not self.detach
        self.kafka = KafkaCluster(
            self.root / "kafka", ports=[self.ports.kafka, self.ports.kafka_controller], die_with_parent=keep
        )
        self.registry = ApicurioRegistry(
            self.root / "registry", port=self.ports.registry, die_with_parent=keep, persistent=True
        )
        self.s3 = S3Proxy(
            self.root / "s3", port=self.ports.s3, buckets=(WAREHOUSE_BUCKET,), credentials=self.s3_credentials,
            die_with_parent=keep,
        )  # fmt: skip
        self.postgres = PostgresServer(
            self.root / "postgres", port=self.ports.postgres, credentials=self.postgres_credentials,
            die_with_parent=keep,
        )  # fmt: skip

    @classmethod
    def from_state(cls, root: Path) -> DevStack:
        """The stack recorded in ``root`` by ``k2 dev up``: its services, ports and credentials."""
        state = read_state(root)
        ports = dict(state["ports"])
        env = state["env"]
        s3 = postgres = None
        if "K2_LAKE__S3__SECRET_ACCESS_KEY" in env:
            s3 = S3Credentials(env["K2_LAKE__S3__ACCESS_KEY_ID"], env["K2_LAKE__S3__SECRET_ACCESS_KEY"])
        if "K2_LAKE__CATALOG_URI" in env:
            url = urlsplit(env["K2_LAKE__CATALOG_URI"])
            postgres = PostgresCredentials(
                unquote(url.username or ""), unquote(url.password or ""), url.path.lstrip("/")
            )
        controller = ports.get("kafka_controller") or _controller_port(root)
        return cls(
            root=root,
            services=tuple(state["services"]),
            ports=DevPorts(ports["kafka"], controller, ports["registry"], ports["s3"], ports["postgres"]),
            detach=True,
            s3_credentials=s3,
            postgres_credentials=postgres,
        )

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
            raise DevServiceError(
                f"a dev stack is already recorded in {self.state_path}: `k2 dev restart SERVICE` restarts one of"
                " its services with its data, `k2 dev down` removes it"
            )
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

    def _marker(self, name: str) -> str:
        """A path the command line (or working directory) of this stack's ``name`` process names."""
        return str(self.postgres.data_dir if name == "postgres" else (self.root / name).resolve())

    def restart(self, name: str, timeout_s: float = 30.0) -> float:
        """Stop service ``name`` of the recorded stack (the process ``up`` started, or one restarted by
        hand that is recognisably this stack's) and start it again with its data, ports and
        credentials; the state file records the new process. Returns the seconds it took to start."""
        if name not in self.services:
            raise DevServiceError(f"{name!r} is not a service of this stack ({', '.join(self.services)})")
        state = read_state(self.root)
        port = self._ports()[name]
        recorded = [e for e in state["processes"].get(name, []) if _is_ours(int(e["pid"]), int(e["started"]))]
        holders = [pid for pid in listening_pids(port) if not any(int(e["pid"]) == pid for e in recorded)]
        for pid in holders:
            if not process_mentions(pid, self._marker(name)):
                raise DevServiceError(
                    f"port {port} of {name} is held by pid {pid} ({_command(pid)}), not a process of the stack"
                    f" in {self.root}: stop it first"
                )
        for entry in recorded:
            _signal_group(int(entry["pid"]), signal.Signals(int(entry["signal"])), int(entry["started"]))
        for pid in holders:  # restarted by hand
            _signal(pid, signal.SIGINT if name == "postgres" else signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while port_open(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in listening_pids(port):  # did not stop in time
            _signal(pid, signal.SIGKILL)
        start = time.monotonic()
        if name == "postgres":
            self.postgres.start(reuse=True)
        else:
            self._service(name).start()
        seconds = time.monotonic() - start
        state["processes"][name] = self._process_entries(name)
        state["ports"]["kafka_controller"] = self.ports.kafka_controller
        _write_state(self.state_path, state)
        log.info("devstack_restarted", service=name, seconds=round(seconds, 2))
        return seconds

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

    def _process_entries(self, name: str) -> list[dict[str, Any]]:
        return [
            {"pid": p.pid, "started": _start_ticks(p.pid), "signal": int(p.stop_signal)} for p in self._processes(name)
        ]

    def _write_state(self) -> None:
        state = {
            "services": list(self.services),
            "processes": {name: self._process_entries(name) for name in self.services},
            "ports": self._ports() | {"kafka_controller": self.ports.kafka_controller},
            "endpoints": self.endpoints(),
            "env": self.env(),
            "postgres_data": str(self.postgres.data_dir),
        }
        _write_state(self.state_path, state)

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
            entries = [e for recorded in state["processes"].values() for e in recorded]
            by_hand = [  # services restarted outside `k2 dev`: recognised by the stack's paths
                (pid, ticks)
                for name in self.services
                for pid in listening_pids(self._ports()[name])
                if process_mentions(pid, self._marker(name))
                and (ticks := _start_ticks(pid)) is not None
                and not any(int(e["pid"]) == pid for e in entries)
            ]
            for entry in entries:
                _signal_group(int(entry["pid"]), signal.Signals(int(entry["signal"])), int(entry["started"]))
            for pid, _ in by_hand:
                _signal(pid, signal.SIGTERM)
            for pid, ticks in [*((int(e["pid"]), int(e["started"])) for e in entries), *by_hand]:
                _wait_gone(pid, timeout_s=30.0, started=ticks)
        shutil.rmtree(self.postgres.data_dir, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)
        log.info("devstack_down", root=str(self.root))


def read_state(root: Path) -> dict[str, Any]:
    path = root / "state.json"
    if not path.exists():
        raise DevServiceError(f"no dev stack recorded in {root} (start one with `k2 dev up`)")
    state: dict[str, Any] = json.loads(path.read_text())
    return state


@dataclass(frozen=True)
class ServiceStatus:
    """What answers on a service's port: ``up`` or ``down``, and a note when that is not simply the
    process ``k2 dev`` started (restarted by hand, or running but not answering)."""

    state: str
    note: str = ""


def status(root: Path) -> dict[str, ServiceStatus]:
    """Each service of the stack recorded in ``root``: up when it answers on its port (the registry
    and s3proxy over HTTP, Kafka and PostgreSQL by accepting a connection), whichever process it is."""
    stack = DevStack.from_state(root)
    state = read_state(root)
    result: dict[str, ServiceStatus] = {}
    for name in stack.services:
        port = int(state["ports"][name])
        recorded = [
            int(e["pid"]) for e in state["processes"].get(name, []) if _is_ours(int(e["pid"]), int(e["started"]))
        ]
        holders = listening_pids(port)
        if not _answers(name, port):
            note = f"pid {recorded[0]} runs but does not answer on port {port}" if recorded else ""
            result[name] = ServiceStatus("down", note)
        elif not holders or set(holders) & set(recorded):
            result[name] = ServiceStatus("up")
        elif all(process_mentions(pid, stack._marker(name)) for pid in holders):
            result[name] = ServiceStatus("up", f"pid {holders[0]}, restarted outside `k2 dev`")
        else:
            result[name] = ServiceStatus("up", f"pid {holders[0]} is not a process of this stack")
    return result


def _answers(name: str, port: int) -> bool:
    try:
        if name == "registry":
            return http_status(f"http://{HOST}:{port}/apis/ccompat/v7/subjects") == 200
        if name == "s3":
            return http_status(f"http://{HOST}:{port}/") > 0
    except OSError:
        return False
    return port_open(port)


def _controller_port(root: Path) -> int:
    """Kafka's controller port from its configuration (stacks recorded before it was in the state)."""
    for line in (root / "kafka" / "node-1" / "server.properties").read_text().splitlines():
        if line.startswith("listeners="):
            return int(line.rsplit(":", 1)[1])
    raise DevServiceError(f"no Kafka controller port in {root / 'kafka'}")


def _write_state(path: Path, state: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(state, handle, indent=2)


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200].strip()
    except OSError:
        return "gone"


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


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
