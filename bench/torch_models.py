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

import numpy as np
import torch
from torch import nn


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
    m = re.fullmatch(r"(adapt_[a-z0-9_]+?)-dlib_resnet-step\d+", model_id)
    if m is None:
        return None
    try:
        cfg = importlib.import_module(f"lrface.training.configs.{m[1]}").config
    except ImportError:
        return None
    from lrface.training.train_adapt import build_embedder

    return _embedding(build_embedder(cfg, pretrained=False))


def _module_name(node_name: str) -> str:
    """'/net/hr_branch/blocks/blocks.0/block/block.0/block.0.0/Conv' -> 'net.hr_branch.blocks.0.block.0.0'
    (the exporter's scope names repeat the parent's name before each child index)."""
    parts, prev = [], None
    for comp in node_name.strip("/").split("/")[:-1]:
        parts.append(comp[len(prev) + 1:] if prev is not None and comp.startswith(prev + ".") else comp)
        prev = comp
    return ".".join(parts)


@torch.no_grad()
def load_onnx_weights(module: nn.Module, onnx_path: str | Path) -> list[str]:
    """Copy an exported graph's weights into the module it was exported from (same architecture).

    Initializers named like state-dict entries are copied as they are. Convolutions that the exporter merged
    with their batch norm (anonymous initializers) get the merged kernel, and the batch norm after them becomes
    an exact pass-through that adds the merged bias (mean 0, variance 1 - eps, scale 1). Raises ValueError when
    a shape differs. Returns the entries the graph has no value for: parameters that no exported output
    depends on, which the exporter drops (the MR-GAN's last fusion stage feeds only the finest stream)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:  # equal weights are stored once; the others are Identity nodes of that one
        if node.op_type == "Identity" and node.input[0] in inits:
            inits.setdefault(node.output[0], inits[node.input[0]])
    state = module.state_dict(keep_vars=True)
    modules = dict(module.named_modules())
    done: set[str] = set()

    def put(key: str, value) -> None:
        target = state[key]
        value = value.detach().clone() if isinstance(value, torch.Tensor) else torch.from_numpy(np.array(value))
        value = value.to(target.dtype)
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(f"{key}: the graph has shape {tuple(value.shape)}, the module {tuple(target.shape)}")
        target.copy_(value)
        done.add(key)

    for name, value in inits.items():
        if name in state:
            put(name, value)
    for node in graph.node:  # bias-free Linear layers are exported as MatMul with the transposed weight
        if node.op_type == "MatMul" and node.input[1] in inits and node.input[1] not in state:
            linear = modules.get(_module_name(node.name))
            if isinstance(linear, nn.Linear):
                put(f"{_module_name(node.name)}.weight", np.ascontiguousarray(inits[node.input[1]].T))
    for node in graph.node:
        if node.op_type != "Conv" or node.input[1] not in inits or node.input[1] in state:
            continue
        name = _module_name(node.name)
        conv = modules.get(name)
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"graph node {node.name} does not map to a Conv2d of the module (got {name!r})")
        put(f"{name}.weight", inits[node.input[1]])
        bias = inits[node.input[2]] if len(node.input) > 2 and node.input[2] else None
        if bias is None:
            continue
        if conv.bias is not None:
            put(f"{name}.bias", bias)
            continue
        parent, _, index = name.rpartition(".")
        bn_name = f"{parent}.{int(index) + 1}" if index.isdigit() else ""
        bn = modules.get(bn_name)
        if not isinstance(bn, nn.BatchNorm2d):
            raise ValueError(f"{node.name}: a merged bias but no batch norm after {name}")
        put(f"{bn_name}.weight", torch.ones_like(bn.weight))
        put(f"{bn_name}.bias", bias)
        put(f"{bn_name}.running_mean", torch.zeros_like(bn.running_mean))
        put(f"{bn_name}.running_var", torch.full_like(bn.running_var, 1.0 - bn.eps))
    return [k for k in state if k not in done and not k.endswith("num_batches_tracked")]
