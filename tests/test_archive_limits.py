"""Archive limits that count every header byte and refuse absurd zip directories without building them (issue #15,
item 3), with crafted archives: in process (`extract_archive`) and uploaded over real HTTP.

- tar: a 100 MB PAX header in a ~100 KB .tar.gz, a 50 MB GNU long name, many extended headers adding up past
  LRFACE_MAX_ARCHIVE_HEADER_BYTES: refused (413) before the header is read, memory flat;
- zip: an end record (zip64) claiming 1,000,000 entries, a classic one claiming 60,000, and one claiming 1 while
  its directory holds 60,000: refused (413) from the end record or by walking the directory, nothing built;
- no error message echoes an attacker-sized name (a 20 KB name is cut to a few hundred characters) or a server
  path.
"""
from __future__ import annotations

import gzip
import io
import struct
import tarfile
import time
import tracemalloc
from pathlib import Path

import pytest

from lrface.service.jobs.archives import ArchiveLimits, extract_archive
from lrface.service.jobs.params import JobInputError
from service_helpers import HR_FACES, served_on_test_redis

LIMITS = ArchiveLimits(max_members=10_000, max_total_bytes=2 * 1024**3, max_ratio=100.0)


def _header(name: str, type_: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size = type_, size
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def tar_gz_with_extended_header(path: Path, type_: bytes, size: int) -> Path:
    """A .tar.gz whose first header announces an extended header (PAX / GNU long name) of `size` bytes."""
    with gzip.open(path, "wb", compresslevel=9) as out:
        out.write(_header("././@LongLink" if type_ == tarfile.GNUTYPE_LONGNAME else "pax", type_, size))
        block = b"a" * (1024 * 1024)
        left = size
        while left > 0:
            out.write(block[:left])
            left -= len(block)
        out.write(b"\0" * (-size % 512))
        face = HR_FACES[0].read_bytes()
        out.write(_header("a.jpg", tarfile.REGTYPE, len(face)) + face + b"\0" * (-len(face) % 512) + b"\0" * 1024)
    return path


def _refused(archive: Path, tmp: Path, limits: ArchiveLimits = LIMITS) -> tuple[JobInputError, float, int]:
    tracemalloc.start()
    start = time.monotonic()
    try:
        with pytest.raises(JobInputError) as err:
            extract_archive(archive, tmp / "out", limits)
        elapsed = time.monotonic() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return err.value, elapsed, peak


def test_a_huge_pax_header_is_refused_before_it_is_read(tmp_path):
    archive = tar_gz_with_extended_header(tmp_path / "pax.tar.gz", tarfile.XHDTYPE, 100 * 1024 * 1024)
    assert archive.stat().st_size < 400_000
    err, elapsed, peak = _refused(archive, tmp_path)
    assert (err.status_code, err.error) == (413, "archive_too_large") and "extended header" in err.message
    assert peak < 4 * 1024 * 1024, f"{peak / 2**20:.0f} MB allocated"
    assert elapsed < 5


def test_a_huge_gnu_long_name_is_refused_and_never_echoed(tmp_path):
    archive = tar_gz_with_extended_header(tmp_path / "long.tar.gz", tarfile.GNUTYPE_LONGNAME, 50 * 1024 * 1024)
    err, _, peak = _refused(archive, tmp_path)
    assert (err.status_code, err.error) == (413, "archive_too_large")
    assert len(err.message) < 300 and peak < 4 * 1024 * 1024


def test_many_extended_headers_count_against_the_header_budget(tmp_path):
    archive = tmp_path / "many.tar"
    face = HR_FACES[0].read_bytes()
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(100):
            info = tarfile.TarInfo(f"f{i}.jpg")
            info.size, info.pax_headers = len(face), {"comment": "x" * 2000}
            tf.addfile(info, io.BytesIO(face))
    err, _, _ = _refused(archive, tmp_path, ArchiveLimits(10_000, 2 * 1024**3, 100.0, max_header_bytes=64 * 1024))
    assert (err.status_code, err.error) == (413, "archive_too_large") and "LRFACE_MAX_ARCHIVE_HEADER_BYTES" in err.message
    # within the default budget the same archive is fine
    assert extract_archive(archive, tmp_path / "ok", LIMITS) == 100


@pytest.mark.parametrize("name", ["n" * 20_000 + ".jpg", "../" + "d" * 20_000 + ".jpg"])
def test_long_member_names_are_cut_in_errors_and_no_server_path_is_shown(tmp_path, name):
    archive = tmp_path / "names.tar"
    face = HR_FACES[0].read_bytes()
    with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo(name)
        info.size = len(face)
        tf.addfile(info, io.BytesIO(face))
    err, _, _ = _refused(archive, tmp_path)
    assert err.status_code == 400 and len(err.message) < 500, (err.error, len(err.message))
    assert str(tmp_path) not in err.message


def _zip_end(entries: int, cd_size: int, cd_offset: int, zip64_at: int | None) -> bytes:
    if zip64_at is None:
        return struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, entries, entries, cd_size, cd_offset, 0)
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, cd_size, cd_offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, zip64_at, 1)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return record + locator + end


