"""s3proxy from k2.devservices: pyarrow's S3FileSystem writes, lists and reads objects (path-style)."""

from __future__ import annotations

import uuid

import pytest
from pyarrow import fs

from tests.integration.services.fixtures import S3Service

pytestmark = [pytest.mark.integration, pytest.mark.services]


def test_put_get_list_object(s3: S3Service) -> None:
    s3fs = s3.filesystem()
    prefix = f"{s3.bucket}/smoke-{uuid.uuid4().hex[:8]}"
    payload = bytes(range(256)) * 40_000  # 10 MB: a multipart upload

    with s3fs.open_output_stream(f"{prefix}/big.bin") as out:
        out.write(payload)
    with s3fs.open_output_stream(f"{prefix}/small.txt") as out:
        out.write(b"k2")

    with s3fs.open_input_stream(f"{prefix}/big.bin") as src:
        assert src.read() == payload
    with s3fs.open_input_stream(f"{prefix}/small.txt") as src:
        assert src.read() == b"k2"
    listed = sorted((i.path, i.size) for i in s3fs.get_file_info(fs.FileSelector(prefix)))
    assert listed == [(f"{prefix}/big.bin", len(payload)), (f"{prefix}/small.txt", 2)]


def test_wrong_secret_is_refused(s3: S3Service) -> None:
    wrong = fs.S3FileSystem(
        access_key=s3.access_key,
        secret_key="not-the-secret",
        endpoint_override=s3.endpoint,
        region=s3.region,
        force_virtual_addressing=False,
    )
    with pytest.raises(OSError, match=r"(?i)access denied|signature|forbidden|403"):
        wrong.get_file_info(fs.FileSelector(s3.bucket))
