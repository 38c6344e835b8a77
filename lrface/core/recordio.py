"""MXNet RecordIO datasets (insightface's `train.rec` + `train.idx`) read and written without mxnet.

The format (dmlc-core `recordio.h`, mxnet `recordio.py`):
- a record is framed as: uint32 magic 0xced7230a, uint32 length word (upper 3 bits: continuation flag, lower 29:
  length), the data, zero padding to a multiple of 4 bytes. A writer splits a payload at every 4-byte-aligned
  occurrence of the magic (the magic itself is dropped; flags 1 = first part, 2 = middle, 3 = last, 0 = whole);
  the reader joins the parts with the magic between them.
- a payload is a packed `IfQQ` header (flag, label, id, id2; 24 bytes, little-endian) and the image bytes; with
  flag > 0, `flag` float32 labels follow the header (and the header's own label is 0).
- `.idx` beside the `.rec`: text lines "record id<TAB>byte offset".
- insightface: record 0 is a header record with labels (first identity record, end); image records are
  1 .. first identity record - 1, and each identity record's labels are the [start, end) range of its images.
  Header records carry no image.

Image records are named `<label>/<record id>` (label as an integer) everywhere in lrface.
"""
from __future__ import annotations

import os
import re
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_MASK = (1 << 29) - 1
HEADER_FORMAT = "<IfQQ"
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)  # 24
REC_SUFFIX = ".rec"


class RecordError(Exception):
    """A record that cannot be read; `reason` is a short code ("corrupt", "truncated", "missing")."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class RecordHeader:
    flag: int
    label: float | np.ndarray
    id: int
    id2: int

    @property
    def first_label(self) -> int:
        if isinstance(self.label, np.ndarray):
            return int(self.label[0]) if self.label.size else 0
        return int(self.label)


def index_path(rec_path: str | os.PathLike) -> Path:
    return Path(rec_path).with_suffix(".idx")


def is_recordio(path: str | os.PathLike) -> bool:
    """A file whose name ends in .rec (what the commands and jobs take as a RecordIO dataset)."""
    path = Path(path)
    return path.suffix.lower() == REC_SUFFIX and path.is_file()


def starts_with_magic(path: str | os.PathLike) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == _MAGIC_BYTES


# -- payloads ----------------------------------------------------------------------------------------------------

def pack(header: RecordHeader | tuple, image: bytes = b"") -> bytes:
    """A record payload: the header (with float labels when `label` is a sequence) and the image bytes."""
    flag, label, rid, rid2 = (header.flag, header.label, header.id, header.id2) if isinstance(header, RecordHeader) else header
    if np.ndim(label) == 0:
        return struct.pack(HEADER_FORMAT, 0, float(label), int(rid), int(rid2)) + image
    labels = np.asarray(label, dtype="<f4").reshape(-1)
    return struct.pack(HEADER_FORMAT, labels.size, 0.0, int(rid), int(rid2)) + labels.tobytes() + image


def unpack(payload: bytes) -> tuple[RecordHeader, bytes]:
    if len(payload) < HEADER_SIZE:
        raise RecordError("corrupt", f"the record is {len(payload)} bytes, shorter than its {HEADER_SIZE}-byte header")
    flag, label, rid, rid2 = struct.unpack_from(HEADER_FORMAT, payload)
    body = payload[HEADER_SIZE:]
    if flag > 0:
        if len(body) < 4 * flag:
            raise RecordError("corrupt", f"the header announces {flag} labels but the record ends before them")
        labels = np.frombuffer(body, dtype="<f4", count=flag).copy()
        return RecordHeader(flag, labels, rid, rid2), body[4 * flag:]
    return RecordHeader(flag, float(label), rid, rid2), body


# -- framing -----------------------------------------------------------------------------------------------------

def frame(payload: bytes) -> bytes:
    """The bytes of one record on disk (split at aligned occurrences of the magic, padded to 4 bytes)."""
    out = []
    length = len(payload)
    start = 0
    for i in range(0, (length >> 2) << 2, 4):
        if payload[i:i + 4] == _MAGIC_BYTES:
            out.append(_MAGIC_BYTES + struct.pack("<I", ((1 if start == 0 else 2) << 29) | (i - start)))
            out.append(payload[start:i])
            start = i + 4
    out.append(_MAGIC_BYTES + struct.pack("<I", ((3 if start else 0) << 29) | (length - start)))
    out.append(payload[start:])
    out.append(b"\0" * (-length % 4))
    return b"".join(out)


def _read_exact(f, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise RecordError("truncated", f"the file ends inside a record ({len(data)} of {n} bytes)")
    return data


def _frame_header(head: bytes, at: int, first: bool) -> tuple[int, int]:
    """(continuation flag, payload length) of the 8-byte frame header `head` read at byte `at` (`first`: the
    first frame of a record), or RecordError."""
    if len(head) != 8:
        raise RecordError("truncated", "the file ends inside a record header")
    magic, word = struct.unpack("<II", head)
    if magic != MAGIC:
        raise RecordError("corrupt", f"no RecordIO magic at byte {at} (found {magic:#010x})")
    cflag, length = word >> 29, word & _LENGTH_MASK
    if cflag > 3:
        raise RecordError("corrupt", f"unknown continuation flag {cflag} at byte {at}")
    if (cflag in (0, 1)) != first:
        raise RecordError("corrupt", f"continuation flag {cflag} out of sequence at byte {at}")
    return cflag, length


def read_framed(f) -> bytes | None:
    """The payload of the record at the file's position (None at the end of the file)."""
    parts: list[bytes] = []
    while True:
        head = f.read(8)
        if not head and not parts:
            return None
        cflag, length = _frame_header(head, f.tell() - len(head), first=not parts)
        data = _read_exact(f, length + (-length % 4))[:length]
        parts.append(data)
        if cflag in (0, 3):
            return _MAGIC_BYTES.join(parts)


