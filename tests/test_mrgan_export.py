"""`lrface export` for MR-GAN: the ONNX contract of docs/ARCHITECTURE.md, sidecar, parity with torch, dispatch by kind."""
import dataclasses
import json
import sys
import types

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from lrface.models.mrgan import build_generator
from lrface.training import export
from lrface.training.configs import load_config


pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("one_torch_thread")]


def make_checkpoint(name: str, path, step: int = 7) -> dict:
    cfg = load_config(name)
    torch.manual_seed(0)
    ckpt = {"kind": "mrgan", "config": dataclasses.asdict(cfg), "generator": build_generator(cfg).state_dict(),
            "step": step, "height_values": [18, 24, 40], "height_weights": [0.5, 0.25, 0.25]}
    torch.save(ckpt, path)
    return ckpt


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    ckpt = make_checkpoint("mrgan_tiny", root / "last.pt")
    assert export.main([str(root / "last.pt"), str(root / "mrgan.onnx")]) == 0
    return root, ckpt


def test_onnx_inputs_outputs_follow_the_contract(exported):
    root, ckpt = exported
    model = onnx.load(str(root / "mrgan.onnx"))
    assert model.opset_import[0].version == 17

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    inputs = {i.name: dims(i) for i in model.graph.input}
    assert list(inputs) == ["face", "z", "scale", "noise"]
    assert inputs["face"][1:] == [3, 112, 96] and inputs["z"][1:] == [ckpt["config"]["z_dim"]] and inputs["scale"][1:] == [1]
    assert inputs["noise"][1:] == [3, 112, 96]
    assert [o.name for o in model.graph.output] == ["lr"]
    assert dims(model.graph.output[0])[1:] == [3, 112, 96]
    assert all(isinstance(d[0], str) for d in list(inputs.values()) + [dims(model.graph.output[0])])  # dynamic batch


def test_sidecar_describes_the_model(exported):
    root, ckpt = exported
    meta = json.loads((root / "mrgan.json").read_text())
    assert meta["model_id"] == "mrgan-tiny-7"
    assert meta["z_dim"] == ckpt["config"]["z_dim"]
    assert meta["height_range"] == [18, 56]
    assert meta["height_values"] == [18, 24, 40] and meta["height_weights"] == [0.5, 0.25, 0.25]
    assert meta["config"]["name"] == "mrgan_tiny"


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_matches_torch(exported, batch):
    root, ckpt = exported
    module = export.mrgan_export_module(ckpt)
    inputs = export.random_mrgan_inputs(batch, ckpt["config"]["z_dim"], seed=batch)
    assert export.verify_onnx_parity(module, root / "mrgan.onnx", inputs) < 1e-4
    out = ort.InferenceSession(str(root / "mrgan.onnx"), providers=["CPUExecutionProvider"]).run(None, inputs)[0]
    assert out.shape == (batch, 3, 112, 96) and out.dtype == np.float32 and np.abs(out).max() <= 1


def test_full_size_model_exports_with_parity(tmp_path):
    ckpt = make_checkpoint("mrgan_base", tmp_path / "last.pt", step=3)
    export.export_mrgan(ckpt, tmp_path / "m.onnx")
    module = export.mrgan_export_module(ckpt)
    for batch in (1, 3):
        inputs = export.random_mrgan_inputs(batch, ckpt["config"]["z_dim"], seed=10 + batch)
        assert export.verify_onnx_parity(module, tmp_path / "m.onnx", inputs) < 1e-4


def test_generator_without_sensor_stage_has_no_noise_input(tmp_path):
    ckpt = make_checkpoint("mrgan_tiny", tmp_path / "last.pt")
    ckpt["config"]["use_sensor_stage"] = False
    ckpt["generator"] = {k: v for k, v in ckpt["generator"].items() if not k.startswith("sensor.")}
    export.export_mrgan(ckpt, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["face", "z", "scale"]
    inputs = export.random_mrgan_inputs(2, ckpt["config"]["z_dim"], seed=5)
    assert export.verify_onnx_parity(export.mrgan_export_module(ckpt), tmp_path / "m.onnx", inputs) < 1e-4


def test_other_kinds_dispatch_to_their_trainer(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("lrface.training.train_embedder")
    fake.export_onnx = lambda ckpt, out: calls.append((ckpt["kind"], str(out)))
    monkeypatch.setitem(sys.modules, "lrface.training.train_embedder", fake)
    torch.save({"kind": "embedder"}, tmp_path / "e.pt")
    assert export.main([str(tmp_path / "e.pt"), str(tmp_path / "e.onnx")]) == 0
    assert calls == [("embedder", str(tmp_path / "e.onnx"))]


def test_unknown_kind_is_refused(tmp_path):
    torch.save({"kind": "mystery"}, tmp_path / "x.pt")
    assert export.main([str(tmp_path / "x.pt"), str(tmp_path / "x.onnx")]) == 2
