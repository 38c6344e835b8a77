"""Job inputs are safe: folders stay under the data root, archives are checked before anything is extracted."""
from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from lrface.service.jobs.archives import ArchiveLimits, extract_archive
from lrface.service.jobs.inputs import plan_job_sources, resolve_input_dir
from lrface.service.jobs.params import JobInputError

LIMITS = ArchiveLimits(max_members=20, max_total_bytes=4 * 1024 * 1024, max_ratio=50.0)


# -- folders ---------------------------------------------------------------------------------------------------

@pytest.fixture
def root(tmp_path):
    data = tmp_path / "data"
    (data / "faces" / "sub").mkdir(parents=True)
    (data / "faces" / "a.png").write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"x")
    os.symlink(outside, data / "escape")
    os.symlink(outside / "secret.png", data / "faces" / "linked.png")
    return data


def test_a_relative_folder_under_the_root_resolves(root):
    assert resolve_input_dir(root, "faces") == (root / "faces").resolve()
    assert resolve_input_dir(root, "./faces/sub/") == (root / "faces" / "sub").resolve()


@pytest.mark.parametrize("path, status, code", [
    ("../", 400, "invalid_path"),
    ("faces/../../outside", 400, "invalid_path"),
    ("faces\\..\\..", 400, "invalid_path"),
    ("/etc", 400, "invalid_path"),
    ("C:/Windows", 400, "invalid_path"),
    ("", 400, "invalid_path"),
    ("escape", 403, "forbidden_path"),
    ("missing", 400, "input_not_found"),
    ("faces/a.png", 400, "input_not_found"),
])
def test_paths_leaving_the_root_or_missing_are_refused(root, path, status, code):
    with pytest.raises(JobInputError) as err:
        resolve_input_dir(root, path)
    assert (err.value.status_code, err.value.error) == (status, code)


def test_files_linking_outside_the_root_are_failures_not_sources(root):
    sources, failures = plan_job_sources(root / "faces", root.parent / "jobs" / "x", root)
    assert sources == ["a.png"]
    assert [(f["source"], f["reason"]) for f in failures] == [("linked.png", "outside_root")]


# -- archives --------------------------------------------------------------------------------------------------

def _zip(tmp: Path, members: list[tuple[str, bytes]], symlinks: dict[str, str] | None = None,
         compression=zipfile.ZIP_DEFLATED) -> Path:
    path = tmp / "upload.zip"
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members:
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def _tar(tmp: Path, build, mode: str = "w:gz") -> Path:
    path = tmp / "upload.tar.gz"
    with tarfile.open(path, mode) as tf:
        build(tf)
    return path


def _add(tf: tarfile.TarFile, name: str, data: bytes = b"", kind=tarfile.REGTYPE, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _refused(archive: Path, dest: Path) -> JobInputError:
    with pytest.raises(JobInputError) as err:
        extract_archive(archive, dest, LIMITS)
    assert not any(p.is_file() for p in dest.rglob("*")), "files were extracted from a refused archive"
    return err.value


def test_a_clean_zip_and_tar_extract_with_their_folders(tmp_path):
    dest = tmp_path / "zip-out"
    n = extract_archive(_zip(tmp_path, [("faces/a.png", b"1"), ("faces/sub/b.png", b"22"), ("./c.png", b"3")]), dest, LIMITS)
    assert n == 3 and (dest / "faces" / "sub" / "b.png").read_bytes() == b"22" and (dest / "c.png").is_file()
    dest = tmp_path / "tar-out"
    n = extract_archive(_tar(tmp_path, lambda tf: (_add(tf, "x", kind=tarfile.DIRTYPE), _add(tf, "x/a.png", b"abc"))), dest, LIMITS)
    assert n == 1 and (dest / "x" / "a.png").read_bytes() == b"abc"


@pytest.mark.parametrize("name", ["../evil.png", "faces/../../evil.png", "/abs/evil.png", "C:/evil.png", "a\\..\\evil.png"])
def test_zip_slip_and_absolute_names_are_refused(tmp_path, name):
    err = _refused(_zip(tmp_path, [("ok.png", b"1"), (name, b"2")]), tmp_path / "out")
    assert (err.status_code, err.error) == (400, "unsafe_archive")
    assert not (tmp_path / "evil.png").exists()


def test_zip_symlink_entries_are_refused(tmp_path):
    err = _refused(_zip(tmp_path, [("ok.png", b"1")], symlinks={"link.png": "/etc/passwd"}), tmp_path / "out")
    assert err.error == "unsafe_archive" and "link" in err.message


@pytest.mark.parametrize("kind, linkname", [(tarfile.SYMTYPE, "/etc/passwd"), (tarfile.LNKTYPE, "ok.png"),
                                            (tarfile.CHRTYPE, ""), (tarfile.BLKTYPE, ""), (tarfile.FIFOTYPE, "")])
def test_tar_links_and_device_files_are_refused(tmp_path, kind, linkname):
    archive = _tar(tmp_path, lambda tf: (_add(tf, "ok.png", b"1"), _add(tf, "bad", kind=kind, linkname=linkname)))
    err = _refused(archive, tmp_path / "out")
    assert (err.status_code, err.error) == (400, "unsafe_archive")


def test_tar_escaping_names_are_refused(tmp_path):
    for name in ("../evil.png", "/tmp/evil.png"):
        err = _refused(_tar(tmp_path, lambda tf: _add(tf, name, b"1")), tmp_path / "out")
        assert err.error == "unsafe_archive"


def test_too_many_members_are_refused(tmp_path):
    err = _refused(_zip(tmp_path, [(f"{i}.png", b"x") for i in range(LIMITS.max_members + 1)]), tmp_path / "out")
    assert (err.status_code, err.error) == (413, "archive_too_large")


def test_zip_bomb_by_compression_ratio_is_refused(tmp_path):
    err = _refused(_zip(tmp_path, [("zeros.png", b"\0" * (3 * 1024 * 1024))]), tmp_path / "out")
    assert (err.status_code, err.error) == (413, "archive_too_large") and "expands" in err.message


def test_total_uncompressed_size_over_the_limit_is_refused(tmp_path):
    big = os.urandom(1024 * 1024)  # incompressible: only the total size trips
    err = _refused(_zip(tmp_path, [(f"{i}.png", big) for i in range(5)], compression=zipfile.ZIP_STORED), tmp_path / "out")
    assert err.error == "archive_too_large"


def test_tar_bomb_is_refused_from_its_headers(tmp_path):
    archive = _tar(tmp_path, lambda tf: _add(tf, "zeros.png", b"\0" * (3 * 1024 * 1024)))
    err = _refused(archive, tmp_path / "out")
    assert err.error == "archive_too_large"


def test_duplicate_members_are_refused(tmp_path):
    with pytest.warns(UserWarning):  # zipfile itself warns about the duplicate name
        archive = _zip(tmp_path, [("a.png", b"1"), ("a.png", b"2")])
    err = _refused_any(archive, tmp_path / "out")
    assert err.error == "unsafe_archive"


def _refused_any(archive: Path, dest: Path) -> JobInputError:
    with pytest.raises(JobInputError) as err:
        extract_archive(archive, dest, LIMITS)
    return err.value


def test_something_else_is_not_an_archive(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    err = _refused(path, tmp_path / "out")
    assert (err.status_code, err.error) == (415, "unsupported_archive")
