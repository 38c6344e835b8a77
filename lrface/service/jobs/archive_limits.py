"""Archive limits that hold before anything is read into memory (used by `service.jobs.extract_archive`).

- tar: every header byte counts. Python's tarfile reads a member's PAX extended header, GNU long name or GNU
  long link whole into memory before the member itself is seen, so a 400 MB PAX header in a 400 KB .tar.gz
  used to cost 400 MB. `bounded_tarinfo` gives tarfile a TarInfo class that checks each header's size before it
  is read: an extended header above `MAX_EXTENDED_HEADER_BYTES`, or all headers together (512 bytes per header
  block plus the extended ones) above `max_header_bytes`, are refused; so are GNU sparse members (refused as
  members anyway) before their extension blocks are read.
- zip: `check_zip_directory` reads the end-of-central-directory record (zip64 too) and refuses an entry count
  above the limit, then walks the central directory one 46-byte record at a time, keeping nothing, and stops
  at the first entry past the limit: zipfile, which builds an object per entry of the whole directory, only
  sees archives within the limits.
- `shown`: names (and other archive-supplied text) in error messages are cut to a few hundred characters, so
  no error echoes an attacker-sized string.
"""
from __future__ import annotations

import struct
import tarfile
from pathlib import Path

MAX_EXTENDED_HEADER_BYTES = 64 * 1024  # one PAX header / GNU long name / long link (PATH_MAX is 4 KiB)
SHOWN_CHARS = 200

_EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
             tarfile.GNUTYPE_LONGLINK)


class ArchiveLimitError(Exception):
    """A limit was exceeded: (status, error code, message) for `JobInputError`."""

    def __init__(self, status_code: int, error: str, message: str):
        super().__init__(message)
        self.status_code, self.error, self.message = status_code, error, message


def shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` as an error message may quote it: at most `limit` characters, valid UTF-8, the cut said."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def bounded_tarinfo(max_header_bytes: int) -> type[tarfile.TarInfo]:
    """A TarInfo class for `tarfile.open(..., tarinfo=...)` that counts header bytes of one archive (a new class
    per archive: the count lives on it)."""

    class BoundedTarInfo(tarfile.TarInfo):
        header_bytes = 0

        def _proc_member(self, tarfile_):
            cls = type(self)
            cls.header_bytes += tarfile.BLOCKSIZE
            if self.type in _EXTENDED:
                if self.size > MAX_EXTENDED_HEADER_BYTES:
                    raise ArchiveLimitError(413, "archive_too_large", f"the archive has an extended header (PAX or "
                                            f"GNU long name / link) of {self.size} bytes; the limit is "
                                            f"{MAX_EXTENDED_HEADER_BYTES}")
                cls.header_bytes += self.size
            elif self.type == tarfile.GNUTYPE_SPARSE:
                raise ArchiveLimitError(400, "unsafe_archive", "the archive has a sparse member")
            if cls.header_bytes > max_header_bytes:
                raise ArchiveLimitError(413, "archive_too_large", f"the archive's headers exceed {max_header_bytes} "
                                        "bytes (LRFACE_MAX_ARCHIVE_HEADER_BYTES)")
            return super()._proc_member(tarfile_)

    return BoundedTarInfo


def is_tar(path: Path, max_header_bytes: int) -> bool:
    """`tarfile.is_tarfile` with the header limits (it reads the first member's headers)."""
    try:
        with tarfile.open(path, mode="r:*", tarinfo=bounded_tarinfo(max_header_bytes)):
            return True
    except ArchiveLimitError:
        return True  # a tar, refused when it is opened for extraction
    except Exception:
        return False


_EOCD = struct.Struct("<4s4H2LH")
_CENTRAL = 46  # fixed part of a central directory record


def check_zip_directory(path: Path, max_members: int) -> None:
    """Refuse a zip whose central directory has more than `max_members` entries, reading its end record and then
    the directory one record at a time. Anything that does not parse is left to zipfile (which says corrupt)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        tail_len = min(size, _EOCD.size + 65535)
        f.seek(size - tail_len)
        tail = f.read(tail_len)
        pos = tail.rfind(b"PK\x05\x06")
        if pos < 0 or pos + _EOCD.size > len(tail):
            return
        _, _, _, _, entries, cd_size, cd_offset, _ = _EOCD.unpack(tail[pos:pos + _EOCD.size])
        cd_start = size - tail_len + pos - cd_size
        if entries == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:  # zip64
            locator = tail[pos - 20:pos] if pos >= 20 else b""
            if locator[:4] != b"PK\x06\x07":
                return
            record_at = struct.unpack("<Q", locator[8:16])[0]
            f.seek(record_at)
            record = f.read(56)
            if len(record) < 56 or record[:4] != b"PK\x06\x06":
                return
            entries, cd_size, cd_offset = struct.unpack("<QQQ", record[32:56])
            cd_start = record_at - cd_size
        if entries > max_members:
            raise ArchiveLimitError(413, "archive_too_large", f"the archive lists {entries} members; the limit is "
                                    f"{max_members}")
        if cd_start < 0:
            return
        f.seek(cd_start)
        seen = read = 0
        while read < cd_size:
            head = f.read(_CENTRAL)
            if len(head) < _CENTRAL or head[:4] != b"PK\x01\x02":
                return
            name_len, extra_len, comment_len = struct.unpack("<HHH", head[28:34])
            f.seek(name_len + extra_len + comment_len, 1)
            read += _CENTRAL + name_len + extra_len + comment_len
            seen += 1
            if seen > max_members:
                raise ArchiveLimitError(413, "archive_too_large", f"the archive has more than {max_members} members")
