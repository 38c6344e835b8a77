"""lrface benchmarks: `python -m bench.run` (or `lrface bench`) runs them all and writes bench/RESULTS.md.

Every script prints a Markdown table, writes JSON under bench/results/ (bench/results/quick/ with --quick) and
takes `--mrgan PATH --embedder PATH` (default: the shipped lrface/models/weights/*.onnx).
"""