def scan_offsets(path: str | os.PathLike) -> tuple[list[int], list[dict]]:
    """Byte offsets of the records of a .rec without an index, by walking the frames (numbered in file order, as
    mxnet's writer numbers them). Bytes that are not a record (a damaged stretch) are reported as one failure
    each, and the walk goes on at the next record start (the magic at a 4-byte boundary)."""
    offsets: list[int] = []
    failures: list[dict] = []
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        pos = 0
        while pos < size:
            try:
                end = _walk_record(f, pos, size)
                offsets.append(pos)
                pos = end
            except RecordError as exc:
                resume = _next_record_start(f, pos + 4, size)
                failures.append({"source": f"bytes/{pos}-{resume}", "status": "failed", "reason": exc.reason,
                                 "message": f"{exc.message}; bytes {pos}..{resume} skipped"})
                pos = resume
    return offsets, failures


def _walk_record(f, pos: int, size: int) -> int:
    """The end of the record starting at `pos` (all its frames), or RecordError."""
    first = True
    while True:
        f.seek(pos)
        head = f.read(8)
        cflag, length = _frame_header(head, pos, first)
        pos += 8 + length + (-length % 4)
        if pos > size:
            raise RecordError("truncated", "the file ends inside a record")
        if cflag in (0, 3):
            return pos
        first = False


def _next_record_start(f, pos: int, size: int) -> int:
    """The next 4-byte-aligned offset from `pos` that holds the magic and starts a record (else the file's end)."""
    pos += -pos % 4
    while pos < size:
        f.seek(pos)
        block = f.read(1 << 20)
        if not block:
            break
        at = block.find(_MAGIC_BYTES)
        while at >= 0:
            if (pos + at) % 4 == 0 and len(block) >= at + 8:
                word = struct.unpack_from("<I", block, at + 4)[0]
                if word >> 29 in (0, 1):
                    return pos + at
            at = block.find(_MAGIC_BYTES, at + 1)
        pos += max(4, len(block) - 8)  # (overlap, so a magic across two blocks is seen)
        pos += -pos % 4
    return size


def read_index(path: str | os.PathLike) -> dict[int, int]:
    """{record id: byte offset} of an .idx file (lines "id<TAB>offset"; blank lines ignored)."""
    index: dict[int, int] = {}
    with open(path, "r", encoding="ascii", errors="replace") as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            try:
                index[int(fields[0])] = int(fields[1])
            except (ValueError, IndexError):
                raise ValueError(f"{path}:{number}: not an index line 'id<TAB>offset': {line.strip()[:80]!r}") from None
    return index


# -- reading a dataset -------------------------------------------------------------------------------------------

