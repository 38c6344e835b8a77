"""What happens without options: /v1/embed, /v1/verify and `lrface embed` take an image shaped like an aligned
crop as one and look for the face in anything else (never embedding a whole photo as a face); `--align` in the
CLI runs the API's detector and alignment; `lrface eval` uses the shipped embedder; input_dir errors name
LRFACE_DATA_ROOT."""
from __future__ import annotations

import base64
import io
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lrface.core.detect import choose_align, looks_aligned
from service_helpers import FIXTURES, HR_FACES, RAW_PHOTOS, png_bytes

pytestmark = [pytest.mark.redis, pytest.mark.process]

LR_CAPTURES = sorted((FIXTURES / "lr").glob("*/*"))
BLANK_LANDSCAPE = png_bytes(np.full((200, 300, 3), 128, np.uint8))  # a photo with no face in it


@pytest.fixture(scope="module")
def http(server):
    with server.client() as client:
        yield client


def _file(path):
    return (path.name, path.read_bytes(), "application/octet-stream")


def test_aligned_crop_shapes_are_told_from_photos():
    for path in HR_FACES + LR_CAPTURES:  # 112x96 crops and real LR captures 8..56 px high
        w, h = Image.open(path).size
        assert looks_aligned(h, w), (path.name, w, h)
    for path in RAW_PHOTOS:  # whole photos (LFW's are 250x250)
        w, h = Image.open(path).size
        assert not looks_aligned(h, w), (path.name, w, h)
    assert choose_align(None, 112, 96) == "none" and choose_align(None, 250, 250) == "auto"
    assert choose_align("none", 250, 250) == "none" and choose_align("auto", 112, 96) == "auto"


