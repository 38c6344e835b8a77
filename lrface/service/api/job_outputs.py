"""A finished job's output folder as one archive streamed in constant memory: tar (with a known length, so HTTP
Range requests can resume it) or zip (streamed with data descriptors; no Range).

Only regular files directly in the job's folder tree are included: links are never followed or archived, and
hidden names (temp files, an embedding job's part files) are left out. Member names are `<job_id>/<path>`.
"""
from __future__ import annotations

import os
import stat
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

BLOCK = 1024 * 1024
_TAR_BLOCK = 512
_TAR_RECORD = 20 * _TAR_BLOCK


@dataclass(frozen=True)
class OutputFile:
    name: str  # member name in the archive
    path: Path
    size: int


def output_files(root: Path, prefix: str) -> Iterator[OutputFile]:
    """The regular files under `root` in a fixed order (sorted per folder), never through a link."""
    def walk(folder: Path, rel: str):
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                yield from walk(Path(entry.path), f"{rel}{entry.name}/")
            elif stat.S_ISREG(st.st_mode):
                yield OutputFile(f"{prefix}{rel}{entry.name}", Path(entry.path), st.st_size)

    yield from walk(root, "")


# -- tar ---------------------------------------------------------------------------------------------------------

def _tar_header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.type = size, mtime, 0o644, tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def _tar_header_length(name: str, size: int, mtime: int) -> int:
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= 100 and raw.isascii() and size < 8 ** 11:
        return _TAR_BLOCK  # a plain ustar header (the common case; skips building it)
    return len(_tar_header(name, size, mtime))


class TarStream:
    """The bytes of a tar of `files`, its length known before the first byte, any byte range on demand."""

    def __init__(self, root: Path, prefix: str, mtime: float):
        self.root, self.prefix, self.mtime = root, prefix, int(mtime)
        end = 0
        for f in output_files(root, prefix):
            end += _tar_header_length(f.name, f.size, self.mtime) + f.size + (-f.size % _TAR_BLOCK)
        end += 2 * _TAR_BLOCK  # end-of-archive marker
        self.length = end + (-end % _TAR_RECORD)

    def _segments(self) -> Iterator[tuple[int, object]]:
        """(length, what): bytes to emit as they are, or an OutputFile to read."""
        for f in output_files(self.root, self.prefix):
            header = _tar_header(f.name, f.size, self.mtime)
            yield len(header), header
            yield f.size, f
            if f.size % _TAR_BLOCK:
                yield -f.size % _TAR_BLOCK, b"\0" * (-f.size % _TAR_BLOCK)

    def iter_range(self, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end) of the archive."""
        pos = 0
        for length, what in self._segments():
            if pos >= end:
                return
            seg_end = pos + length
            if seg_end > start and length:
                lo, hi = max(start, pos) - pos, min(end, seg_end) - pos
                if isinstance(what, bytes):
                    yield what[lo:hi]
                else:
                    yield from _read_span(what, lo, hi)
            pos = seg_end
        if pos < end:  # the end-of-archive blocks and record padding
            zeros = min(end, self.length) - max(start, pos)
            while zeros > 0:
                n = min(zeros, BLOCK)
                yield b"\0" * n
                zeros -= n


def _read_span(f: OutputFile, lo: int, hi: int) -> Iterator[bytes]:
    fd = os.open(f.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as src:
        src.seek(lo)
        left = hi - lo
        while left > 0:
            block = src.read(min(BLOCK, left))
            if not block:
                raise OSError(f"{f.name} shrank while it was being sent")
            left -= len(block)
            yield block


def parse_range(header: str | None, length: int) -> tuple[int, int] | None | str:
    """[start, end) of a single `bytes=` range; None: serve the whole (no or several ranges);
    "unsatisfiable": 416."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return "unsatisfiable"
            return max(0, length - n), length
        start = int(first)
        end = int(last) + 1 if last else length
    except ValueError:
        return None
    if start < 0 or start >= length or end <= start:
        return "unsatisfiable"
    return start, min(end, length)


# -- zip ---------------------------------------------------------------------------------------------------------

class _Sink:
    """A write-only file for zipfile: it has tell() but no seek(), so zipfile streams (data descriptors)."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.position = 0

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


def iter_zip(root: Path, prefix: str, mtime: float) -> Iterator[bytes]:
    """A zip (stored: the outputs are PNG / npz, compressed already) of the files under `root`, streamed."""
    sink = _Sink()
    date_time = time.gmtime(max(mtime, 315532800))[:6]  # (zip dates start in 1980)
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for f in output_files(root, prefix):
            info = zipfile.ZipInfo(f.name, date_time)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.file_size = f.size
            with zf.open(info, "w", force_zip64=f.size >= zipfile.ZIP64_LIMIT) as dst:
                for block in _read_span(f, 0, f.size):
                    dst.write(block)
                    if sink.position and len(sink.parts) > 0:
                        yield sink.take()
            yield sink.take()
    tail = sink.take()
    if tail:
        yield tail
