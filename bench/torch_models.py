"""The shipped ONNX networks rebuilt in eager torch, for the onnxruntime-vs-torch comparison.

From a training checkpoint (`kind` mrgan / ran / embedder), exactly as `lrface export` builds the module it
exports (lrface/training/export.py, lrface/training/train_ran.py, lrface/training/train_embedder.py). Without a checkpoint, from the
ONNX file itself: the architecture from the sidecar (an MR-GAN's `config`; an embedder's `model_id`, e.g.
`ran_base-mbf_fast-step324`), the weights from the graph's initializers (`load_onnx_weights`), so the torch twin
computes the same function as the shipped file (the parity column shows it).
"""
from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import torch
from torch import nn

from lrface.training.onnx_weights import load_onnx_weights, module_name as _module_name  # noqa: F401


def _embedding(net: nn.Module) -> nn.Module:
    from lrface.training.train_embedder import NormalisedEmbedding

    return NormalisedEmbedding(net).eval()


def load_eager(onnx_path: str | Path, ckpt_path: str | Path | None, what: str) -> tuple[nn.Module | None, str]:
    """(module in eval mode on the CPU, how it was built) or (None, why not)."""
    if ckpt_path is not None:
        ckpt = torch.load(str(ckpt_path), map_location="cpu", weights_only=True)
        kind = ckpt.get("kind")
        if kind == "mrgan":
            from lrface.training.export import mrgan_export_module

            return mrgan_export_module(ckpt), f"checkpoint {ckpt_path} (mrgan, step {ckpt.get('step')})"
        if kind == "ran":
            from lrface.training.configs.ran_base import RANConfig
            from lrface.training.train_ran import build_model_mr

            model = build_model_mr(RANConfig(**ckpt["config"]), ckpt["branches"])
            model.load_state_dict(ckpt["model"])
            return _embedding(model), f"checkpoint {ckpt_path} (ran, step {ckpt.get('step')})"
        if kind == "adapt":
            from lrface.training.configs.adapt_full import AdaptConfig
            from lrface.training.train_adapt import build_embedder

            net = build_embedder(AdaptConfig(**ckpt["config"]), ckpt["lr_branch"], ckpt.get("gate"))
            return _embedding(net), f"checkpoint {ckpt_path} (adapt, step {ckpt.get('step')})"
        if kind == "embedder":
            from lrface.models.backbones import get_model

            cfg = ckpt["config"]
            net = get_model(cfg["network"], embedding_dim=cfg["embedding_dim"])
            net.load_state_dict(ckpt["model"])
            return _embedding(net), f"checkpoint {ckpt_path} (embedder {cfg['network']}, step {ckpt.get('step')})"
        raise ValueError(f"{ckpt_path}: unknown checkpoint kind {kind!r}")
    sidecar = Path(onnx_path).with_suffix(".json")
    meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    if what == "mrgan" and isinstance(meta.get("config"), dict):
        from lrface.models.mrgan import LRGenerator, build_generator, config_from_dict

        module = LRGenerator(build_generator(config_from_dict(meta["config"])))
    elif what == "embedder":
        module = _embedder_from_model_id(str(meta.get("model_id", "")), int(meta.get("dim", 0)))
        if module is None:
            return None, (f"no checkpoint given (--embedder-ckpt) and {sidecar.name}'s model_id "
                          f"{meta.get('model_id')!r} does not name a RAN architecture (<ran config>-<network>-step<N>)")
    else:
        return None, f"no checkpoint given (--{what}-ckpt) and {sidecar.name} does not describe the architecture"
    unused = load_onnx_weights(module, onnx_path)
    note = f"; {len(unused)} parameters unused by the graph left as initialised" if unused else ""
    return module.eval(), f"weights of {Path(onnx_path).name} (its initializers, no checkpoint given{note})"


def _embedder_from_model_id(model_id: str, dim: int) -> nn.Module | None:
    """The RAN embedder (untrained) that `train_ran` exports under this model_id: both branches of the named network."""
    adapt = _adapt_embedder_from_model_id(model_id)
    if adapt is not None:
        return adapt
    m = re.fullmatch(r"(ran_[a-z0-9_]+?)-([a-z0-9_]+)-step\d+", model_id)
    if m is None or dim < 1:
        return None
    try:
        cfg = importlib.import_module(f"lrface.training.configs.{m[1]}").config
    except ImportError:
        return None
    from lrface.models.backbones import get_model
    from lrface.models.ran import ModelMR

    net = ModelMR(get_model(m[2], embedding_dim=dim), get_model(m[2], embedding_dim=dim), dim,
                  cfg.translator_hidden, cfg.discriminator_hidden)
    return _embedding(net)


def _adapt_embedder_from_model_id(model_id: str) -> nn.Module | None:
    """The dlib-based embedders (`lrface.training.train_adapt`): `<adapt config>-dlib_resnet-step<N>` or dlib alone."""
    from lrface.models.dlib_resnet import DlibFaceModel

    if model_id == "dlib_resnet_v1-chipwarp":
        return _embedding(DlibFaceModel())
    if model_id == "dlib_resnet_v1-chipwarp-centred":
        from lrface.training.train_adapt import Centred

        return _embedding(Centred(DlibFaceModel()))
    from lrface.training.train_adapt import build_embedder, parse_model_id

    parsed = parse_model_id(model_id)
    return None if parsed is None else _embedding(build_embedder(parsed[0], pretrained=False))