def _central_records(n: int) -> bytes:
    record = b"PK\x01\x02" + b"\0" * 24 + struct.pack("<3H", 1, 0, 0) + b"\0" * 12 + b"a"
    return record * n


@pytest.mark.parametrize("kind", ["zip64 claims 1,000,000", "claims 60,000", "claims 1, holds 60,000"])
def test_absurd_zip_directories_are_refused_without_building_them(tmp_path, kind):
    archive = tmp_path / "dir.zip"
    if kind.startswith("zip64"):
        data = b"PK\x03\x04" + b"\0" * 26 + _zip_end(1_000_000, 0, 30, zip64_at=30)
    elif kind == "claims 60,000":
        cd = _central_records(60_000)
        data = b"PK\x03\x04" + b"\0" * 26 + cd + _zip_end(60_000, len(cd), 30, None)
    else:
        cd = _central_records(60_000)
        data = b"PK\x03\x04" + b"\0" * 26 + cd + _zip_end(1, len(cd), 30, None)
    archive.write_bytes(data)
    err, elapsed, peak = _refused(archive, tmp_path)
    assert (err.status_code, err.error) == (413, "archive_too_large"), err.message
    assert elapsed < 3 and peak < 2 * 1024 * 1024, (elapsed, peak)


# -- uploaded over real HTTP -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory, mrgan_path, embedder_path):
    tmp = tmp_path_factory.mktemp("archive-limits")
    with served_on_test_redis(tmp, mrgan_path, embedder_path) as srv:
        yield srv


def _rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_uploaded_header_bombs_are_refused_with_flat_memory(server, tmp_path):
    pax = tar_gz_with_extended_header(tmp_path / "pax.tar.gz", tarfile.XHDTYPE, 400 * 1024 * 1024)
    longname = tar_gz_with_extended_header(tmp_path / "long.tar.gz", tarfile.GNUTYPE_LONGNAME, 50 * 1024 * 1024)
    zip64 = tmp_path / "dir.zip"
    zip64.write_bytes(b"PK\x03\x04" + b"\0" * 26 + _zip_end(1_000_000, 0, 30, zip64_at=30))
    peak_before = _rss_mb(server.proc.pid)
    with server.client() as http:
        for archive in (pax, longname, zip64):
            start = time.monotonic()
            r = http.post("/v1/jobs", files={"archive": (archive.name, archive.read_bytes(), "application/octet-stream")},
                          data={"variants": "1"})
            elapsed = time.monotonic() - start
            assert r.status_code == 413 and r.json()["error"] == "archive_too_large", r.text
            assert len(r.content) < 1000 and elapsed < 10, (len(r.content), elapsed)
            assert str(server.tmp) not in r.text
    grown = _rss_mb(server.proc.pid) - peak_before
    print(f"400 MB PAX header ({pax.stat().st_size} B upload), 50 MB GNU long name, zip64 claiming 1,000,000 "
          f"entries: peak RSS +{grown:.0f} MB")
    assert grown < 60, f"the server's peak memory grew by {grown:.0f} MB"
    uploads = server.tmp / "jobs" / "_uploads"
    assert not uploads.exists() or not list(uploads.iterdir())