class RecordDataset:
    """A .rec (with the .idx beside it when there is one) as named image records.

    `names()` plans the image records (header records are left out, unreadable ones reported);
    `read_image(name)` gives the image bytes of one record by its `<label>/<record id>` name.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        idx = index_path(self.path)
        self.scan_failures: list[dict] = []
        if idx.is_file():
            self.offsets = read_index(idx)
        else:
            offsets, self.scan_failures = scan_offsets(self.path)
            self.offsets = dict(enumerate(offsets))
        self._local = threading.local()  # one file handle per thread (reads seek)
        self._handles: list = []
        self._handles_lock = threading.Lock()

    def _file(self):
        f = getattr(self._local, "f", None)
        if f is None or f.closed:
            f = self._local.f = open(self.path, "rb")
            with self._handles_lock:
                self._handles.append(f)
        return f

    def close(self) -> None:
        with self._handles_lock:
            for f in self._handles:
                f.close()
            self._handles.clear()

    def __enter__(self) -> "RecordDataset":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, record_id: int) -> tuple[RecordHeader, bytes]:
        offset = self.offsets.get(record_id)
        if offset is None:
            raise RecordError("missing", f"record {record_id} is not in the index")
        f = self._file()
        f.seek(offset)
        payload = read_framed(f)
        if payload is None:
            raise RecordError("truncated", f"the index points record {record_id} past the end of the file")
        return unpack(payload)

    def image_range(self) -> range | None:
        """insightface's layout: record 0 a header whose first label ends the image records (None otherwise)."""
        if 0 not in self.offsets:
            return None
        try:
            header, image = self.read(0)
        except RecordError:
            return None
        if header.flag > 0 and not image:
            end = header.first_label
            if end >= 1:
                return range(1, end)
        return None

    def names(self) -> tuple[list[str], list[dict]]:
        """(names of the image records in record id order, failures of records that cannot be read)."""
        failures = list(self.scan_failures)
        images = self.image_range()
        names = []
        for record_id in sorted(self.offsets):
            if images is not None and record_id not in images:
                continue  # insightface header / identity records
            try:
                header, image = self._read_head(record_id)
            except RecordError as exc:
                failures.append({"source": f"record/{record_id}", "status": "failed", "reason": exc.reason,
                                 "message": exc.message})
                continue
            if not image:
                continue  # a header record (no image)
            names.append(record_name(header.first_label, record_id))
        return names, failures

    def _read_head(self, record_id: int) -> tuple[RecordHeader, bool]:
        """The header of a record and whether an image follows, reading only the start of its first frame
        (planning a large dataset must not read every image)."""
        offset = self.offsets.get(record_id)
        if offset is None:
            raise RecordError("missing", f"record {record_id} is not in the index")
        f = self._file()
        f.seek(offset)
        head = f.read(8)
        if len(head) != 8:
            raise RecordError("truncated", f"the index points record {record_id} past the end of the file")
        magic, word = struct.unpack("<II", head)
        if magic != MAGIC:
            raise RecordError("corrupt", f"no RecordIO magic at byte {offset} (record {record_id})")
        cflag, length = word >> 29, word & _LENGTH_MASK
        if cflag not in (0, 1):
            raise RecordError("corrupt", f"record {record_id} starts with continuation flag {cflag}")
        start = f.read(min(length, 4096))
        if cflag == 1 and len(start) < HEADER_SIZE:  # (the header itself holds the magic: read it whole)
            return self.read(record_id)[0], True
        header, rest = unpack(start)
        labels_bytes = 4 * header.flag
        return header, cflag == 1 or length > HEADER_SIZE + labels_bytes

    def read_image(self, name: str) -> bytes:
        label, record_id = parse_record_name(name)
        header, image = self.read(record_id)
        if header.first_label != label:
            raise RecordError("corrupt", f"record {record_id} has label {header.first_label}, not {label}")
        if not image:
            raise RecordError("corrupt", f"record {record_id} holds no image")
        return image


_RECORD_NAME = re.compile(r"^-?\d+/\d+$")


def is_record_name(name: str) -> bool:
    return bool(_RECORD_NAME.match(name))


def record_name(label: int, record_id: int) -> str:
    return f"{int(label)}/{int(record_id)}"


def parse_record_name(name: str) -> tuple[int, int]:
    try:
        label, record_id = name.split("/")
        return int(label), int(record_id)
    except ValueError:
        raise RecordError("missing", f"{name!r} is not a record name '<label>/<record id>'") from None


