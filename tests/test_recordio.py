"""RecordIO datasets (insightface's train.rec + train.idx) read and written without mxnet: framing, headers,
insightface's header records, corrupt records, and `lrface augment` / `lrface embed` on them."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lrface.core import recordio
from lrface.service.offline import main_augment, main_embed
from service_helpers import HR_FACES, png_bytes

MAGIC = 0xCED7230A


# -- an independent writer, from the format's description alone -------------------------------------------------

def spec_record(payload: bytes) -> bytes:
    """One record as dmlc-core frames it: split at every 4-byte-aligned copy of the magic (dropped), each part
    behind magic + length word (upper 3 bits: 0 whole, 1 first, 2 middle, 3 last), zero padding to 4 bytes."""
    magic = MAGIC.to_bytes(4, "little")
    cuts = [i for i in range(0, len(payload) - len(payload) % 4, 4) if payload[i:i + 4] == magic]
    pieces, begin = [], 0
    for cut in cuts:
        pieces.append(payload[begin:cut])
        begin = cut + 4
    pieces.append(payload[begin:])
    out = bytearray()
    for n, piece in enumerate(pieces):
        flag = 0 if len(pieces) == 1 else (1 if n == 0 else (3 if n == len(pieces) - 1 else 2))
        out += magic + ((flag << 29) | len(piece)).to_bytes(4, "little") + piece
    out += bytes(-len(payload) % 4)
    return bytes(out)


def spec_payload(label, record_id: int, image: bytes) -> bytes:
    """mxnet.recordio.pack: struct 'IfQQ' (flag, label, id, id2); a list label becomes flag = n float32 labels."""
    if isinstance(label, (list, tuple)):
        return struct.pack("<IfQQ", len(label), 0.0, record_id, 0) + struct.pack(f"<{len(label)}f", *label) + image
    return struct.pack("<IfQQ", 0, float(label), record_id, 0) + image


def spec_dataset(rec: Path, records: list[tuple[int, bytes]]) -> None:
    """Write .rec + .idx ("id\\toffset" lines) of (record id, payload)."""
    with open(rec, "wb") as f, open(rec.with_suffix(".idx"), "w") as idx:
        for record_id, payload in records:
            idx.write(f"{record_id}\t{f.tell()}\n")
            f.write(spec_record(payload))


def face_png(i: int) -> bytes:
    rgb = np.asarray(Image.open(HR_FACES[i % len(HR_FACES)]).convert("RGB"))
    return png_bytes(rgb)


def insightface_dataset(rec: Path, labels: list[int], corrupt: set[int] = frozenset()) -> list[str]:
    """insightface's layout: record 0 a header (first identity record, end), images 1..N, identity records.
    Returns the image records' names `<label>/<record id>`; records in `corrupt` hold bytes that are no image."""
    n = len(labels)
    by_label: dict[int, list[int]] = {}
    records = []
    for i, label in enumerate(labels):
        record_id = i + 1
        image = b"not an image at all" if record_id in corrupt else face_png(i)
        records.append((record_id, spec_payload(label, record_id, image)))
        by_label.setdefault(label, []).append(record_id)
    identities = []
    for j, label in enumerate(sorted(by_label)):
        ids = by_label[label]
        identities.append((n + 1 + j, spec_payload([ids[0], ids[-1] + 1], n + 1 + j, b"")))
    header = (0, spec_payload([n + 1, n + 1 + len(identities)], 0, b""))
    spec_dataset(rec, [header] + records + identities)
    return [f"{label}/{i + 1}" for i, label in enumerate(labels)]


# -- framing and headers -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("payload", [
    b"",
    b"abc",
    b"abcd" * 3,
    MAGIC.to_bytes(4, "little"),
    b"xxxx" + MAGIC.to_bytes(4, "little") + b"yy",
    MAGIC.to_bytes(4, "little") * 3 + b"z",
    b"x" + MAGIC.to_bytes(4, "little") + b"unaligned magic is data",
])
def test_framing_matches_the_spec_and_round_trips(payload, tmp_path):
    assert recordio.frame(payload) == spec_record(payload)
    path = tmp_path / "one.bin"
    path.write_bytes(spec_record(payload) + spec_record(b"next"))
    with open(path, "rb") as f:
        assert recordio.read_framed(f) == payload
        assert recordio.read_framed(f) == b"next"
        assert recordio.read_framed(f) is None


def test_headers_pack_like_mxnet():
    assert recordio.pack((0, 3.0, 7, 0), b"img") == spec_payload(3, 7, b"img")
    assert recordio.pack((0, [1.0, 5.0], 0, 0)) == spec_payload([1, 5], 0, b"")
    header, image = recordio.unpack(spec_payload([2.0, 9.0, 4.0], 11, b"jpeg"))
    assert header.flag == 3 and list(header.label) == [2.0, 9.0, 4.0] and header.id == 11 and image == b"jpeg"
    header, image = recordio.unpack(spec_payload(42, 5, b"png"))
    assert (header.flag, header.first_label, header.id, image) == (0, 42, 5, b"png")


