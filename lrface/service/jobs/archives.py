"""Uploaded archives (zip, tar) unpacked safely: no member outside the destination, no links, bounded size,
count and compression ratio."""
from __future__ import annotations

import os
import re
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lrface.service.jobs.archive_limits import ArchiveLimitError, bounded_tarinfo, check_zip_directory, is_tar, shown
from lrface.service.jobs.inputs import is_utf8
from lrface.service.jobs.params import JobInputError
from lrface.service.settings import Settings

# Below this many bytes a high compression ratio cannot hurt anyone (a small file of zeros is fine).
_RATIO_FLOOR = 1024 * 1024
_COPY_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int
    max_total_bytes: int
    max_ratio: float
    max_header_bytes: int = 16 * 1024 * 1024  # all tar headers together (archive_limits)

    @classmethod
    def from_settings(cls, settings: Settings) -> "ArchiveLimits":
        return cls(settings.max_archive_members, settings.max_archive_total_bytes, settings.max_archive_ratio,
                   settings.max_archive_header_bytes)


def _unsafe(message: str) -> JobInputError:
    return JobInputError(400, "unsafe_archive", message)


def _member_parts(name: str) -> list[str]:
    """The path parts of an archive member, or an error when it could land outside the target folder."""
    if "\x00" in name or "\\" in name:
        raise _unsafe(f"member {shown(name)!r}: backslashes and NUL bytes are not accepted in names")
    if not is_utf8(name):
        raise _unsafe(f"member {shown(name)!r}: the name is not valid UTF-8")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise _unsafe(f"member {shown(name)!r}: absolute paths are not accepted")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _unsafe(f"member {shown(name)!r}: '..' would escape the target folder")
    return parts


class _SizeBudget:
    """Running totals of an archive's declared sizes against the limits; raises as soon as one is exceeded."""

    def __init__(self, archive_bytes: int, limits: ArchiveLimits):
        self.archive_bytes = max(archive_bytes, 1)
        self.limits = limits
        self.total = 0

    def add(self, parts: list[str], size: int, packed: int | None) -> None:
        limits = self.limits
        if packed is not None and size > _RATIO_FLOOR and size > limits.max_ratio * max(packed, 1):
            raise JobInputError(413, "archive_too_large",
                                f"member {shown('/'.join(parts))!r} expands {size / max(packed, 1):.0f}x; the limit is {limits.max_ratio:g}x")
        self.total += size
        if self.total > limits.max_total_bytes:
            raise JobInputError(413, "archive_too_large",
                                f"the archive expands to more than {limits.max_total_bytes} bytes")
        if self.total > _RATIO_FLOOR and self.total > limits.max_ratio * self.archive_bytes:
            raise JobInputError(413, "archive_too_large",
                                f"the archive expands more than {limits.max_ratio:g}x")


def _too_many(limits: ArchiveLimits) -> JobInputError:
    return JobInputError(413, "archive_too_large", f"the archive has more than {limits.max_members} members")


def _write_member(dest: Path, parts: list[str], stream, size: int) -> None:
    target = dest.joinpath(*parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: a second member with the same name is refused; O_NOFOLLOW: never write through a link.
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except FileExistsError:
        raise _unsafe(f"member {shown('/'.join(parts))!r} appears twice") from None
    written = 0
    with os.fdopen(fd, "wb") as out:
        while True:
            block = stream.read(_COPY_BLOCK)
            if not block:
                break
            written += len(block)
            if written > size:  # never trust a header further than its own size
                raise _unsafe(f"member {shown('/'.join(parts))!r} holds more data than its header says")
            out.write(block)


def extract_archive(archive: Path, dest: Path, limits: ArchiveLimits) -> int:
    """`_extract_archive`, with the limits of `archive_limits` (header bytes, zip directories) as the same
    JobInputError answers."""
    try:
        return _extract_archive(archive, dest, limits)
    except ArchiveLimitError as exc:
        raise JobInputError(exc.status_code, exc.error, exc.message) from None


def _extract_archive(archive: Path, dest: Path, limits: ArchiveLimits) -> int:
    """Extract a zip or tar(.gz/.bz2/.xz) into the empty folder `dest` after checking every member first.

    Refused (nothing extracted): names that are absolute or contain '..', links of any kind, device files and
    FIFOs, encrypted zip members, more than `max_members` members, more than `max_total_bytes` uncompressed, or
    a compression ratio above `max_ratio`. Returns the number of files written.
    """
    archive_bytes = archive.stat().st_size
    with open(archive, "rb") as f:
        magic = f.read(4)
    dest.mkdir(parents=True, exist_ok=True)
    if magic[:2] == b"PK":
        check_zip_directory(archive, limits.max_members)  # (before zipfile builds an object per entry)
        return _extract_zip(archive, dest, archive_bytes, limits)
    if is_tar(archive, limits.max_header_bytes):
        return _extract_tar(archive, dest, archive_bytes, limits)
    raise JobInputError(415, "unsupported_archive", "the upload is not a zip or tar archive")


def _extract_zip(archive: Path, dest: Path, archive_bytes: int, limits: ArchiveLimits) -> int:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError):
        raise JobInputError(400, "bad_archive", "the zip archive is corrupt") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_members:
            raise _too_many(limits)
        members = []
        budget = _SizeBudget(archive_bytes, limits)
        for info in infos:
            parts = _member_parts(info.filename)
            mode = info.external_attr >> 16
            kind = stat.S_IFMT(mode)
            if stat.S_ISLNK(mode):
                raise _unsafe(f"member {shown(info.filename)!r} is a symbolic link")
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise _unsafe(f"member {shown(info.filename)!r} is not a regular file or folder")
            if info.flag_bits & 0x1:
                raise _unsafe(f"member {shown(info.filename)!r} is encrypted")
            members.append((parts, info.is_dir(), info.file_size, info.compress_size))
            budget.add(parts, info.file_size, info.compress_size)
        return _write_members(dest, infos, members, zf.open, "zip",
                              (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError))


