"""The second shipped embedder, selectable by name: `lite` (lrface/models/weights/embedder_lite.onnx, one adapted
model instead of the default's ensemble) through the inference core, `lrface embed --model lite` and
`lrface eval --model lite`. The API's `model=` and embedding jobs' `model` are tested in test_api_endpoints.py."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from typing import get_args

import numpy as np
import pytest

from lrface.core.embedder import DEFAULT_EMBEDDER, EMBEDDER_MODELS, Embedder, EmbedderName, embedder_path
from lrface.core.face import read_image
from lrface.core.onnx_model import ModelNotFoundError, default_model_path
from conftest import FIXTURES, HR_DIR, LR_DIR


@pytest.fixture(scope="module")
def lite():
    path = default_model_path("embedder_lite")
    if not path.is_file():
        pytest.skip(f"{path} is not in the tree")
    return Embedder("lite", threads=1)


def test_names_resolve_to_the_shipped_files_and_anything_else_is_a_path(tmp_path):
    assert DEFAULT_EMBEDDER == "full" and set(EMBEDDER_MODELS) == {"full", "lite"}
    assert get_args(EmbedderName) == tuple(EMBEDDER_MODELS)  # the API's field type names the same models
    assert embedder_path("full") == default_model_path("embedder")
    assert embedder_path("lite") == default_model_path("embedder_lite")
    assert embedder_path(None) is None
    assert embedder_path(str(tmp_path / "lite")) == tmp_path / "lite"
    with pytest.raises(ModelNotFoundError, match="nothing.onnx"):
        Embedder(tmp_path / "nothing.onnx")


def test_lite_is_its_own_model_with_its_own_threshold_and_matches_across_resolutions(lite, embedder):
    meta = json.loads(default_model_path("embedder_lite").with_suffix(".json").read_text())
    assert lite.model_id == meta["model_id"] != embedder.model_id
    assert lite.verify_threshold == meta["verify_threshold"] and lite.dim == embedder.dim == 128
    identities = {row.split(",")[0]: row.split(",")[1] for row in (FIXTURES / "images.csv").read_text().splitlines()[1:]}
    stems = sorted(identities)  # person/person_000k
    hr = lite.embed([read_image(HR_DIR / f"{s}.jpg") for s in stems])
    lr = lite.embed([read_image(LR_DIR / f"{s}.png") for s in stems])
    np.testing.assert_allclose(np.linalg.norm(hr, axis=1), 1.0, atol=1e-5)
    scores = hr @ lr.T  # an HR photo against every LR capture: its own person's captures score highest on average
    same = np.array([[identities[a] == identities[b] for b in stems] for a in stems])
    assert scores[same].mean() > scores[~same].mean() + 0.1
    full = embedder.embed([read_image(HR_DIR / f"{s}.jpg") for s in stems])
    assert not np.allclose(hr, full, atol=1e-3)  # a different model, not the default under another name


def _lrface(*args):
    return subprocess.run([sys.executable, "-m", "lrface.service.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_cli_embed_and_eval_take_the_name(lite, tmp_path):
    done = _lrface("embed", HR_DIR, "--out", tmp_path / "e.npz", "--model", "lite", "--threads", "1")
    assert done.returncode == 0, done.stderr
    assert lite.model_id in done.stdout
    npz = np.load(tmp_path / "e.npz")
    local = lite.embed([read_image(HR_DIR / p) for p in npz["paths"]])
    np.testing.assert_allclose(npz["embeddings"], local, atol=1e-5)
    assert str(npz["model_id"]) == lite.model_id  # the file says which model wrote it
    data = tmp_path / "dev"
    shutil.copytree(HR_DIR, data / "hr")
    shutil.copytree(LR_DIR, data / "lr")
    shutil.copy(FIXTURES / "images.csv", data / "images.csv")
    done = _lrface("eval", "--data", data, "--model", "lite", "--out", tmp_path / "eval", "--threads", "1")
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics_embedder_lite.json").read_text())
    assert metrics["model"].endswith("embedder_lite.onnx") and metrics["people"] == "all"
    wrong = _lrface("embed", HR_DIR, "--out", tmp_path / "x.npz", "--model", "huge")
    assert wrong.returncode != 0 and "huge" in wrong.stderr and "Traceback" not in wrong.stderr


def test_the_npz_records_its_model_and_the_jobs_block_writer_makes_the_same_file(tmp_path):
    from lrface.core.embed import embeddings_npz_bytes, write_embeddings_from_parts

    rng = np.random.default_rng(0)
    blocks = [rng.standard_normal((n, 4)).astype(np.float32) for n in (3, 0, 2)]
    names = [[f"p{i}_{k}.png" for k in range(len(b))] for i, b in enumerate(blocks)]
    parts = []
    for i, (b, n) in enumerate(zip(blocks, names)):
        parts.append(tmp_path / f"{i}.npz")
        parts[-1].write_bytes(embeddings_npz_bytes(n, b))
    write_embeddings_from_parts(tmp_path / "joined.npz", parts, "some-model-id")
    (tmp_path / "whole.npz").write_bytes(embeddings_npz_bytes(sum(names, []), np.concatenate(blocks), "some-model-id"))
    with np.load(tmp_path / "joined.npz") as a, np.load(tmp_path / "whole.npz") as b:
        assert sorted(a.files) == sorted(b.files) == ["embeddings", "model_id", "paths"]
        assert str(a["model_id"]) == str(b["model_id"]) == "some-model-id"
        assert list(a["paths"]) == list(b["paths"]) and np.array_equal(a["embeddings"], b["embeddings"])
