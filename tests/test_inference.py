"""The inference core (lrface/core/onnx_model.py, synthesizer.py, embedder.py): shapes, reproducibility, height sampling, argument checks."""
from __future__ import annotations

import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from lrface.core.face import lr_width_for_height, read_image
from lrface.core.embedder import Embedder
from lrface.core.onnx_model import ModelNotFoundError, default_model_path, execution_providers
from lrface.core.synthesizer import Synthesizer

FIXTURES = Path(__file__).parent / "fixtures"
HR_FACES = sorted((FIXTURES / "hr").rglob("*.jpg"))
LR_FACES = sorted((FIXTURES / "lr").rglob("*.png"))


@pytest.fixture(scope="module")
def faces() -> list[np.ndarray]:
    return [read_image(p) for p in HR_FACES[:3]]


def _keys(n: int) -> list[str]:
    return [p.relative_to(FIXTURES / "hr").as_posix() for p in HR_FACES[:n]]


# -- helpers that need no model ------------------------------------------------------------------------------

def test_default_model_path_points_into_the_models_package():
    from lrface import models

    path = default_model_path("mrgan")
    assert path == Path(models.__file__).resolve().parent / "weights" / "mrgan.onnx"


def test_missing_model_raises_model_not_found_naming_the_file(tmp_path):
    with pytest.raises(ModelNotFoundError, match="mrgan.onnx"):
        Synthesizer(tmp_path / "mrgan.onnx")
    with pytest.raises(ModelNotFoundError, match="embedder.onnx"):
        Embedder(tmp_path / "embedder.onnx")


def test_execution_providers_end_with_cpu_and_reject_unknown_names():
    assert execution_providers("cpu") == ["CPUExecutionProvider"]
    auto = execution_providers("auto")
    assert auto[-1] == "CPUExecutionProvider"
    assert auto[0] in ("CUDAExecutionProvider", "CPUExecutionProvider")
    with pytest.raises(ValueError):
        execution_providers("tpu")


def test_inference_modules_never_import_torch():
    code = ("import sys, lrface.core.synthesizer, lrface.core.embedder, lrface.service.offline, lrface.training.degradations; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- synthesis -----------------------------------------------------------------------------------------------

def test_synthesize_gives_k_variants_at_native_lr_size(synthesizer, faces):
    out = synthesizer.synthesize(faces, keys=_keys(3), variants=4, seed=0)
    assert len(out) == 3 and all(len(vs) == 4 for vs in out)
    for vs in out:
        for k, v in enumerate(vs):
            assert v.k == k and v.seed == 0
            assert v.width == lr_width_for_height(v.height)
            assert v.image.dtype == np.uint8 and v.image.shape == (v.height, v.width, 3)


def test_canvas_variants_are_112x96(synthesizer, faces):
    out = synthesizer.synthesize(faces[:1], keys=_keys(1), variants=3, seed=0, canvas=True)
    assert all(v.image.shape == (112, 96, 3) for v in out[0])


def test_variants_of_one_face_differ(synthesizer, faces):
    vs = synthesizer.synthesize(faces[:1], keys=_keys(1), variants=4, seed=0, height=32)[0]
    images = [v.image.tobytes() for v in vs]
    assert len(set(images)) == 4


def test_same_seed_gives_identical_bytes_regardless_of_batching(synthesizer, mrgan_path, faces):
    a = synthesizer.synthesize(faces, keys=_keys(3), variants=3, seed=7)
    one_by_one = Synthesizer(mrgan_path, threads=1, max_batch=1)
    b = one_by_one.synthesize(faces[::-1], keys=_keys(3)[::-1], variants=3, seed=7)[::-1]
    for va, vb in zip(a, b):
        for x, y in zip(va, vb):
            assert (x.height, x.width) == (y.height, y.width)
            assert np.array_equal(x.image, y.image)
    c = synthesizer.synthesize(faces[:1], keys=_keys(1), variants=3, seed=8)[0]
    assert any(not np.array_equal(x.image, y.image) for x, y in zip(a[0], c))


def test_synthesize_is_safe_from_several_threads(synthesizer, faces):
    serial = synthesizer.synthesize(faces, keys=_keys(3), variants=2, seed=3)
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda i: synthesizer.synthesize([faces[i]], keys=[_keys(3)[i]], variants=2, seed=3)[0],
                                 [0, 1, 2, 0, 1, 2]))
    for i, vs in enumerate(parallel):
        assert all(np.array_equal(x.image, y.image) for x, y in zip(vs, serial[i % 3]))


def test_variant_params_follow_the_documented_generator(synthesizer):
    key, seed, k = "Alex_Penelas/Alex_Penelas_0001.jpg", 5, 2
    height, z = synthesizer.variant_params(key, seed, k, height=30)
    rng = np.random.default_rng([seed, zlib.crc32(key.encode()), k])
    assert height == 30
    assert z.dtype == np.float32 and z.shape == (synthesizer.z_dim,)
    assert np.array_equal(z, rng.standard_normal(synthesizer.z_dim, dtype=np.float32))


