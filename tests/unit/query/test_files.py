"""k2.query.files: TLS to an https S3 endpoint is verified, and DuckDB errors from the S3 filesystem are read."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from pydantic import SecretStr
from pyiceberg.io.pyarrow import PyArrowFileIO

from k2.config import S3Settings
from k2.errors import QueryError, ReadOnlyViolation, SnapshotExpired
from k2.query import files, sql
from tests.conftest import eventually

ROOT = "s3://k2-warehouse/wh/ns/"


class TlsListener:
    """A TLS server on 127.0.0.1 with a self-signed certificate (valid for 127.0.0.1, trusted by nobody) that
    counts the connections it handled and those on which the client sent anything (a request)."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert = cert
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(cert, key)
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.handled = 0
        self.requests = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed
                return
            conn.settimeout(10)
            try:
                with self._context.wrap_socket(conn, server_side=True) as tls:
                    if tls.recv(1):
                        self.requests += 1
            except (ssl.SSLError, OSError):
                pass  # a client that refused the certificate during the handshake
            finally:
                conn.close()
                self.handled += 1

    def close(self) -> None:
        self._sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept() (close alone does not)
        self._sock.close()
        self._thread.join(10)
        assert not self._thread.is_alive()


@pytest.fixture
def untrusted_https(tmp_path: Path) -> Iterator[TlsListener]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    listener = TlsListener(cert, key)
    yield listener
    listener.close()


def test_an_https_endpoint_with_an_untrusted_certificate_is_never_sent_a_request(
    untrusted_https: TlsListener,
) -> None:
    """The filesystem DuckDB reads S3 through is pyiceberg's, built from K2's S3 settings: TLS verified."""
    settings = S3Settings(
        endpoint=f"https://127.0.0.1:{untrusted_https.port}",
        access_key_id=SecretStr("k2-test-access"),
        secret_access_key=SecretStr("k2-test-secret"),
    )
    s3 = PyArrowFileIO(settings.fileio_properties()).fs_by_scheme("s3", "k2-warehouse")
    con = sql.open_connection(ROOT, filesystem=files.ScopedS3(s3, ROOT))
    with pytest.raises(duckdb.Error) as raised:
        con.sql("SELECT count(*) FROM read_parquet($f)", params={"f": f"{ROOT}trades/data/x.parquet"}).fetchall()
    error = files.translate(raised.value, "ns.trades")
    assert type(error) is QueryError and "k2-test-secret" not in str(error)
    assert "certificate" in str(error)
    assert "Traceback" not in str(error)  # the Python exception's own message, not DuckDB's wrapping of it
    eventually(lambda: untrusted_https.handled >= 1)
    assert untrusted_https.requests == 0  # connected, saw the certificate, hung up without a request

    # Control: a client that trusts this certificate does send its request, and the listener counts it.
    handled = untrusted_https.handled
    trusting = ssl.create_default_context(cafile=str(untrusted_https.cert))
    raw = socket.create_connection(("127.0.0.1", untrusted_https.port))
    with trusting.wrap_socket(raw, server_hostname="127.0.0.1") as tls, contextlib.suppress(ssl.SSLError, OSError):
        tls.sendall(b"HEAD / HTTP/1.1\r\n\r\n")
        tls.recv(1)  # until the listener hangs up: closing first could reset the connection before it reads
    eventually(lambda: untrusted_https.handled > handled)
    assert untrusted_https.requests == 1


def test_duckdb_errors_become_k2_errors(tmp_path: Path) -> None:
    con = sql.open_connection(f"{tmp_path}/")
    with pytest.raises(duckdb.Error) as missing:
        con.sql("SELECT * FROM read_parquet($f)", params={"f": f"{tmp_path}/gone.parquet"}).fetchall()
    with pytest.raises(duckdb.Error) as outside:
        con.sql("SELECT * FROM read_csv('/etc/passwd')").fetchall()
    with pytest.raises(duckdb.Error) as invalid:
        con.sql("SELECT 1 / 'x'").fetchall()
    assert isinstance(files.translate(missing.value, "ns.trades"), SnapshotExpired)
    assert isinstance(files.translate(outside.value, "ns.trades"), ReadOnlyViolation)
    assert type(files.translate(invalid.value, "ns.trades")) is QueryError
    assert files.python_error(invalid.value) is None
