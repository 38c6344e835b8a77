"""Model_MR's translation gate, Algorithm 2's schedule, and short train / resume / export runs of both trainers
(embedder and adaption) on a few generated faces."""
import csv

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from PIL import Image  # noqa: E402

from lrface.models.backbones import get_model  # noqa: E402
from lrface.core.face import lr_width_for_height  # noqa: E402
from lrface.models.ran import ModelMR  # noqa: E402
from lrface.training import train_embedder, train_ran  # noqa: E402
from lrface.training.train_embedder import NormalisedEmbedding, load_checkpoint  # noqa: E402
from lrface.training.train_ran import feature_supervision_applies, source_stem  # noqa: E402


pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("one_torch_thread")]


def tiny_model_mr(seed: int = 0) -> ModelMR:
    torch.manual_seed(seed)
    return ModelMR(get_model("mbf_tiny", embedding_dim=16), get_model("mbf_tiny", embedding_dim=16), 16, 8, 8)


# ------------------------------------------------------------------------------------------------------- the gate

def test_gate_weight_is_in_unit_interval_and_gradients_reach_lr_branch_and_translator():
    model = tiny_model_mr()
    parts = model.parts(torch.rand(4, 3, 112, 96) * 2 - 1)
    assert parts["w"].shape == (4, 1)
    assert ((parts["w"] >= 0) & (parts["w"] <= 1)).all()
    assert parts["fused"].shape == (4, 16)
    parts["fused"].pow(2).sum().backward()
    for module in (model.lr_branch, model.gate.translator, model.gate.discriminator):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_gate_with_zero_weight_gives_the_hr_feature():
    model = tiny_model_mr().eval()
    last = model.gate.discriminator.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-1e4)  # sigmoid -> exactly 0
    x = torch.rand(3, 3, 112, 96) * 2 - 1
    parts = model.parts(x)
    assert (parts["w"] == 0).all()
    assert torch.equal(parts["fused"], parts["f_hr"])
    assert not torch.allclose(parts["fused"], parts["f_hr"] + model.gate.translator(parts["f_lr"]))


def test_feature_supervision_applies_on_every_fourth_update_only():
    applied = [u for u in range(1, 21) if feature_supervision_applies(u, 4)]
    assert applied == [4, 8, 12, 16, 20]
    assert not any(feature_supervision_applies(u, 0) for u in range(1, 9))


def test_lr_variant_names_map_to_their_hr_source():
    assert source_stem("Ann/Ann_0001_3.png") == "Ann/Ann_0001"
    assert source_stem("celeba_12/000123_0.png") == "celeba_12/000123"
    assert source_stem("Ann/Ann.png") is None


# --------------------------------------------------------------------------------------------- short real runs

@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """4 identities x 3 HR faces (112x96 JPEG) and 2 synthesized LR variants each (`lrface augment` layout)."""
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for i in range(4):
        pattern = rng.integers(0, 256, (14, 12, 3))
        for j in range(3):
            img = np.clip(np.kron(pattern, np.ones((8, 8, 1))) + rng.normal(0, 20, (112, 96, 3)), 0, 255).astype(np.uint8)
            hr_dir, lr_dir = root / "hr" / f"person_{i}", root / "synth" / f"person_{i}"
            hr_dir.mkdir(parents=True, exist_ok=True)
            lr_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(hr_dir / f"person_{i}_{j:04d}.jpg", quality=95)
            for k, h in enumerate((20, 32)):
                small = Image.fromarray(img).resize((lr_width_for_height(h), h), Image.BICUBIC)
                small.save(lr_dir / f"person_{i}_{j:04d}_{k}.png")
    return root


@pytest.fixture(scope="module")
def branches(faces, tmp_path_factory):
    """Model_HR (hr_bicubic mode, stopped and resumed) and Model_LR checkpoints."""
    runs = tmp_path_factory.mktemp("runs")
    common = ["--config", "embedder_tiny", "--device", "cpu", "--threads", "1"]
    hr_run = runs / "embedder_hr"
    assert train_embedder.main(["--mode", "hr_bicubic", "--hr", str(faces / "hr"), "--out", str(hr_run),
                                "--epochs", "3", "--max-steps", "2", *common]) == 0
    assert load_checkpoint(hr_run / "last.pt")["step"] == 2
    assert train_embedder.main(["--mode", "hr_bicubic", "--hr", str(faces / "hr"), "--out", str(hr_run),
                                "--epochs", "3", "--resume", *common]) == 0
    lr_run = runs / "embedder_lr"
    assert train_embedder.main(["--mode", "lr", "--lr-dir", str(faces / "synth"), "--hr", str(faces / "hr"),
                                "--out", str(lr_run), "--epochs", "1", *common]) == 0
    return runs