def test_embed_without_align_aligns_photos_and_takes_crops_as_they_are(http):
    files = [("images", _file(RAW_PHOTOS[0])), ("images", _file(HR_FACES[0])), ("images", _file(LR_CAPTURES[0]))]
    r = http.post("/v1/embed", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [it["align"] for it in body["items"]] == ["auto", "none", "none"]
    assert body["items"][0]["face_box"]["score"] > 0.9 and (body["items"][0]["height"], body["items"][0]["width"]) == (112, 96)
    assert body["items"][1]["face_box"] is None
    auto = http.post("/v1/embed", files=[("images", _file(RAW_PHOTOS[0]))], data={"align": "auto"}).json()
    np.testing.assert_allclose(body["embeddings"][0], auto["embeddings"][0], atol=1e-5)
    whole = http.post("/v1/embed", files=[("images", _file(RAW_PHOTOS[0]))], data={"align": "none"}).json()
    width, height = Image.open(RAW_PHOTOS[0]).size
    assert whole["items"][0]["align"] == "none" and (whole["items"][0]["height"], whole["items"][0]["width"]) == (height, width)
    assert float(np.dot(whole["embeddings"][0], auto["embeddings"][0])) < 0.999  # what used to be embedded silently


def test_a_photo_without_a_face_is_a_422_that_says_what_to_send(http):
    for path, form in (("/v1/embed", {"images": ("landscape.png", BLANK_LANDSCAPE, "image/png")}),
                       ("/v1/verify", {"image_a": ("landscape.png", BLANK_LANDSCAPE, "image/png"), "image_b": _file(HR_FACES[0])})):
        r = http.post(path, files=form)
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["error"] == "no_face" and "300x200" in body["message"] and "align=none" in body["message"]
        assert body["filename"] == "landscape.png"
    assert http.post("/v1/embed", files={"images": ("landscape.png", BLANK_LANDSCAPE, "image/png")},
                     data={"align": "none"}).status_code == 200  # asked for explicitly


def test_verify_without_align_compares_the_faces_of_two_photos(http):
    photo = _file(RAW_PHOTOS[1])
    default = http.post("/v1/verify", files={"image_a": photo, "image_b": photo}).json()
    assert default["similarity"] == pytest.approx(1.0, abs=1e-4)
    aligned = http.post("/v1/synthesize", files={"image": photo}, data={"align": "auto", "variants": "1", "include_face": "true"}).json()
    crop = ("crop.png", base64.b64decode(aligned["face_image_base64"]), "image/png")
    against_crop = http.post("/v1/verify", files={"image_a": photo, "image_b": crop}).json()
    assert against_crop["similarity"] > 0.99 and against_crop["same_person"]  # the photo's face was compared


def test_synthesize_can_return_the_aligned_face(http):
    r = http.post("/v1/synthesize", files={"image": _file(RAW_PHOTOS[0])},
                  data={"align": "auto", "variants": "1", "include_face": "true"})
    assert r.status_code == 200, r.text
    face = Image.open(io.BytesIO(base64.b64decode(r.json()["face_image_base64"])))
    assert face.size == (96, 112)
    assert http.post("/v1/synthesize", files={"image": _file(HR_FACES[0])}, data={"variants": "1"}).json()["face_image_base64"] is None


def test_bad_input_dir_errors_name_the_data_root_setting(http):
    for spec in ({"input_dir": "no-such-folder"}, {"input_dir": "../x"}, {"input_dir": "/etc"}):
        r = http.post("/v1/jobs", json=spec)
        assert r.status_code == 400, r.text
        assert "LRFACE_DATA_ROOT" in r.json()["message"] and "LRFACE_STATE_DIR/data" in r.json()["message"]


def _lrface(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lrface.service.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env)


def test_cli_synth_align_auto_gives_the_apis_variants(http, tmp_path, mrgan_path):
    photo = RAW_PHOTOS[0]
    out = tmp_path / "out"
    done = _lrface("synth", photo, "--out", out, "-k", "2", "--seed", "5", "--align", "auto", "--threads", "1",
                   "--model", mrgan_path)
    assert done.returncode == 0, done.stderr
    api = http.post("/v1/synthesize", files={"image": _file(photo)}, data={"align": "auto", "variants": "2", "seed": "5"}).json()
    for v in api["variants"]:
        cli = np.asarray(Image.open(out / f"{photo.stem}_{v['k']}.png").convert("RGB")).astype(int)
        ours = np.asarray(Image.open(io.BytesIO(base64.b64decode(v["image_base64"]))).convert("RGB")).astype(int)
        assert cli.shape == ours.shape and np.abs(cli - ours).max() <= 1  # (float rounding across thread counts)
    plain = _lrface("synth", photo, "--out", tmp_path / "plain", "-k", "1", "--threads", "1", "--model", mrgan_path)
    assert plain.returncode == 0, plain.stderr  # --align none (the default): the photo is taken as the face


def test_cli_augment_align_auto_reports_images_without_a_face(tmp_path, mrgan_path):
    src = tmp_path / "photos"
    src.mkdir()
    for photo in RAW_PHOTOS[:2]:
        shutil.copy(photo, src / photo.name)
    (src / "landscape.png").write_bytes(BLANK_LANDSCAPE)
    done = _lrface("augment", src, tmp_path / "out", "-k", "1", "--align", "auto", "--threads", "1", "--model", mrgan_path)
    assert done.returncode == 0, done.stderr
    assert "2 done" in done.stdout and "1 failed" in done.stdout
    assert "no_face" in (tmp_path / "out" / "errors.jsonl").read_text()


def test_cli_embed_default_matches_the_api_and_leaves_out_faceless_photos(http, tmp_path, embedder_path):
    src = tmp_path / "mixed"
    src.mkdir()
    shutil.copy(RAW_PHOTOS[0], src / "a_photo.jpg")
    shutil.copy(HR_FACES[0], src / "b_crop.jpg")
    (src / "c_landscape.png").write_bytes(BLANK_LANDSCAPE)
    done = _lrface("embed", src, "--out", tmp_path / "e.npz", "--threads", "1", "--model", embedder_path)
    assert done.returncode == 0, done.stderr
    assert "c_landscape.png" in done.stderr and "no face" in done.stderr and "--align none" in done.stderr
    npz = np.load(tmp_path / "e.npz")
    assert list(npz["paths"]) == ["a_photo.jpg", "b_crop.jpg"]
    api = http.post("/v1/embed", files=[("images", _file(src / "a_photo.jpg")), ("images", _file(src / "b_crop.jpg"))]).json()
    np.testing.assert_allclose(npz["embeddings"], np.asarray(api["embeddings"], np.float32), atol=1e-4)
    whole = _lrface("embed", src, "--out", tmp_path / "w.npz", "--align", "none", "--threads", "1", "--model", embedder_path)
    assert whole.returncode == 0, whole.stderr
    assert len(np.load(tmp_path / "w.npz")["paths"]) == 3


def test_eval_defaults_to_the_shipped_embedder(tmp_path, embedder_path, monkeypatch):
    from lrface.core.onnx_model import default_model_path
    from lrface.training import evaluate

    if embedder_path != default_model_path("embedder"):
        pytest.skip("LRFACE_TEST_WEIGHTS_DIR points elsewhere: the shipped embedder is not the one under test")
    seen = {}
    real = evaluate.evaluate

    def spy(data, model, *args):
        seen["model"] = model
        return real(data, model, *args)

    monkeypatch.setattr(evaluate, "evaluate", spy)
    data = tmp_path / "dev"
    shutil.copytree(FIXTURES / "hr", data / "hr")
    shutil.copytree(FIXTURES / "lr", data / "lr")
    shutil.copy(FIXTURES / "images.csv", data / "images.csv")
    assert evaluate.main(["--data", str(data), "--out", str(tmp_path / "eval"), "--threads", "1"]) == 0
    assert seen["model"] == default_model_path("embedder")
    assert (tmp_path / "eval" / "metrics_embedder.json").is_file()
