"""`lrface export CKPT OUT.onnx`: a training checkpoint to an ONNX model + JSON sidecar, dispatched on the checkpoint's kind.

    mrgan     -> inputs face [N,3,112,96], z [N,Z], scale [N,1], noise [N,3,112,96] (absent when the config has no
                 sensor stage); output lr [N,3,112,96], the capture in its top-left h x w corner (docs/ARCHITECTURE.md)
    embedder  -> lrface.training.train_embedder.export_onnx(ckpt, out_path)
    ran       -> lrface.training.train_ran.export_onnx(ckpt, out_path)
    adapt     -> lrface.training.train_adapt.export_onnx(ckpt, out_path)
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from lrface.core.face import FACE_HEIGHT, FACE_WIDTH, LR_MAX_HEIGHT, LR_MIN_HEIGHT
from lrface.models.mrgan import LRGenerator, SensorStage, build_generator, config_from_dict

OPSET = 17
# other kinds live with the code that trains them: kind -> module with export_onnx(ckpt_dict, out_path)
EXPORTERS = {"embedder": "lrface.training.train_embedder", "ran": "lrface.training.train_ran", "adapt": "lrface.training.train_adapt"}


def load_checkpoint(path: str | os.PathLike) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def mrgan_model_id(ckpt: dict) -> str:
    name = ckpt["config"].get("name", "mrgan")
    short = name[len("mrgan_"):] if name.startswith("mrgan_") else name
    return f"mrgan-{short}-{ckpt['step']}"


def mrgan_export_module(ckpt: dict) -> LRGenerator:
    """The checkpoint's generator behind the export wrapper (returns lr only), in eval mode on the CPU."""
    generator = build_generator(config_from_dict(ckpt["config"]))
    generator.load_state_dict(ckpt["generator"])
    return LRGenerator(generator).eval()


def export_mrgan(ckpt: dict, out_path: str | os.PathLike) -> dict:
    """Write the MR-GAN generator as ONNX (contract in docs/ARCHITECTURE.md) and OUT.json; returns the sidecar."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cfg = ckpt["config"]
    module = mrgan_export_module(ckpt)
    example = (torch.zeros(2, 3, FACE_HEIGHT, FACE_WIDTH), torch.zeros(2, cfg["z_dim"]), torch.full((2, 1), 0.25),
               torch.zeros(2, SensorStage.NOISE_CHANNELS, FACE_HEIGHT, FACE_WIDTH))
    tmp = out_path.with_name(out_path.name + ".tmp")
    # a generator without the sensor stage never reads `noise`, and the exporter drops that input
    kwargs = dict(input_names=["face", "z", "scale", "noise"], output_names=["lr"], opset_version=OPSET,
                  dynamic_axes={"face": {0: "N"}, "z": {0: "N"}, "scale": {0: "N"}, "noise": {0: "N"}, "lr": {0: "N"}},
                  do_constant_folding=True)
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated in favour of dynamo, and InstanceNorm reports training mode
        # (it has no running statistics, so eval and train compute the same thing)
        warnings.simplefilter("ignore")
        with torch.no_grad():
            try:
                torch.onnx.export(module, example, str(tmp), dynamo=False, **kwargs)
            except TypeError:  # a torch without the `dynamo` argument has only the classic exporter
                torch.onnx.export(module, example, str(tmp), **kwargs)
    _fix_output_shape(tmp, [3, FACE_HEIGHT, FACE_WIDTH])
    os.replace(tmp, out_path)
    sidecar = {
        "model_id": mrgan_model_id(ckpt),
        "z_dim": int(cfg["z_dim"]),
        "height_range": [LR_MIN_HEIGHT, LR_MAX_HEIGHT],
        "height_values": [int(h) for h in ckpt["height_values"]],
        "height_weights": [float(w) for w in ckpt["height_weights"]],
        "step": int(ckpt["step"]),
        "opset": OPSET,
        "config": cfg,
    }
    json_path = out_path.with_suffix(".json")
    tmp_json = json_path.with_name(json_path.name + ".tmp")
    tmp_json.write_text(json.dumps(sidecar, indent=2) + "\n")
    os.replace(tmp_json, json_path)
    return sidecar


def _fix_output_shape(path: Path, dims: list[int]) -> None:
    """The tracer leaves the output's non-batch dims symbolic; write the fixed ones so consumers see [N,3,112,96]."""
    import onnx

    model = onnx.load(str(path))
    shape = model.graph.output[0].type.tensor_type.shape
    for dim, value in zip(list(shape.dim)[1:], dims):
        dim.Clear()
        dim.dim_value = value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def random_mrgan_inputs(batch: int, z_dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "face": rng.uniform(-1, 1, (batch, 3, FACE_HEIGHT, FACE_WIDTH)).astype(np.float32),
        "z": rng.standard_normal((batch, z_dim)).astype(np.float32),
        "scale": rng.integers(LR_MIN_HEIGHT, LR_MAX_HEIGHT + 1, (batch, 1)).astype(np.float32) / FACE_HEIGHT,
        "noise": rng.standard_normal((batch, SensorStage.NOISE_CHANNELS, FACE_HEIGHT, FACE_WIDTH)).astype(np.float32),
    }


def verify_onnx_parity(torch_module: torch.nn.Module, onnx_path: str | os.PathLike, inputs: dict[str, np.ndarray]) -> float:
    """Max |torch - onnxruntime| over the first output, feeding both the same inputs (ONNX gets those its graph
    names; torch gets all of them, in order, when the graph dropped an unused one)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    onnx_out = session.run(None, {n: inputs[n] for n in names})[0]
    with torch.no_grad():
        torch_out = torch_module(*[torch.from_numpy(v) for v in inputs.values()])
    if isinstance(torch_out, dict):
        torch_out = torch_out[session.get_outputs()[0].name]
    elif isinstance(torch_out, (tuple, list)):
        torch_out = torch_out[0]
    return float(np.abs(torch_out.float().numpy() - onnx_out).max())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lrface export", description=__doc__.split("\n\n")[0])
    p.add_argument("ckpt", help="a training checkpoint (last.pt)")
    p.add_argument("out", help="OUT.onnx; the sidecar goes to OUT.json")
    p.add_argument("--no-verify", action="store_true", help="skip the torch vs onnxruntime parity check")
    args = p.parse_args(argv)
    ckpt = load_checkpoint(args.ckpt)
    kind = ckpt.get("kind")
    if kind == "mrgan":
        sidecar = export_mrgan(ckpt, args.out)
        print(f"export: {args.out} ({sidecar['model_id']}) and {Path(args.out).with_suffix('.json')}")
        if not args.no_verify:
            module = mrgan_export_module(ckpt)
            worst = max(verify_onnx_parity(module, args.out, random_mrgan_inputs(n, sidecar["z_dim"], seed=n)) for n in (1, 3))
            print(f"export: parity torch vs onnxruntime, max abs diff {worst:.2e}")
            if worst > 1e-4:
                print("export: parity check FAILED (> 1e-4)", file=sys.stderr)
                return 1
        return 0
    if kind in EXPORTERS:
        importlib.import_module(EXPORTERS[kind]).export_onnx(ckpt, args.out)
        print(f"export: {args.out} ({kind})")
        return 0
    print(f"export: {args.ckpt} has unknown kind {kind!r} (expected mrgan, embedder or ran)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
