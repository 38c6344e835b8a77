"""An exported graph's weights read back into the torch module it was exported from (same architecture): the
eager twin of a shipped ONNX file (bench/torch_models.py) and `lrface train-adapt --reexport` of an exported
embedder whose checkpoint is gone."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from lrface.core.files import write_atomic


def module_name(node_name: str) -> str:
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
        if node.op_type == "Cast" and node.input[0] in inits:  # weights stored in float16 (store_weights_fp16)
            inits.setdefault(node.output[0], inits[node.input[0]].astype(np.float32))
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
            linear = modules.get(module_name(node.name))
            if isinstance(linear, nn.Linear):
                put(f"{module_name(node.name)}.weight", np.ascontiguousarray(inits[node.input[1]].T))
    for node in graph.node:
        if node.op_type != "Conv" or node.input[1] not in inits or node.input[1] in state:
            continue
        name = module_name(node.name)
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


FP16_SUFFIX = "__fp16"


def store_weights_fp16(onnx_path: str | Path, min_elements: int = 1024) -> int:
    """Store the float32 weights of an exported graph (initializers of at least `min_elements` entries whose values
    float16 holds) as float16, each followed by a Cast back to float32 under its old name: the file halves, the
    arithmetic stays float32 (onnxruntime folds the casts when it loads the graph). Rewrites the file in place;
    returns how many weights it converted. `load_onnx_weights` reads such a file back."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path))
    graph = model.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            continue
        value = numpy_helper.to_array(init)
        if not np.all(np.abs(value) <= np.finfo(np.float16).max):
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(value.astype(np.float16), name + FP16_SUFFIX))
        casts.append(helper.make_node("Cast", [name + FP16_SUFFIX], [name], name=f"{name}{FP16_SUFFIX}/Cast",
                                      to=TensorProto.FLOAT))
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    write_atomic(onnx_path, model.SerializeToString())
    return len(casts)
