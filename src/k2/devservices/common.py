"""Shared machinery of the development services: cache, Maven downloads, ports, processes, readiness.

Every service binds 127.0.0.1 only. Downloads go through Maven (``~/.m2``) and unpacked artefacts
are cached under ``~/.cache/k2`` (``K2_CACHE_DIR`` overrides; ``K2_MAVEN_REPO`` overrides ``~/.m2/repository``),
never inside the repository. A download
that cannot happen raises :class:`~k2.errors.DevServiceError` with the Maven output: nothing is
skipped silently.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from k2.errors import DevServiceError
from k2.logging import get_logger

log = get_logger(__name__)

HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


def cache_dir() -> Path:
    """``$K2_CACHE_DIR`` or ``~/.cache/k2`` (created)."""
    root = Path(os.environ.get("K2_CACHE_DIR") or Path.home() / ".cache" / "k2")
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so concurrent test sessions do not download the same thing twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def require_tool(name: str, hint: str) -> str:
    """The absolute path of an executable on PATH, or a DevServiceError saying how to get it."""
    found = shutil.which(name)
    if found is None:
        raise DevServiceError(f"{name!r} not found on PATH: {hint}")
    return found


def _run_maven(args: Sequence[str], cwd: Path) -> None:
    mvn = require_tool("mvn", "install Maven (Debian: apt-get install -y maven)")
    repo = os.environ.get("K2_MAVEN_REPO")  # e.g. an empty directory, to measure a cold download
    cmd = [mvn, "-B", "-q", *([f"-Dmaven.repo.local={repo}"] if repo else []), *args]
    log.info("maven_fetch", args=" ".join(args))
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)  # noqa: S603
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise DevServiceError(
            f"Maven could not download {' '.join(args)} (is Maven Central reachable?):\n" + "\n".join(tail)
        )


def maven_artifact(coords: str, dest: Path) -> Path:
    """Download one artifact (``group:artifact:version[:packaging[:classifier]]``) into ``dest``; cached."""
    _group, artifact, version, *rest = coords.split(":")
    packaging = rest[0] if rest else "jar"
    classifier = f"-{rest[1]}" if len(rest) > 1 else ""
    target = dest / f"{artifact}-{version}{classifier}.{packaging}"
    with file_lock(dest / ".lock"):
        if not target.exists():
            dest.mkdir(parents=True, exist_ok=True)
            _run_maven(["dependency:copy", f"-Dartifact={coords}", f"-DoutputDirectory={dest}"], cwd=dest)
            if not target.exists():
                raise DevServiceError(f"Maven reported success but {target} is missing")
    return target


def maven_classpath(dependencies: Sequence[str], dest: Path) -> Path:
    """Resolve ``dependencies`` (``group:artifact:version``) with their transitive jars into ``dest``/lib."""
    lib = dest / "lib"
    marker = dest / ".complete"
    with file_lock(dest / ".lock"):
        if not marker.exists():
            deps = "\n".join(
                f"<dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>"
                for g, a, v in (d.split(":") for d in dependencies)
            )
            (dest / "pom.xml").write_text(
                '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
                "<groupId>k2.devservices</groupId><artifactId>classpath</artifactId><version>1</version>"
                f"<packaging>pom</packaging><dependencies>{deps}</dependencies></project>\n"
            )
            shutil.rmtree(lib, ignore_errors=True)
            _run_maven(["dependency:copy-dependencies", f"-DoutputDirectory={lib}"], cwd=dest)
            marker.write_text("\n".join(dependencies) + "\n")
    return lib


def java() -> str:
    return require_tool("java", "install a Java 17+ runtime (Debian: apt-get install -y openjdk-17-jre-headless)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def listening_pids(port: int) -> list[int]:
    """The processes listening on TCP ``port`` (Linux: ``/proc/net/tcp*`` and every ``/proc/<pid>/fd``
    this user may read); empty elsewhere or when nothing listens."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(fields[9])
    if not inodes:
        return []
    wanted = {f"socket:[{inode}]" for inode in inodes}
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with suppress(OSError):
            if any(os.readlink(fd) in wanted for fd in (proc / "fd").iterdir()):
                pids.append(int(proc.name))
    return sorted(pids)


def process_mentions(pid: int, marker: str) -> bool:
    """Whether process ``pid`` names ``marker`` (a path) in its command line or works in it: how a
    service of a dev stack is recognised even when it was restarted by hand (another pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return marker in cmdline or cwd == marker or cwd.startswith(marker.rstrip("/") + "/")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ManagedProcess:
    """A child process in its own session, its output in a log file; stopped politely, then killed.

    With ``die_with_parent`` the kernel SIGKILLs the child when the thread that started it exits
    (``PR_SET_PDEATHSIG``): start such processes from a long-lived thread (the main thread in tests).
    """

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        die_with_parent: bool = True,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.stop_signal = stop_signal
        log_path.parent.mkdir(parents=True, exist_ok=True)
        extra: dict[str, Any] = {}
        if user is not None:
            extra = {"user": user, "group": user, "extra_groups": []}
        with log_path.open("ab") as log_file:  # the child keeps its own copy of the descriptor
            self.popen = subprocess.Popen(  # noqa: S603
                list(cmd),
                cwd=cwd,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if die_with_parent else None,
                **extra,
            )
        log.info("service_process_started", service=name, pid=self.popen.pid, log=str(log_path))

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def terminate(self) -> None:
        """Send the stop signal to the process group without waiting (see :meth:`stop`)."""
        if self.alive:
            with _ignore_gone():
                os.killpg(self.popen.pid, self.stop_signal)

    def stop(self, timeout_s: float = 20.0) -> None:
        """Send the stop signal, wait up to ``timeout_s``, then SIGKILL the whole process group."""
        if self.alive:
            self.terminate()
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("service_stop_timeout", service=self.name, pid=self.pid, timeout_s=timeout_s)
                self.kill()
        log.info("service_process_stopped", service=self.name, pid=self.pid, returncode=self.popen.returncode)

    def kill(self) -> None:
        """SIGKILL the process group (a crash, for fault tests) and reap it."""
        with _ignore_gone():
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)


def _ignore_gone() -> suppress:
    return suppress(ProcessLookupError)


def wait_until(
    check: Callable[[], bool],
    *,
    what: str,
    timeout_s: float,
    process: ManagedProcess | None = None,
    interval_s: float = 0.1,
) -> float:
    """Poll ``check`` until true; fail early if ``process`` died. Returns the seconds waited."""
    start = time.monotonic()
    while True:
        if process is not None and not process.alive:
            raise DevServiceError(
                f"{process.name} exited with code {process.popen.returncode} before {what}; "
                f"last log lines ({process.log_path}):\n{process.log_tail()}"
            )
        try:
            if check():
                return time.monotonic() - start
        except OSError:
            pass
        if time.monotonic() - start > timeout_s:
            tail = f"; last log lines ({process.log_path}):\n{process.log_tail()}" if process else ""
            raise DevServiceError(f"timed out after {timeout_s:.0f}s waiting for {what}{tail}")
        time.sleep(interval_s)