def _extract_tar(archive: Path, dest: Path, archive_bytes: int, limits: ArchiveLimits) -> int:
    try:
        tf = tarfile.open(archive, mode="r:*", tarinfo=bounded_tarinfo(limits.max_header_bytes))
    except (tarfile.TarError, OSError, EOFError):
        raise JobInputError(400, "bad_archive", "the tar archive is corrupt") from None
    with tf:
        infos, members = [], []
        budget = _SizeBudget(archive_bytes, limits)
        try:
            for info in tf:  # read headers one at a time, so a million-member archive stops at the limit
                if len(infos) >= limits.max_members:
                    raise _too_many(limits)
                parts = _member_parts(info.name)
                if info.issym() or info.islnk():
                    raise _unsafe(f"member {shown(info.name)!r} is a link")
                if not (info.isreg() or info.isdir()) or info.issparse():
                    raise _unsafe(f"member {shown(info.name)!r} is not a regular file or folder")
                infos.append(info)
                # A tar has no per-member compressed size: the whole (compressed) archive is the yardstick.
                # Checked as headers come, before the next header is read, so a bomb is never inflated.
                members.append((parts, info.isdir(), info.size, None))
                budget.add(parts, info.size, None)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise JobInputError(400, "bad_archive", f"the tar archive is corrupt: {shown(str(exc))}") from None

        def open_member(info: tarfile.TarInfo):
            stream = tf.extractfile(info)
            if stream is None:
                raise _unsafe(f"member {shown(info.name)!r} has no data")
            return stream

        return _write_members(dest, infos, members, open_member, "tar", (tarfile.TarError, EOFError, OSError))


def _write_members(dest: Path, infos: list, members: list[tuple], open_member: Callable,
                   archive_kind: str, errors: tuple[type[BaseException], ...]) -> int:
    """Write the checked members (folders made, files streamed through `_write_member`); returns the file count.

    `open_member(info)` gives a member's data stream; `errors` are the archive library's read errors, reported as
    a corrupt `archive_kind` archive (or as overlapping members, when a path is already a file or a folder)."""
    written = 0
    try:
        for info, (parts, is_dir, size, _) in zip(infos, members):
            if not parts:
                continue
            if is_dir:
                dest.joinpath(*parts).mkdir(parents=True, exist_ok=True)
                continue
            with open_member(info) as stream:
                _write_member(dest, parts, stream, size)
            written += 1
    except errors as exc:
        if isinstance(exc, (FileExistsError, NotADirectoryError, IsADirectoryError)):
            # (the error's text names a server path: not shown)
            raise _unsafe(f"the archive's members overlap each other ({exc.strerror})") from None
        if isinstance(exc, OSError) and exc.filename is not None:
            raise JobInputError(400, "bad_archive", f"the {archive_kind} archive cannot be extracted: "
                                f"{exc.strerror or type(exc).__name__}") from None
        raise JobInputError(400, "bad_archive", f"the {archive_kind} archive is corrupt: {shown(str(exc))}") from None
    return written
