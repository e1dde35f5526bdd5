"""Apicurio Registry 3.x, used through its Confluent-compatible API ``/apis/ccompat/v7``.

The ``io.apicurio:apicurio-registry-app:<version>:tar.gz:all`` distribution from Maven Central is
unpacked once into ``~/.cache/k2`` and run with local Java (a Quarkus application). Its storage is
its built-in H2 database: in memory by default (tests), or in files under ``workdir`` with
``persistent=True`` (``k2 dev``), so that a restarted registry keeps every schema and id.
"""

from __future__ import annotations

import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from k2.devservices.common import (
    HOST,
    ManagedProcess,
    cache_dir,
    file_lock,
    free_port,
    java,
    maven_artifact,
    wait_until,
)
from k2.errors import DevServiceError
from k2.logging import get_logger

log = get_logger(__name__)

APICURIO_VERSION = "3.0.9"
CCOMPAT_PATH = "/apis/ccompat/v7"
JVM_OPTS = ("-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true")


def apicurio_home(version: str = APICURIO_VERSION) -> Path:
    """The unpacked distribution (downloaded with Maven on first use)."""
    home = cache_dir() / f"apicurio-registry-{version}"
    with file_lock(cache_dir() / f"apicurio-registry-{version}.lock"):
        if not (home / ".complete").exists():
            archive = maven_artifact(f"io.apicurio:apicurio-registry-app:{version}:tar.gz:all", cache_dir() / "maven")
            shutil.rmtree(home, ignore_errors=True)
            home.mkdir(parents=True)
            with tarfile.open(archive) as tar:
                tar.extractall(home, filter="data")
            (home / ".complete").write_text(version + "\n")
    return home


def _runner_jar(home: Path) -> Path:
    for pattern in ("quarkus-app/quarkus-run.jar", "quarkus-run.jar", "*-runner.jar", "*/*-runner.jar"):
        found = sorted(home.glob(pattern))
        if found:
            return found[0]
    raise DevServiceError(f"no Quarkus runner jar in {home}")


def http_status(url: str, timeout_s: float = 2.0) -> int:
    """The HTTP status of a GET (error statuses included); raises OSError when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (http://127.0.0.1 only)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        with exc:  # an error response still holds the socket
            return int(exc.code)


class ApicurioRegistry:
    """One Apicurio Registry on 127.0.0.1; :attr:`url` is the Confluent-compatible base URL."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        version: str = APICURIO_VERSION,
        die_with_parent: bool = True,
        persistent: bool = False,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.version = version
        self.die_with_parent = die_with_parent
        self.persistent = persistent
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{CCOMPAT_PATH}"

    def start(self, timeout_s: float = 120.0) -> None:
        jar = _runner_jar(apicurio_home(self.version))
        self.workdir.mkdir(parents=True, exist_ok=True)
        props = [
            f"-Dquarkus.http.host={HOST}",
            f"-Dquarkus.http.port={self.port}",
            "-Dquarkus.http.access-log.enabled=false",
        ]
        if self.persistent:  # H2 in files instead of memory (the same driver, shipped with the registry)
            props.append(f"-Dapicurio.datasource.url=jdbc:h2:file:{self.workdir.resolve() / 'db' / 'registry'}")
        self.process = ManagedProcess(
            "apicurio-registry",
            [java(), *JVM_OPTS, *props, "-jar", str(jar)],
            self.workdir / "registry.log",
            cwd=self.workdir,
            die_with_parent=self.die_with_parent,
        )
        waited = wait_until(
            lambda: http_status(f"{self.url}/subjects") == 200,
            what=f"Apicurio Registry at {self.url}",
            timeout_s=timeout_s,
            process=self.process,
            interval_s=0.2,
        )
        log.info("registry_ready", url=self.url, waited_s=round(waited, 2))

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
