"""A job's outputs as a streamed archive: a tar whose length is known up front and whose every byte range is
the same as in the whole, a zip streamed without seeking; links and hidden files are never included."""
from __future__ import annotations

import io
import os
import tarfile
import zipfile

import pytest

from lrface.service.api.job_outputs import TarStream, iter_zip, parse_range

PREFIX = "0123456789abcdef0123456789abcdef/"


@pytest.fixture
def outputs(tmp_path):
    root = tmp_path / "job"
    files = {
        "manifest.jsonl": b'{"source": "a.png"}\n',
        "a_0.png": os.urandom(1000),
        "empty.txt": b"",
        "exact_block.bin": b"x" * 512,
        "d" * 60 + "/" + "e" * 70 + "_0.png": os.urandom(700),  # a name longer than ustar's 100 bytes
        "gens\u00e9/caf\u00e9_1.png": os.urandom(3000),  # not ASCII
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"secret")
    os.symlink(outside, root / "link.png")  # never archived, never followed
    (root / ".parts").mkdir()
    (root / ".parts" / "000000.npz").write_bytes(b"part")
    (root / ".a_1.png.1.2.tmp").write_bytes(b"half")
    return root, files


def test_the_tar_has_every_output_and_its_announced_length(outputs):
    root, files = outputs
    tar = TarStream(root, PREFIX, 1_700_000_000)
    data = b"".join(tar.iter_range(0, tar.length))
    assert len(data) == tar.length and tar.length % 10240 == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        got = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
        assert all(m.mtime == 1_700_000_000 and m.isreg() for m in tf.getmembers())
    assert got == {PREFIX + name: content for name, content in files.items()}


def test_any_byte_range_of_the_tar_is_that_slice_of_the_whole(outputs):
    root, _ = outputs
    tar = TarStream(root, PREFIX, 0)
    whole = b"".join(tar.iter_range(0, tar.length))
    for start, end in [(0, 1), (100, 5000), (511, 513), (1000, tar.length), (tar.length - 1, tar.length),
                       (0, tar.length)]:
        assert b"".join(tar.iter_range(start, end)) == whole[start:end], (start, end)


def test_the_zip_streams_every_output(outputs):
    root, files = outputs
    data = b"".join(iter_zip(root, PREFIX, 1_700_000_000))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        assert {n: zf.read(n) for n in zf.namelist()} == {PREFIX + name: content for name, content in files.items()}


@pytest.mark.parametrize("header, expected", [
    (None, None),
    ("bytes=0-99", (0, 100)),
    ("bytes=100-", (100, 1000)),
    ("bytes=-10", (990, 1000)),
    ("bytes=900-5000", (900, 1000)),
    ("bytes=1000-", "unsatisfiable"),
    ("bytes=5-2", "unsatisfiable"),
    ("bytes=0-1,5-6", None),  # several ranges: the whole archive
    ("items=0-1", None),
    ("bytes=x-y", None),
])
def test_range_headers(header, expected):
    assert parse_range(header, 1000) == expected