def test_model_rows_are_the_documented_draws_and_the_capture_is_cropped(synthesizer, mrgan_path, faces):
    """Height, z, then the sensor noise, all from one default_rng([seed, crc32(key), k]); the variant is the
    top-left h x w corner of the model's `lr` output."""
    import onnxruntime as ort

    from lrface.core.face import FACE_HEIGHT, from_model_output, to_model_input

    key, seed, k = _keys(1)[0], 9, 1
    rng = np.random.default_rng([seed, zlib.crc32(key.encode()), k])
    lo, hi = synthesizer.height_range
    height, z = synthesizer.variant_params(key, seed, k)
    assert lo <= height <= hi
    rng.choice(synthesizer._height_values, p=synthesizer._height_weights / synthesizer._height_weights.sum())
    assert np.array_equal(z, rng.standard_normal(synthesizer.z_dim, dtype=np.float32))
    session = ort.InferenceSession(str(mrgan_path), providers=["CPUExecutionProvider"])
    feed = {"face": to_model_input([faces[0]]), "z": z[None], "scale": np.array([[height / FACE_HEIGHT]], np.float32)}
    if "noise" in {i.name for i in session.get_inputs()}:
        feed["noise"] = rng.standard_normal((1, 3, 112, 96), dtype=np.float32)
    (out,) = session.run(["lr"], feed)
    expected = from_model_output(out)[0][:height, :lr_width_for_height(height)]
    got = synthesizer.synthesize(faces[:1], keys=[key], variants=2, seed=seed)[0][k]
    assert got.height == height and np.array_equal(got.image, expected)


def test_drawn_heights_stay_within_the_range_and_span_it(synthesizer):
    lo, hi = synthesizer.height_range
    heights = {synthesizer.variant_params("face.jpg", 0, k)[0] for k in range(3000)}
    assert min(heights) >= lo and max(heights) <= hi
    assert max(heights) - min(heights) >= 0.6 * (hi - lo)  # many variants reach far into both tails
    narrow = {synthesizer.variant_params("face.jpg", 0, k, min_height=24, max_height=30)[0] for k in range(500)}
    assert narrow <= set(range(24, 31)) and len(narrow) >= 3
    # Outside the model's height distribution heights are uniform over the asked range.
    beyond = {synthesizer.variant_params("face.jpg", 0, k, min_height=100, max_height=104)[0] for k in range(300)}
    assert beyond == set(range(100, 105))


def test_fixed_height_is_used_for_every_variant(synthesizer, faces):
    vs = synthesizer.synthesize(faces[:1], keys=_keys(1), variants=3, seed=0, height=24)[0]
    assert all(v.height == 24 and v.image.shape == (24, lr_width_for_height(24), 3) for v in vs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(variants=0), "variants"),
    (dict(variants=1, height=7), "height"),
    (dict(variants=1, height=113), "height"),
    (dict(variants=1, min_height=40, max_height=30), "min_height"),
    (dict(variants=1, height=30, min_height=20), "either"),
    (dict(variants=1, seed=-1), "seed"),
])
def test_invalid_synthesis_arguments_raise_value_error(synthesizer, faces, kwargs, message):
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        synthesizer.synthesize(faces[:1], keys=_keys(1), **kwargs)


def test_faces_and_keys_must_match_and_faces_must_be_usable(synthesizer, faces):
    with pytest.raises(ValueError, match="keys"):
        synthesizer.synthesize(faces[:2], keys=_keys(1), variants=1, seed=0)
    with pytest.raises(ValueError, match="px high"):
        synthesizer.synthesize([np.zeros((5, 4, 3), np.uint8)], keys=["tiny"], variants=1, seed=0)
    with pytest.raises(ValueError, match="uint8"):
        synthesizer.synthesize([np.zeros((40, 32, 3), np.float32)], keys=["float"], variants=1, seed=0)


# -- embedding -----------------------------------------------------------------------------------------------

def test_embeddings_are_l2_normalised_for_faces_of_any_size(embedder):
    faces = [read_image(p) for p in HR_FACES + LR_FACES]
    emb = embedder.embed(faces)
    assert emb.dtype == np.float32 and emb.shape == (len(faces), embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb[:3], embedder.embed(faces[:3]), atol=1e-5)
    assert embedder.embed([]).shape == (0, embedder.dim)
    assert isinstance(embedder.model_id, str) and -1.0 <= embedder.verify_threshold <= 1.0


def test_embedding_rejects_faces_under_8_px(embedder):
    with pytest.raises(ValueError, match="px high"):
        embedder.embed([np.zeros((7, 6, 3), np.uint8)])
