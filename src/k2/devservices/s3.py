"""s3proxy as the S3 endpoint: path-style, fixed credentials, objects on the local filesystem.

The ``org.gaul:s3proxy`` jar-with-dependencies comes from Maven Central. Credentials go into a
0600 properties file and are never logged.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k2.devservices.common import HOST, ManagedProcess, cache_dir, free_port, java, maven_artifact, wait_until
from k2.devservices.registry import http_status
from k2.lake.catalog import S3_CHECKSUM_ENV, relax_s3_checksums
from k2.logging import get_logger

__all__ = ["REGION", "S3_CHECKSUM_ENV", "S3Credentials", "S3Proxy", "relax_s3_checksums"]

log = get_logger(__name__)

S3PROXY_VERSION = "3.1.0"
REGION = "us-east-1"
JVM_OPTS = ("-Xmx384m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")


@dataclass(frozen=True)
class S3Credentials:
    access_key: str = "k2-dev-access"
    secret_key: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)


class S3Proxy:
    """s3proxy on 127.0.0.1 serving ``buckets`` (created as directories) from ``workdir/data``."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        buckets: tuple[str, ...] = ("k2-warehouse",),
        credentials: S3Credentials | None = None,
        version: str = S3PROXY_VERSION,
        die_with_parent: bool = True,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.buckets = buckets
        self.credentials = credentials or S3Credentials()
        self.version = version
        self.die_with_parent = die_with_parent
        self.process: ManagedProcess | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def _write_config(self) -> Path:
        path = self.workdir / "s3proxy.properties"
        lines = [
            f"s3proxy.endpoint={self.endpoint}",
            "s3proxy.authorization=aws-v2-or-v4",
            f"s3proxy.identity={self.credentials.access_key}",
            f"s3proxy.credential={self.credentials.secret_key}",
            "jclouds.provider=filesystem",
            f"jclouds.filesystem.basedir={self.data_dir}",
        ]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        return path

    def start(self, timeout_s: float = 60.0) -> None:
        jar = maven_artifact(f"org.gaul:s3proxy:{self.version}:jar:jar-with-dependencies", cache_dir() / "maven")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        self.process = ManagedProcess(
            "s3proxy",
            [java(), *JVM_OPTS, "-jar", str(jar), "--properties", str(config)],
            self.workdir / "s3proxy.log",
            env={"LOG_LEVEL": "warn"},
            die_with_parent=self.die_with_parent,
        )
        waited = wait_until(
            lambda: http_status(f"{self.endpoint}/") > 0,
            what=f"s3proxy at {self.endpoint}",
            timeout_s=timeout_s,
            process=self.process,
        )
        self._create_buckets()
        log.info("s3_ready", endpoint=self.endpoint, buckets=",".join(self.buckets), waited_s=round(waited, 2))

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def filesystem(self) -> Any:
        """A ``pyarrow.fs.S3FileSystem`` on this endpoint (path-style; checksum env relaxed first)."""
        from pyarrow import fs

        relax_s3_checksums()
        return fs.S3FileSystem(
            access_key=self.credentials.access_key,
            secret_key=self.credentials.secret_key,
            endpoint_override=self.endpoint,
            region=REGION,
            force_virtual_addressing=False,
            allow_bucket_creation=True,
        )

    def _create_buckets(self) -> None:
        s3fs = self.filesystem()
        for bucket in self.buckets:
            s3fs.create_dir(bucket)
