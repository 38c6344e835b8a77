"""The teacher-based adaption (lrface.training.adapt_data + lrface.training.train_adapt) end to end on the six fixture faces:
bundle, a few updates, resume, export to the embedder ONNX contract, and the eager twin of the export."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from conftest import HR_DIR, LR_DIR  # noqa: E402
from lrface.training import adapt_data, train_adapt  # noqa: E402
from lrface.core.face import to_canvas  # noqa: E402
from lrface.training.common import load_checkpoint  # noqa: E402
from lrface.training.degradations import blur_noise_jpeg_lr  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, mrgan_path):
    """Fixture faces as the labelled set, two of them again as 'unlabeled' ones, MR-GAN variants of all."""
    from lrface.service.offline import main_augment

    root = tmp_path_factory.mktemp("adapt")
    unlabeled = root / "unlabeled"
    unlabeled.mkdir()
    faces = sorted(HR_DIR.rglob("*.jpg"))
    for f in faces[:2]:
        shutil.copy(f, unlabeled / f"u_{f.name}")
    (unlabeled / "images.csv").write_text("file,filled_fraction\n" + "".join(
        f"u_{f.name},{fill}\n" for f, fill in zip(faces[:2], (0.1, 0.9))))  # the second is left out
    for src, dst in ((HR_DIR, root / "synth-hr"), (unlabeled, root / "synth-unl")):
        assert main_augment([str(src), str(dst), "--variants", "1", "--seed", "0", "--threads", "1",
                             "--model", str(mrgan_path)]) == 0
    meta = adapt_data.build(str(HR_DIR), str(unlabeled), [str(root / "synth-hr"), str(root / "synth-unl")],
                            root / "data", threads=1)
    meta = adapt_data.add_real(str(LR_DIR), root / "data")  # the fixtures' real LR captures, with identities
    return root, meta


def test_bundle_holds_every_lr_kind_at_matched_heights_and_teacher_features(bundle):
    root, meta = bundle
    data = adapt_data.load(root / "data")
    assert meta["sources"] == 7 and meta["labelled"] == 6  # one unlabeled face was mostly fill
    assert data["real_lr"].shape == (6, 112, 96, 3) and len(meta["real_identities"]) == 3
    assert list(data["labels"][-1:]) == [-1]
    for kind in adapt_data.LR_KINDS:
        assert data[f"lr_{kind}"].shape == (7, 112, 96, 3)
        assert data[f"teacher_{kind}"].shape == (7, 128)
    assert 18 <= int(data["heights"].min()) and int(data["heights"].max()) <= 56
    # the teacher's features of a face and of its LR versions differ, and LR versions differ by kind
    assert not np.allclose(data["teacher_hr"], data["teacher_mrgan"])
    assert not np.allclose(data["teacher_bicubic"], data["teacher_handmade"])


def test_train_resume_and_export(bundle, tmp_path):
    root, _ = bundle
    out = tmp_path / "run"
    args = ["--data", str(root / "data"), "--out", str(out), "--threads", "1", "--batch-size", "4"]
    assert train_adapt.main(args + ["--steps", "2"]) == 0
    first = load_checkpoint(out / "last.pt", "adapt")
    assert first["step"] == 2
    assert train_adapt.main(args + ["--steps", "3", "--resume"]) == 0
    ckpt = load_checkpoint(out / "last.pt", "adapt")
    assert ckpt["step"] == 3
    assert json.loads((out / "run.json").read_text())["step"] == 3
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3  # header + one row per update across the resume
    # only Model_LR moved: it differs from the teacher now
    teacher = train_adapt.DlibFaceModel.from_dat().state_dict()
    assert not torch.equal(ckpt["lr_branch"]["resnet.stem.weight"], teacher["resnet.stem.weight"])

    onnx_path = tmp_path / "embedder.onnx"
    train_adapt.export_onnx(ckpt, onnx_path)
    sidecar = json.loads(onnx_path.with_suffix(".json").read_text())
    assert sidecar["dim"] == 128 and sidecar["model_id"] == "adapt_full-dlib_resnet-step3"
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["face"]
    x = np.random.default_rng(0).uniform(-1, 1, (3, 3, 112, 96)).astype(np.float32)
    (emb,) = session.run(None, {"face": x})
    assert emb.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)

    from bench.torch_models import load_eager

    twin, how = load_eager(onnx_path, None, "embedder")
    assert twin is not None, how
    with torch.inference_mode():
        np.testing.assert_allclose(twin(torch.from_numpy(x)).numpy(), emb, atol=1e-5)


def test_no_gate_config_exports_model_lr_alone(bundle, tmp_path):
    root, _ = bundle
    out = tmp_path / "lr_only"
    assert train_adapt.main(["--config", "adapt_lr_bicubic", "--data", str(root / "data"), "--out", str(out),
                             "--threads", "1", "--batch-size", "4", "--steps", "1"]) == 0
    ckpt = load_checkpoint(out / "last.pt", "adapt")
    net = train_adapt.build_embedder(train_adapt.AdaptConfig(**ckpt["config"]), ckpt["lr_branch"], ckpt["gate"])
    assert isinstance(net, train_adapt.Centred) and isinstance(net.net, train_adapt.LRBranchOnly)


def test_teacher_export_is_dlib_through_the_warp(tmp_path):
    path = tmp_path / "dlib.onnx"
    train_adapt.export_teacher(path)
    assert json.loads(path.with_suffix(".json").read_text())["model_id"] == "dlib_resnet_v1-chipwarp"


def test_centred_teacher_export_and_its_twin(bundle, tmp_path):
    root, _ = bundle
    path = tmp_path / "dlib_centred.onnx"
    assert train_adapt.main(["--export-teacher", str(path), "--data", str(root / "data")]) == 0
    assert json.loads(path.with_suffix(".json").read_text())["model_id"] == "dlib_resnet_v1-chipwarp-centred"
    from bench.torch_models import load_eager

    twin, how = load_eager(path, None, "embedder")
    assert twin is not None, how
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 112, 96)).astype(np.float32)
    (emb,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"face": x})
    with torch.inference_mode():
        np.testing.assert_allclose(twin(torch.from_numpy(x)).numpy(), emb, atol=1e-5)


def test_mixed_lr_kinds_draw_each_kind_and_train(bundle, tmp_path):
    root, _ = bundle
    data = adapt_data.load(root / "data")
    kinds = ("handmade", "mrgan", "bicubic")
    mixed = train_adapt.MixedLR([data[f"lr_{k}"] for k in kinds], [data[f"teacher_{k}"] for k in kinds], (2, 1, 1))
    kind_of = mixed.draw(400, torch.Generator().manual_seed(0))
    counts = np.bincount(kind_of, minlength=3)
    assert counts.sum() == 400 and counts[0] > counts[1] > 0 and counts[2] > 0
    sel = np.array([0, 1, 2, 3, 4, 5, 6])
    kind_of = np.array([0, 1, 2, 0, 1, 2, 0])
    got = mixed.teacher(sel, kind_of)
    for i, (s, k) in enumerate(zip(sel, kind_of)):  # each face's LR version and teacher feature come from its kind
        np.testing.assert_array_equal(got[i], data[f"teacher_{kinds[k]}"][s])
        np.testing.assert_array_equal(mixed.images(sel, kind_of)[i], data[f"lr_{kinds[k]}"][s])
    # one kind: no draw (single-kind runs keep their batches)
    assert train_adapt.MixedLR([data["lr_mrgan"]], [data["teacher_mrgan"]]).draw(4, torch.Generator()) is None

    out = tmp_path / "mix"
    assert train_adapt.main(["--config", "adapt_full_mix", "--data", str(root / "data"), "--out", str(out),
                             "--threads", "1", "--batch-size", "4", "--steps", "2"]) == 0
    assert list(load_checkpoint(out / "last.pt", "adapt")["config"]["lr_kinds"]) == list(kinds)


def test_fresh_lr_faces_are_the_hand_made_path_at_drawn_heights_and_train(bundle, tmp_path, monkeypatch):
    root, _ = bundle
    data = adapt_data.load(root / "data")
    hr = np.array(data["hr"][:3])
    heights = np.array([20, 33, 47])
    got = train_adapt.fresh_lr(hr, heights, np.random.default_rng(5))
    rng = np.random.default_rng(5)  # the bundle's hand-made path, face by face, with the same draws
    want = np.stack([to_canvas(blur_noise_jpeg_lr(f, int(h), rng)) for f, h in zip(hr, heights)])
    np.testing.assert_array_equal(got, want)
    assert got.shape == (3, 112, 96, 3) and got.dtype == np.uint8

    out = tmp_path / "online"
    args = ["--config", "adapt_online_flip_3k", "--data", str(root / "data"), "--out", str(out), "--threads", "1",
            "--batch-size", "8"]
    assert train_adapt.main(args + ["--steps", "2"]) == 0
    assert load_checkpoint(out / "last.pt", "adapt")["config"]["lr_online"] == 0.5
    bad = train_adapt.AdaptConfig(name="bad", lr_online=1.5)
    monkeypatch.setattr(train_adapt, "load_typed_config", lambda *a, **k: bad)
    with pytest.raises(SystemExit, match="lr_online is a share"):
        train_adapt.main(["--config", "bad", "--data", str(root / "data"), "--out", str(tmp_path / "b"), "--steps", "1"])


def test_flip_average_export_is_the_mean_of_face_and_mirror(tmp_path):
    import dataclasses

    cfg = dataclasses.replace(train_adapt.AdaptConfig(), flip_average=True)
    net = train_adapt.build_embedder(cfg)
    assert isinstance(net, train_adapt.FlipAverage)
    x = torch.from_numpy(np.random.default_rng(2).uniform(-1, 1, (3, 3, 112, 96)).astype(np.float32))
    with torch.inference_mode():
        one = torch.nn.functional.normalize(net.net(x), dim=1)
        mirrored = torch.nn.functional.normalize(net.net(torch.flip(x, dims=[3])), dim=1)
        expected = torch.nn.functional.normalize(one + mirrored, dim=1).numpy()
        # a face and its mirror image get the same embedding
        np.testing.assert_allclose(net(x).numpy(), net(torch.flip(x, dims=[3])).numpy(), atol=1e-5)
    path = tmp_path / "flip.onnx"
    from lrface.training.train_embedder import export_embedding_module

    export_embedding_module(net, 128, path, "flip-test", 0.5)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3):  # the mirror batch follows the dynamic batch size
        (emb,) = session.run(None, {"face": x[:n].numpy()})
        np.testing.assert_allclose(emb, expected[:n], atol=1e-4)


def test_lr_view_is_the_core_resize_path_inside_the_graph():
    """LRView's two matrices do what `to_canvas(to_lr_size(face, h))` does, up to the core's 8-bit rounding."""
    from lrface.core.face import read_image, to_canvas, to_lr_size

    face = to_canvas(read_image(sorted(HR_DIR.rglob("*.jpg"))[0]))
    for height in (18, 32, 56):
        v_h, v_w = train_adapt.lr_view_matrices(height)
        np.testing.assert_allclose(v_h.sum(1), 1.0, atol=1e-5)  # a flat image stays flat
        got = np.clip(np.einsum("ij,jkc,lk->ilc", v_h, face.astype(np.float32), v_w), 0, 255)
        ref = to_canvas(to_lr_size(face, height)).astype(np.float32)
        assert np.abs(got - ref).mean() < 1.0 and np.abs(got - ref).max() < 8.0


def test_lr_view_and_gate_floor_export(tmp_path):
    import dataclasses

    from lrface.training.train_embedder import export_embedding_module

    cfg = dataclasses.replace(train_adapt.AdaptConfig(), flip_average=True, lr_view_height=32, lr_view_weight=0.35,
                              gate_floor=0.3)
    net = train_adapt.build_embedder(cfg)
    assert isinstance(net, train_adapt.LRView) and isinstance(net.net, train_adapt.FlipAverage)
    gate = next(m for m in net.modules() if isinstance(m, train_adapt.CentredGate))
    assert gate.w_floor == 0.3
    x = torch.from_numpy(np.random.default_rng(3).uniform(-1, 1, (2, 3, 112, 96)).astype(np.float32))
    unit = torch.nn.functional.normalize
    with torch.inference_mode():
        expected = unit(unit(net.net(x), dim=1) + 0.35 * unit(net.net(net.view(x)), dim=1), dim=1).numpy()
        # the floor: W at or below it is 0, W = 1 stays 1, in between it is stretched
        gate.discriminator.net[-1].bias.fill_(-50.0)
        assert float(gate(torch.zeros(1, 128), torch.ones(1, 128))["w"].max()) == 0.0
        gate.discriminator.net[-1].bias.fill_(50.0)
        assert float(gate(torch.zeros(1, 128), torch.ones(1, 128))["w"].min()) == pytest.approx(1.0)
        gate.discriminator.net[-1].bias.fill_(0.0)
    path = export_embedding_module(train_adapt.build_embedder(cfg), 128, tmp_path / "view.onnx", "view-test", 0.5)
    (emb,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"face": x.numpy()})
    np.testing.assert_allclose(emb, expected, atol=1e-4)


def test_reexport_reads_the_weights_back_from_a_checkpoint_or_an_onnx_file(bundle, tmp_path):
    root, _ = bundle
    out = tmp_path / "run"
    assert train_adapt.main(["--data", str(root / "data"), "--out", str(out), "--threads", "1", "--batch-size", "4",
                             "--steps", "1"]) == 0
    first = tmp_path / "first.onnx"
    train_adapt.export_onnx(load_checkpoint(out / "last.pt", "adapt"), first)
    x = np.random.default_rng(4).uniform(-1, 1, (2, 3, 112, 96)).astype(np.float32)

    def run(path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"face": x})[0]

    # the same config from the ONNX file: the same function
    again = tmp_path / "again.onnx"
    assert train_adapt.main(["--reexport", str(first), "--config", "adapt_full", "--out", str(again)]) == 0
    np.testing.assert_allclose(run(again), run(first), atol=1e-6)
    # other export options, from the ONNX file and from the checkpoint: one result, a new model_id
    view_onnx, view_ckpt = tmp_path / "view_onnx.onnx", tmp_path / "view_ckpt.onnx"
    for src, dst in ((first, view_onnx), (out / "last.pt", view_ckpt)):
        assert train_adapt.main(["--reexport", str(src), "--config", "adapt_handmade_6k_lrview", "--out", str(dst)]) == 0
    np.testing.assert_allclose(run(view_onnx), run(view_ckpt), atol=1e-5)
    assert not np.allclose(run(view_onnx), run(first), atol=1e-3)
    assert json.loads(view_onnx.with_suffix(".json").read_text())["model_id"] == "adapt_handmade_6k_lrview-dlib_resnet-step1"
    # clear refusals: another architecture, a file that is not an adapt embedder, no .onnx output
    with pytest.raises(SystemExit, match="differs from the weights' config adapt_full in gate"):
        train_adapt.main(["--reexport", str(first), "--config", "adapt_lr_bicubic", "--out", str(tmp_path / "x.onnx")])
    other = tmp_path / "other.onnx"
    shutil.copy(first, other)
    other.with_suffix(".json").write_text(json.dumps({"model_id": "ran_base-mbf_fast-step3", "dim": 128}))
    with pytest.raises(SystemExit, match="not an adapt embedder"):
        train_adapt.main(["--reexport", str(other), "--config", "adapt_full", "--out", str(tmp_path / "y.onnx")])
    with pytest.raises(SystemExit):
        train_adapt.main(["--reexport", str(first), "--config", "adapt_full", "--out", str(tmp_path / "z.pt")])


def test_view_grid_scores_what_the_reexport_computes(bundle, tmp_path):
    """lrface.training.view_grid's embedding for a grid point equals the file `--reexport` writes for it."""
    from lrface.core.face import read_image, to_model_input
    from lrface.training import view_grid

    root, _ = bundle
    out = tmp_path / "run"
    assert train_adapt.main(["--data", str(root / "data"), "--out", str(out), "--threads", "1", "--batch-size", "4",
                             "--steps", "1"]) == 0
    plain, view = tmp_path / "plain.onnx", tmp_path / "view.onnx"
    for config, dst in (("adapt_handmade_flip_6k", plain), ("adapt_handmade_6k_lrview", view)):
        assert train_adapt.main(["--reexport", str(out / "last.pt"), "--config", config, "--out", str(dst)]) == 0
    dev = tmp_path / "dev"
    rows = ["stem,identity,lr_height,lr_width"]
    for hr in sorted(HR_DIR.rglob("*.jpg")):
        stem = f"{hr.parent.name}/{hr.stem}"
        for sub, src in (("hr", hr), ("lr", LR_DIR / f"{stem}.png")):
            (dev / sub / hr.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dev / sub / f"{stem}{src.suffix}")
        rows.append(f"{stem},{hr.parent.name},0,0")
    (dev / "images.csv").write_text("\n".join(rows) + "\n")
    grid = tmp_path / "grid.json"
    assert view_grid.main(["--model", str(plain), "--data", str(dev), "--weights", "0", "0.35", "--floors", "0",
                           "0.3", "--threads", "1", "--out", str(grid)]) == 0
    assert len(json.loads(grid.read_text())["grid"]) == 4
    half = tmp_path / "half.json"  # one half of the people (by CRC-32 parity): two of the three fixture people
    assert view_grid.main(["--model", str(plain), "--data", str(dev), "--weights", "0", "--floors", "0",
                           "--people", "odd", "--threads", "1", "--out", str(half)]) == 0
    assert json.loads(half.read_text())["images"] == 4

    ckpt = train_adapt.adapt_checkpoint_from_onnx(plain)
    net = train_adapt.build_embedder(train_adapt.AdaptConfig(**ckpt["config"]), ckpt["lr_branch"], ckpt["gate"])
    model = next(m for m in net.modules() if isinstance(m, train_adapt.ModelMR))
    center = next(m for m in net.modules() if isinstance(m, train_adapt.Centred)).center.numpy()
    paths = sorted((dev / "lr").rglob("*.png"))
    parts = view_grid.parts(model, train_adapt.LRView(torch.nn.Identity(), 32, 0.0).view, paths)
    x = to_model_input([read_image(p) for p in paths])
    (emb,) = ort.InferenceSession(str(view), providers=["CPUExecutionProvider"]).run(None, {"face": x})
    np.testing.assert_allclose(view_grid.embedding(parts, center, 0.35, 0.3), emb, atol=1e-4)
    with pytest.raises(SystemExit, match="without an LR view"):
        view_grid.main(["--model", str(view), "--data", str(dev)])


