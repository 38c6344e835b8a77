"""The benchmark's eager-torch twins of the shipped ONNX models (bench/torch_models.py), rebuilt from the ONNX
files alone: architecture from the sidecar, weights from the graph. The onnxruntime-vs-torch comparison is only
fair if the twin computes the same function, so it must agree with onnxruntime to float32 rounding."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from bench.torch_models import _module_name, load_eager  # noqa: E402

pytestmark = [pytest.mark.torch]


def test_scope_names_map_to_module_names():
    assert _module_name("/net/hr_branch/stem/stem.0/stem.0.0/Conv") == "net.hr_branch.stem.0.0"
    assert (_module_name("/net/lr_branch/blocks/blocks.3/block/block.2/block.2.0/Conv")
            == "net.lr_branch.blocks.3.block.2.0")


@pytest.mark.parametrize("what", ["embedder", "mrgan"])
def test_the_twin_rebuilt_from_the_onnx_file_matches_onnxruntime(what, mrgan_path, embedder_path):
    path = embedder_path if what == "embedder" else mrgan_path
    module, how = load_eager(path, None, what)
    assert module is not None, how
    assert "no checkpoint" in how
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    feed = {}
    for i in session.get_inputs():
        shape = [3 if isinstance(d, str) else d for d in i.shape]
        if i.name == "scale":
            feed[i.name] = np.array([[0.2], [0.35], [0.5]], dtype=np.float32)
        else:
            feed[i.name] = rng.uniform(-1, 1, shape).astype(np.float32)
    (expected,) = session.run(None, feed)
    with torch.inference_mode():
        got = module(*[torch.from_numpy(v) for v in feed.values()]).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
