"""The shipped ONNX networks rebuilt in eager torch, for the onnxruntime-vs-torch comparison.

From a training checkpoint (`kind` mrgan / ran / embedder), exactly as `lrface export` builds the module it
exports (training/export.py, training/train_ran.py, training/train_embedder.py). Without a checkpoint, an
MR-GAN is rebuilt from its sidecar's `config` with untrained weights: the same layers and the same cost, just
not the same numbers (reported as such). An embedder sidecar does not name its architecture, so an embedder
needs its checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn


def _embedding(net: nn.Module) -> nn.Module:
    from training.train_embedder import NormalisedEmbedding

    return NormalisedEmbedding(net).eval()


def load_eager(onnx_path: str | Path, ckpt_path: str | Path | None, what: str) -> tuple[nn.Module | None, str]:
    """(module in eval mode on the CPU, how it was built) or (None, why not)."""
    if ckpt_path is not None:
        ckpt = torch.load(str(ckpt_path), map_location="cpu", weights_only=True)
        kind = ckpt.get("kind")
        if kind == "mrgan":
            from training.export import mrgan_export_module

            return mrgan_export_module(ckpt), f"checkpoint {ckpt_path} (mrgan, step {ckpt.get('step')})"
        if kind == "ran":
            from training.configs.ran_base import RANConfig
            from training.train_ran import build_model_mr

            model = build_model_mr(RANConfig(**ckpt["config"]), ckpt["branches"])
            model.load_state_dict(ckpt["model"])
            return _embedding(model), f"checkpoint {ckpt_path} (ran, step {ckpt.get('step')})"
        if kind == "embedder":
            from models.backbones import get_model

            cfg = ckpt["config"]
            net = get_model(cfg["network"], embedding_dim=cfg["embedding_dim"])
            net.load_state_dict(ckpt["model"])
            return _embedding(net), f"checkpoint {ckpt_path} (embedder {cfg['network']}, step {ckpt.get('step')})"
        raise ValueError(f"{ckpt_path}: unknown checkpoint kind {kind!r}")
    sidecar = Path(onnx_path).with_suffix(".json")
    meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    if what == "mrgan" and isinstance(meta.get("config"), dict):
        from models.mrgan import LRGenerator, build_generator, config_from_dict

        torch.manual_seed(0)
        gen = build_generator(config_from_dict(meta["config"]))
        return LRGenerator(gen).eval(), f"untrained weights from {sidecar.name}'s config (no checkpoint given)"
    return None, f"no checkpoint given (--{what}-ckpt) and {sidecar.name} does not describe the architecture"
