"""The `lrface` command line: one entry point that dispatches to the module owning each command.

Each command module exposes `main(argv: list[str]) -> int` with its own argparse parser, so
`lrface augment --help` is answered by the augmentation module itself. Modules are imported only
when their command runs, so the inference commands never import torch.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "augment": ("lrface.service.offline", "write K realistic LR variants of every face under a folder"),
    "synth": ("lrface.service.offline", "write K realistic LR variants of one face image"),
    "embed": ("lrface.service.offline", "embed every face under a folder into an .npz file"),
    "serve": ("lrface.service.server", "run the HTTP API (and an embedded worker + broker when none is configured)"),
    "worker": ("lrface.service.server", "run a Celery worker against the configured broker"),
    "train-mrgan": ("lrface.training.train_mrgan", "train MR-GAN (Algorithm 1) [needs lrface[train]]"),
    "train-embedder": ("lrface.training.train_embedder", "train an HR / LR face model [needs lrface[train]]"),
    "train-ran": ("lrface.training.train_ran", "train the feature adaption network (Algorithm 2) [needs lrface[train]]"),
    "train-adapt": ("lrface.training.train_adapt", "adapt dlib's pretrained ResNet to LR faces (Algorithm 2 with a "
                    "pretrained Model_HR) [needs lrface[train]]"),
    "export": ("lrface.training.export", "export a checkpoint to ONNX [needs lrface[train]]"),
    "realism": ("lrface.training.realism", "two-sample test: how distinguishable two folders of LR faces are [needs lrface[train]]"),
    "eval": ("lrface.training.evaluate", "verification / identification metrics of an embedder on a dev-style folder"),
    "bench": ("bench.run", "run the benchmarks (from a source checkout)"),
}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: lrface COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {c.ljust(width)}  {h}" for c, (_, h) in COMMANDS.items()]
    lines += ["", "`lrface COMMAND --help` describes a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"lrface: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, _ = COMMANDS[command]
    if module_name.startswith("bench."):
        # bench/ is not part of the installed package; it runs from a source checkout
        root = Path(__file__).resolve().parents[2]
        if (root / "bench" / "run.py").is_file() and str(root) not in sys.path:
            sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name in ("torch", "onnx", "matplotlib"):
            print(f"lrface {command}: needs the training extra: pip install 'lrface[train]' ({exc.name} is missing)", file=sys.stderr)
            return 2
        raise
    entry = getattr(module, "main_" + command.replace("-", "_"), None) or module.main
    return int(entry(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