def test_a_dataset_written_from_the_spec_is_read_with_names_and_header_records_skipped(tmp_path):
    rec = tmp_path / "train.rec"
    names = insightface_dataset(rec, [0, 0, 3, 3, 7])
    dataset = recordio.RecordDataset(rec)
    planned, failures = dataset.names()
    assert planned == names and failures == []
    assert dataset.read_image("3/3") == face_png(2)
    with pytest.raises(recordio.RecordError):
        dataset.read_image("4/3")  # the wrong label for record 3


def test_without_an_index_the_records_are_found_by_walking_the_file(tmp_path):
    rec = tmp_path / "train.rec"
    names = insightface_dataset(rec, [1, 2, 2])
    rec.with_suffix(".idx").unlink()
    assert recordio.RecordDataset(rec).names() == (names, [])


def test_corrupt_records_are_reported_and_the_others_read(tmp_path):
    rec = tmp_path / "train.rec"
    names = insightface_dataset(rec, [0, 1, 1, 2], corrupt={2})
    # Point record 4's index entry into the middle of a record: its frame has no magic there.
    idx = rec.with_suffix(".idx")
    lines = idx.read_text().splitlines()
    rid, offset = lines[4].split("\t")
    lines[4] = f"{rid}\t{int(offset) + 2}"
    idx.write_text("\n".join(lines) + "\n")
    planned, failures = recordio.RecordDataset(rec).names()
    assert planned == [names[0], names[1], names[2]]
    assert [(f["source"], f["reason"]) for f in failures] == [("record/4", "corrupt")]


def test_the_writer_writes_insightface_layout_that_the_reader_and_spec_agree_on(tmp_path):
    rec = tmp_path / "out.rec"
    images = [(0, b"a" * 5), (0, b"b" * 8), (4, MAGIC.to_bytes(4, "little") * 2), (9, b"c")]
    ranges = recordio.write_insightface(rec, images)
    assert ranges == {0: (1, 3), 4: (3, 4), 9: (4, 5)}
    records = {rid: (h, img) for rid, h, img in recordio.iter_records(rec)}
    header0 = records[0][0]
    assert header0.flag == 2 and list(header0.label) == [5.0, 8.0]
    assert [(int(records[i][0].label), records[i][1]) for i in range(1, 5)] == images
    assert [list(records[i][0].label) for i in range(5, 8)] == [[1.0, 3.0], [3.0, 4.0], [4.0, 5.0]]
    # Byte for byte what the independent writer makes from the same payloads and index.
    offsets = dict(line.split("\t") for line in rec.with_suffix(".idx").read_text().splitlines())
    expected = b"".join(spec_record(recordio.pack(records[i][0], records[i][1])) for i in range(8))
    assert rec.read_bytes() == expected
    assert [int(offsets[str(i)]) for i in range(8)] == sorted(int(v) for v in offsets.values())


# -- the commands on .rec datasets -------------------------------------------------------------------------------

def test_augment_writes_variants_of_every_image_record_and_packs_them_back_into_rec(tmp_path, mrgan_path):
    rec = tmp_path / "data" / "train.rec"
    rec.parent.mkdir()
    names = insightface_dataset(rec, [0, 0, 5, 12], corrupt={3})
    out = tmp_path / "out"
    assert main_augment([str(rec), str(out), "--variants", "2", "--seed", "3", "--model", str(mrgan_path)]) == 0
    good = [n for n in names if n != "5/3"]
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == sorted(f"{n}_{k}.png" for n in good for k in range(2))
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [(e["source"], e["reason"]) for e in errors] == [("5/3", "not_an_image")]

    packed = tmp_path / "packed"
    assert main_augment([str(rec), str(packed), "--variants", "2", "--seed", "3", "--model", str(mrgan_path),
                         "--out-format", "rec"]) == 0
    assert sorted(p.name for p in packed.iterdir()) == ["errors.jsonl", "manifest.jsonl", "train.idx", "train.rec"]
    dataset = recordio.RecordDataset(packed / "train.rec")
    planned, failures = dataset.names()
    assert failures == [] and len(planned) == 2 * len(good)
    assert sorted(int(n.split("/")[0]) for n in planned) == sorted([0, 0, 0, 0, 12, 12])
    # The same pixels as the PNG run, in records labelled with their source's label.
    rows = [json.loads(line) for line in (packed / "manifest.jsonl").read_text().splitlines()]
    for row in rows:
        assert row["output"] == "train.rec"
        assert dataset.read_image(f"{row['label']}/{row['record']}") == (out / f"{row['source']}_{row['k']}.png").read_bytes()
    # insightface's reader: record 0's labels give the image range and the identity records.
    header0, _ = dataset.read(0)
    first_identity, end = (int(v) for v in header0.label)
    assert first_identity == len(planned) + 1 and end - first_identity == 2


