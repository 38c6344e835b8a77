"""Exported graphs' weights: stored as float16 (`store_weights_fp16`) and read back (`load_onnx_weights`)."""
from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from lrface.training.onnx_weights import load_onnx_weights, store_weights_fp16  # noqa: E402


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16 * 8 * 8, 40, bias=False)
        self.scale = torch.nn.Parameter(torch.tensor([2.0]))  # too small to convert

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1)) * self.scale


def export(module, path):
    kwargs = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module.eval(), (torch.zeros(1, 3, 8, 8),), str(path), input_names=["x"],
                          output_names=["y"], opset_version=17, dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, **kwargs)


def test_fp16_weights_halve_the_file_keep_float32_arithmetic_and_read_back(tmp_path):
    torch.manual_seed(0)
    net = Small()
    path = tmp_path / "small.onnx"
    export(net, path)
    size = path.stat().st_size
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    before = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    assert store_weights_fp16(path) == 1  # the Linear's weight (2,560 x 40); the conv (432) and scale stay float32
    assert path.stat().st_size < 0.6 * size
    graph = onnx.load(str(path)).graph
    assert [i.data_type for i in graph.initializer].count(onnx.TensorProto.FLOAT16) == 1
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    after = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert after.dtype == np.float32
    np.testing.assert_allclose(after, before, rtol=0, atol=2e-3 * np.abs(before).max())

    twin = Small()
    assert load_onnx_weights(twin, path) == []
    want = net.fc.weight.detach().half().float()
    assert torch.equal(twin.fc.weight, want)
    assert torch.equal(twin.conv.weight, net.conv.weight) and torch.equal(twin.scale, net.scale)
    with torch.inference_mode():
        np.testing.assert_allclose(twin(torch.from_numpy(x)).numpy(), after, rtol=1e-4, atol=1e-4)