def read_metrics(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_embedder_run_checkpoints_and_resumes(branches):
    ckpt = load_checkpoint(branches / "embedder_hr" / "last.pt", "embedder")
    assert ckpt["step"] == 3 and ckpt["mode"] == "hr_bicubic" and ckpt["config"]["name"] == "embedder_tiny"
    assert {"model", "head", "optimizer", "epoch", "identities"} <= set(ckpt)
    rows = read_metrics(branches / "embedder_hr" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3]  # resumed, not restarted
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    lr_ckpt = load_checkpoint(branches / "embedder_lr" / "last.pt", "embedder")
    assert lr_ckpt["identities"] == ckpt["identities"] and lr_ckpt["mode"] == "lr"


@pytest.fixture(scope="module")
def ran_run(faces, branches):
    out = branches / "ran"
    common = ["--config", "ran_tiny", "--hr", str(faces / "hr"), "--lr-dir", str(faces / "synth"), "--out", str(out),
              "--device", "cpu", "--threads", "1"]
    assert train_ran.main([*common, "--hr-ckpt", str(branches / "embedder_hr" / "last.pt"),
                           "--lr-ckpt", str(branches / "embedder_lr" / "last.pt"), "--max-steps", "6"]) == 0
    assert load_checkpoint(out / "last.pt")["step"] == 6
    assert train_ran.main([*common, "--resume", "--epochs", "3"]) == 0  # 3 steps/epoch -> 9
    return out


def test_adaption_run_applies_feature_supervision_every_fourth_update_and_resumes(ran_run):
    ckpt = load_checkpoint(ran_run / "last.pt", "ran")
    assert ckpt["step"] == 9 and ckpt["feature_updates"] == 2
    rows = read_metrics(ran_run / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 10))
    assert [int(r["feat_applied"]) for r in rows] == [int(s % 4 == 0) for s in range(1, 10)]
    for r in rows:
        assert 0.0 <= float(r["w_lr"]) <= 1.0 and 0.0 <= float(r["w_hr"]) <= 1.0
        assert 0.0 <= float(r["acc_lr"]) <= 1.0
    assert (ran_run / "fig3_w_and_lr_acc.png").stat().st_size > 0


def test_adaption_keeps_the_frozen_hr_branch(ran_run, branches):
    hr = load_checkpoint(branches / "embedder_hr" / "last.pt")["model"]
    mr = load_checkpoint(ran_run / "last.pt")["model"]
    for key, value in hr.items():
        assert torch.equal(mr["hr_branch." + key], value), key


def onnx_parity(module, onnx_path):
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["face"]
    assert [o.name for o in session.get_outputs()] == ["embedding"]
    torch.manual_seed(1)
    for n in (1, 3):
        x = torch.rand(n, 3, 112, 96) * 2 - 1
        with torch.no_grad():
            expected = module(x).numpy()
        got = session.run(None, {"face": x.numpy()})[0]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-4
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_embedder_export_matches_torch(branches, tmp_path):
    ckpt = load_checkpoint(branches / "embedder_hr" / "last.pt")
    out = train_embedder.export_onnx(ckpt, tmp_path / "embedder.onnx")
    net = get_model("mbf_tiny", embedding_dim=ckpt["config"]["embedding_dim"])
    net.load_state_dict(ckpt["model"])
    onnx_parity(NormalisedEmbedding(net).eval(), out)
    import json
    sidecar = json.loads((tmp_path / "embedder.json").read_text())
    assert set(sidecar) == {"model_id", "dim", "verify_threshold"} and sidecar["dim"] == 32


def test_adaption_export_matches_torch(ran_run, tmp_path):
    ckpt = load_checkpoint(ran_run / "last.pt")
    out = train_ran.export_onnx(ckpt, tmp_path / "ran.onnx")
    model = train_ran.build_model_mr(train_ran.RANConfig(**ckpt["config"]), ckpt["branches"])
    model.load_state_dict(ckpt["model"])
    onnx_parity(NormalisedEmbedding(model).eval(), out)