_open_lock = threading.Lock()
_open: dict[tuple, RecordDataset] = {}


def open_dataset(path: str | os.PathLike) -> RecordDataset:
    """A process-wide cached RecordDataset (parsing a 5M-line index once per process, not once per chunk)."""
    key = _dataset_key(Path(path))
    with _open_lock:
        # Datasets whose files were removed or changed (a purged upload) are closed, so no deleted file is
        # kept open.
        for stale in [k for k in _open if k != key and _dataset_key(Path(k[0]), missing_ok=True) != k]:
            _open.pop(stale).close()
        dataset = _open.get(key)
        if dataset is None:
            if len(_open) >= 8:
                for old in _open.values():
                    old.close()
                _open.clear()
            dataset = _open[key] = RecordDataset(path)
        return dataset


def _dataset_key(path: Path, missing_ok: bool = False) -> tuple | None:
    try:
        st = path.stat()
        idx = index_path(path)
        idx_mtime = idx.stat().st_mtime_ns if idx.is_file() else None
    except FileNotFoundError:
        if missing_ok:
            return None
        raise
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, idx_mtime)


# -- writing -----------------------------------------------------------------------------------------------------

class RecordWriter:
    """Writes `<stem>.rec` + `<stem>.idx` as mxnet's MXIndexedRecordIO does (to temp names; `close` renames)."""

    def __init__(self, rec_path: str | os.PathLike):
        self.rec_path = Path(rec_path)
        self.idx_path = index_path(self.rec_path)
        self._rec_tmp = self.rec_path.with_name(f".{self.rec_path.name}.{os.getpid()}.tmp")
        self._idx_tmp = self.idx_path.with_name(f".{self.idx_path.name}.{os.getpid()}.tmp")
        self._rec = open(self._rec_tmp, "wb")
        self._idx = open(self._idx_tmp, "w", encoding="ascii")

    def write(self, record_id: int, payload: bytes) -> None:
        self._idx.write(f"{int(record_id)}\t{self._rec.tell()}\n")
        self._rec.write(frame(payload))

    def close(self) -> None:
        self._rec.close()
        self._idx.close()
        os.replace(self._rec_tmp, self.rec_path)
        os.replace(self._idx_tmp, self.idx_path)

    def abort(self) -> None:
        self._rec.close()
        self._idx.close()
        self._rec_tmp.unlink(missing_ok=True)
        self._idx_tmp.unlink(missing_ok=True)


def write_insightface(rec_path: str | os.PathLike, images: Iterable[tuple[int, bytes]]) -> dict[int, tuple[int, int]]:
    """Write images (label, encoded bytes), already sorted by label, in insightface's layout: record 0 a header
    (labels: first identity record, end), images 1..N, then one identity record per label with its [start, end)
    image range. Returns {label: (start, end)}."""
    writer = RecordWriter(rec_path)
    try:
        ranges: dict[int, list[int]] = {}
        # Record 0 is rewritten at the end, once N is known; it has a fixed size (2 labels, no image).
        writer.write(0, pack((0, [0.0, 0.0], 0, 0)))
        record_id = 0
        last = None
        for label, image in images:
            record_id += 1
            if last is not None and label < last:
                raise ValueError("images must come sorted by label")
            last = label
            writer.write(record_id, pack((0, float(label), record_id, 0), image))
            span = ranges.setdefault(int(label), [record_id, record_id + 1])
            span[1] = record_id + 1
        first_identity = record_id + 1
        for label in sorted(ranges):
            record_id += 1
            start, end = ranges[label]
            writer.write(record_id, pack((0, [float(start), float(end)], record_id, 0)))
        writer._rec.flush()
        writer._rec.seek(0)
        writer._rec.write(frame(pack((0, [float(first_identity), float(record_id + 1)], 0, 0))))
        writer._rec.seek(0, os.SEEK_END)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return {label: (span[0], span[1]) for label, span in ranges.items()}


def iter_records(path: str | os.PathLike) -> Iterator[tuple[int, RecordHeader, bytes]]:
    """(record id, header, image) of every record, by the index (record id order)."""
    dataset = RecordDataset(path)
    try:
        for record_id in sorted(dataset.offsets):
            header, image = dataset.read(record_id)
            yield record_id, header, image
    finally:
        dataset.close()