def test_init_from_fine_tunes_an_exported_embedder(bundle, tmp_path):
    """--init-from starts Model_LR and the gate from an export (or a checkpoint); a resume keeps the run's own."""
    root, _ = bundle
    base = tmp_path / "base"
    args = ["--data", str(root / "data"), "--threads", "1", "--batch-size", "4"]
    assert train_adapt.main(args + ["--out", str(base), "--steps", "1"]) == 0
    exported = tmp_path / "base.onnx"
    train_adapt.export_onnx(load_checkpoint(base / "last.pt", "adapt"), exported)
    start = train_adapt.adapt_checkpoint_from_onnx(exported)
    tuned = tmp_path / "tuned"
    assert train_adapt.main(args + ["--out", str(tuned), "--steps", "0", "--init-from", str(exported)]) == 0
    ckpt = load_checkpoint(tuned / "last.pt", "adapt")
    assert str(exported) in ckpt["init_from"] and str(exported) in json.loads((tuned / "run.json").read_text())["init_from"]
    for part in ("lr_branch", "gate"):  # the export's weights, not the teacher's
        for k, v in start[part].items():
            torch.testing.assert_close(ckpt[part][k], v, msg=f"{part}.{k}")
    # a resume trains on from the run's own weights (--init-from does not apply again)
    assert train_adapt.main(args + ["--out", str(tuned), "--steps", "1", "--resume", "--init-from", str(exported)]) == 0
    ckpt = load_checkpoint(tuned / "last.pt", "adapt")
    assert ckpt["step"] == 1 and str(exported) in ckpt["init_from"]
    assert not torch.equal(ckpt["lr_branch"]["resnet.stem.weight"], start["lr_branch"]["resnet.stem.weight"])
    with pytest.raises(SystemExit, match="--init-from .*differs from the weights' config"):
        train_adapt.main(args + ["--out", str(tmp_path / "x"), "--config", "adapt_lr_bicubic", "--steps", "1",
                                 "--init-from", str(exported)])


