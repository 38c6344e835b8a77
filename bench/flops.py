"""FLOPs per image of an ONNX graph: Conv, ConvTranspose, Gemm and MatMul nodes, shapes at batch 1.

FLOPs = 2 x multiply-adds; elementwise ops, normalisations, pooling and resizes are not counted (they are
memory-bound and a few percent of the total for these networks). Shapes come from `onnx.shape_inference`
with every dynamic batch dimension pinned to 1; any tensor it leaves unshaped is measured by running the
graph once in onnxruntime with that tensor exposed as an output.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

COUNTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _shape_of(value_info) -> list[int] | None:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = []
    for d in t.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            return None
    return dims


def _pin_batch(model, batch: int = 1):
    """Copy of the model with every symbolic / unknown input and output dimension 0 set to `batch`."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    init_names = {i.name for i in model.graph.initializer}
    for vi in list(model.graph.input) + list(model.graph.output):
        if vi.name in init_names:
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            dims[0].Clear()
            dims[0].dim_value = batch
    return model


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            import onnx

            return onnx.helper.get_attribute_value(a)
    return default


def _measure_shapes(model, names: list[str]) -> dict[str, list[int]]:
    """Run the graph once at batch 1 with `names` exposed as outputs; their actual shapes."""
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto.FromString(model.SerializeToString())
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        dtype = np.float32 if "float" in i.type else np.int64
        feed[i.name] = np.full(shape, 0.25, dtype=dtype)
    outs = sess.run(names, feed)
    return {n: list(o.shape) for n, o in zip(names, outs)}


def count_flops(onnx_path: str | Path) -> dict:
    """{"flops": total per image, "by_op": {op: flops}, "nodes": {op: count}, "shape_source": ...}."""
    import onnx

    model = onnx.load(str(onnx_path))
    pinned = _pin_batch(model, 1)
    inferred = onnx.shape_inference.infer_shapes(pinned, data_prop=True)
    shapes: dict[str, list[int] | None] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        shapes[vi.name] = _shape_of(vi)
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    nodes = [n for n in inferred.graph.node if n.op_type in COUNTED_OPS]
    needed = {name for n in nodes for name in list(n.input[:2]) + [n.output[0]] if name}
    missing = sorted(n for n in needed if shapes.get(n) is None)
    measured = 0
    if missing:
        shapes.update(_measure_shapes(pinned, missing))
        measured = len(missing)
    by_op: Counter = Counter()
    count: Counter = Counter()
    for n in nodes:
        out = shapes[n.output[0]]
        w = shapes[n.input[1]]
        if n.op_type == "Conv":
            # out [N, Cout, *spatial], w [Cout, Cin/groups, *kernel]
            macs = int(np.prod(out)) * int(np.prod(w[1:]))
        elif n.op_type == "ConvTranspose":
            # every input pixel scatters a kernel: in [N, Cin, *spatial], w [Cin, Cout/groups, *kernel]
            x = shapes[n.input[0]]
            macs = int(np.prod(x)) * int(np.prod(w[1:]))
        elif n.op_type == "Gemm":
            a = shapes[n.input[0]]
            k = a[0] if _attr(n, "transA", 0) else a[1]
            macs = int(np.prod(out)) * int(k)
        else:  # MatMul: out [..., M, N], inner dim = last of A
            a = shapes[n.input[0]]
            macs = int(np.prod(out)) * int(a[-1])
        by_op[n.op_type] += 2 * macs
        count[n.op_type] += 1
    params = int(sum(int(np.prod(i.dims)) for i in model.graph.initializer))
    return {"model": str(onnx_path), "flops": int(sum(by_op.values())), "by_op": dict(by_op), "nodes": dict(count),
            "parameters": params, "shapes_measured_by_ort": measured}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.flops", description=__doc__.split("\n\n")[0])
    p.add_argument("onnx", nargs="+")
    args = p.parse_args(argv)
    for path in args.onnx:
        r = count_flops(path)
        print(json.dumps({**r, "gflops": r["flops"] / 1e9}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