def test_embed_on_a_rec_names_paths_by_label_and_record(tmp_path, embedder_path):
    rec = tmp_path / "train.rec"
    names = insightface_dataset(rec, [2, 2, 9])
    out = tmp_path / "emb.npz"
    assert main_embed([str(rec), "--out", str(out), "--model", str(embedder_path)]) == 0
    with np.load(out) as npz:
        assert list(npz["paths"]) == names
        emb = npz["embeddings"]
    dim = json.loads(embedder_path.with_suffix(".json").read_text())["dim"]
    assert emb.shape == (3, dim) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_without_an_index_a_damaged_stretch_is_reported_and_the_records_after_it_read(tmp_path):
    rec = tmp_path / "train.rec"
    good = [spec_payload(1, 1, face_png(0)), spec_payload(2, 2, face_png(1)), spec_payload(3, 3, face_png(2))]
    blob = bytearray(spec_record(good[0]) + spec_record(good[1]) + spec_record(good[2]))
    second = len(spec_record(good[0]))
    blob[second:second + 4] = b"\xde\xad\xbe\xef"  # the second record's magic is gone
    rec.write_bytes(bytes(blob))
    names, failures = recordio.RecordDataset(rec).names()
    assert names == ["1/0", "3/1"]  # (numbered in file order without an index)
    assert [f["reason"] for f in failures] == ["corrupt"] and failures[0]["source"].startswith(f"bytes/{second}-")


# -- RecordIO and --align together ---------------------------------------------------------------------------------

def test_embed_aligns_records_as_it_aligns_files_and_align_none_takes_them_whole(tmp_path, embedder_path):
    from service_helpers import RAW_PHOTOS

    photo, crop = RAW_PHOTOS[0].read_bytes(), HR_FACES[0].read_bytes()
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a_photo.jpg").write_bytes(photo)
    (folder / "b_crop.jpg").write_bytes(crop)
    rec = tmp_path / "train.rec"
    spec_dataset(rec, [(1, spec_payload(4, 1, photo)), (2, spec_payload(7, 2, crop))])

    def embed(source, *extra) -> tuple[list[str], np.ndarray]:
        out = tmp_path / f"e{len(list(tmp_path.glob('*.npz')))}.npz"
        assert main_embed([str(source), "--out", str(out), "--model", str(embedder_path), *extra]) == 0
        with np.load(out) as npz:
            return list(npz["paths"]), npz["embeddings"]

    paths, aligned = embed(rec)
    assert paths == ["4/1", "7/2"]
    np.testing.assert_allclose(aligned, embed(folder)[1], atol=1e-5)  # the photo's face found in both
    _, whole = embed(rec, "--align", "none")
    np.testing.assert_allclose(whole, embed(folder, "--align", "none")[1], atol=1e-5)
    np.testing.assert_allclose(whole[1], aligned[1], atol=1e-5)  # the crop: taken as it is either way
    assert float(np.dot(whole[0], aligned[0])) < 0.999  # the photo: whole with --align none


def test_augment_align_auto_packs_the_aligned_variants_into_rec(tmp_path, mrgan_path):
    from service_helpers import RAW_PHOTOS

    src = tmp_path / "photos"
    for i, photo in enumerate(RAW_PHOTOS[:2]):
        (src / f"person{i}").mkdir(parents=True)
        (src / f"person{i}" / photo.name).write_bytes(photo.read_bytes())
    (src / "person1" / "landscape.png").write_bytes(png_bytes(np.full((200, 300, 3), 128, np.uint8)))
    common = ["--variants", "2", "--seed", "4", "--align", "auto", "--model", str(mrgan_path)]
    assert main_augment([str(src), str(tmp_path / "png"), *common]) == 0
    assert main_augment([str(src), str(tmp_path / "rec"), *common, "--out-format", "rec"]) == 0
    packed = tmp_path / "rec"
    assert sorted(p.name for p in packed.iterdir()) == ["errors.jsonl", "manifest.jsonl", "train.idx", "train.rec"]
    errors = [json.loads(line) for line in (packed / "errors.jsonl").read_text().splitlines()]
    assert [(e["source"], e["reason"]) for e in errors] == [("person1/landscape.png", "no_face")]
    dataset = recordio.RecordDataset(packed / "train.rec")
    rows = [json.loads(line) for line in (packed / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and sorted({r["label"] for r in rows}) == [0, 1]
    for row in rows:  # the same (aligned) variants as the PNG run
        assert dataset.read_image(f"{row['label']}/{row['record']}") == \
            (tmp_path / "png" / f"{row['source'].rsplit('.', 1)[0]}_{row['k']}.png").read_bytes()