def test_reexport_joins_runs_into_an_ensemble(bundle, tmp_path):
    """--reexport SRC1 SRC2 with an ensemble config: the mean fused feature of both members (one teacher pass);
    an ensemble of a model with itself is that model; the file's members read back as they went in."""
    from lrface.core.face import read_image, to_model_input

    root, _ = bundle
    args = ["--data", str(root / "data"), "--threads", "1", "--batch-size", "4"]
    for run, seed in (("a", "0"), ("b", "1")):
        assert train_adapt.main(args + ["--out", str(tmp_path / run), "--steps", "1", "--seed", seed]) == 0
    a, b = tmp_path / "a" / "last.pt", tmp_path / "b" / "last.pt"
    single, twin, ens = tmp_path / "single.onnx", tmp_path / "twin.onnx", tmp_path / "ens.onnx"
    assert train_adapt.main(["--reexport", str(a), "--config", "adapt_handmade_6k_lrview", "--out", str(single)]) == 0
    assert train_adapt.main(["--reexport", str(a), str(a), "--config", "adapt_ens2_lrview", "--out", str(twin)]) == 0
    assert train_adapt.main(["--reexport", str(a), str(b), "--config", "adapt_ens2_lrview", "--out", str(ens)]) == 0
    x = to_model_input([read_image(p) for p in sorted(HR_DIR.rglob("*.jpg")) + sorted(LR_DIR.rglob("*.png"))])

    def run(path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"face": x})[0]

    np.testing.assert_allclose(run(twin), run(single), atol=1e-5)
    got = run(ens)
    assert np.abs(got - run(single)).max() > 1e-4  # the second member counts
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # the eager ensemble from both checkpoints gives the file's embeddings
    ca, cb = (load_checkpoint(p, "adapt") for p in (a, b))
    cfg = train_adapt.load_typed_config("adapt_ens2_lrview", train_adapt.AdaptConfig, "t", "an")
    net = train_adapt.build_embedder(cfg, ca["lr_branch"], ca["gate"], more=[cb])
    with torch.no_grad():
        eager = torch.nn.functional.normalize(net(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(eager, got, atol=1e-4)
    # read back from the file: both members, in order; re-exporting them gives the same embeddings
    back = train_adapt.adapt_checkpoint_from_onnx(ens)
    assert len(back["more"]) == 1
    again = tmp_path / "again.onnx"
    assert train_adapt.main(["--reexport", str(ens), "--config", "adapt_ens2_lrview", "--out", str(again)]) == 0
    np.testing.assert_allclose(run(again), got, atol=1e-5)
    # --members picks models out of an ensemble's file: the second alone is run b again
    assert train_adapt.main(["--reexport", str(b), "--config", "adapt_handmade_6k_lrview", "--out", str(single)]) == 0
    picked = tmp_path / "picked.onnx"
    assert train_adapt.main(["--reexport", str(ens), "--members", "2", "--config", "adapt_handmade_6k_lrview",
                             "--out", str(picked)]) == 0
    np.testing.assert_allclose(run(picked), run(single), atol=1e-5)
    with pytest.raises(SystemExit, match="hold 2 model.*numbered 1 to 2"):
        train_adapt.main(["--reexport", str(ens), "--members", "3", "--config", "adapt_handmade_6k_lrview",
                          "--out", str(picked)])
    # float16 weights (adapt_ens4_lrview: fp16_weights): members a, b, a, b make the two-member file's embeddings up
    # to float16 rounding; the exporter stores equal weights once, so both files hold three ResNets, in 2 bytes a
    # weight against 4; the members read back from the float16 file
    half = tmp_path / "half.onnx"
    assert train_adapt.main(["--reexport", str(a), str(b), str(a), str(b), "--config", "adapt_ens4_lrview",
                             "--out", str(half)]) == 0
    assert 0.45 < half.stat().st_size / ens.stat().st_size < 0.55
    np.testing.assert_allclose(run(half), got, atol=2e-3)
    assert train_adapt.main(["--reexport", str(half), "--members", "2", "--config", "adapt_handmade_6k_lrview",
                             "--out", str(picked)]) == 0
    np.testing.assert_allclose(run(picked), run(single), atol=2e-3)
    # the wrong number of members, training an ensemble config, fine-tuning from an ensemble: clear errors
    with pytest.raises(SystemExit, match="takes the weights of 2 model"):
        train_adapt.main(["--reexport", str(a), "--config", "adapt_ens2_lrview", "--out", str(tmp_path / "x.onnx")])
    with pytest.raises(SystemExit, match="ensemble of 2 models: train each member"):
        train_adapt.main(args + ["--out", str(tmp_path / "y"), "--config", "adapt_ens2_lrview", "--steps", "1"])
    with pytest.raises(SystemExit, match="is an ensemble; start from one member"):
        train_adapt.main(args + ["--out", str(tmp_path / "z"), "--steps", "1", "--init-from", str(ens)])


def test_distill_targets_are_the_ensembles_fused_features_and_a_student_trains_on_them(bundle, tmp_path):
    """distill_targets caches an ensemble's fused feature of every LR face and real capture (what its graph computes
    before centring, mirror and view); a distill config trains on them and says which command makes them."""
    from lrface.training import distill_targets

    root, _ = bundle
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)  # the targets are written into the bundle
    args = ["--data", str(data), "--threads", "1", "--batch-size", "4"]
    for run, seed in (("a", "0"), ("b", "1")):
        assert train_adapt.main(args + ["--out", str(tmp_path / run), "--steps", "1", "--seed", seed]) == 0
    ens = tmp_path / "ens.onnx"
    assert train_adapt.main(["--reexport", str(tmp_path / "a" / "last.pt"), str(tmp_path / "b" / "last.pt"),
                             "--config", "adapt_ens2_flip", "--out", str(ens)]) == 0
    student = ["--out", str(tmp_path / "student"), "--config", "adapt_distill_s5", "--steps", "2",
               "--init-from", str(tmp_path / "a" / "last.pt")]
    with pytest.raises(SystemExit, match="lacks.*ensemble_handmade.npy.*distill_targets --model MODEL"):
        train_adapt.main(args + student)

    assert distill_targets.main(["--model", str(ens), "--data", str(data), "--threads", "1", "--batch", "4"]) == 0
    bundle_now = adapt_data.load(data)
    assert bundle_now["ensemble_handmade"].shape == (7, 128) and bundle_now["ensemble_real"].shape == (6, 128)
    assert bundle_now["meta"]["distill"]["ensemble"]["members"] == 2
    assert not list(data.glob("*.partial.*"))
    members = [train_adapt.Member(lr, gate) for lr, gate in distill_targets.members_of(ens)]
    graph = train_adapt.EnsembleMR(train_adapt.DlibFaceModel.from_dat(), members).eval()
    for images, got in (("lr_handmade", "ensemble_handmade"), ("real_lr", "ensemble_real")):
        x = torch.from_numpy(np.array(bundle_now[images])).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            np.testing.assert_allclose(bundle_now[got], graph(x).numpy(), atol=1e-4)

    other = tmp_path / "a" / "last.pt"  # targets of another model under the same name are refused, not mixed
    with pytest.raises(SystemExit, match="already holds targets named 'ensemble' from another model"):
        distill_targets.main(["--model", str(other), "--data", str(data), "--threads", "1"])

    assert train_adapt.main(args + student) == 0
    ckpt = load_checkpoint(tmp_path / "student" / "last.pt", "adapt")
    assert ckpt["step"] == 2 and ckpt["config"]["distill_targets"] == "ensemble"
    rows = (tmp_path / "student" / "metrics.csv").read_text().strip().splitlines()
    header = rows[0].split(",")
    assert all(float(r.split(",")[header.index("real_distill")]) > 0 for r in rows[1:])
    np.save(data / "ensemble_real.npy", np.zeros((2, 128), np.float32))  # rows that are not the bundle's captures
    with pytest.raises(SystemExit, match="ensemble_real do not match its faces"):
        train_adapt.main(args + student + ["--steps", "3"])
