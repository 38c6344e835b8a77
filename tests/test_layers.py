"""The import direction of docs/ARCHITECTURE.md: `lrface.core` (torch-free) at the bottom, `lrface.service` (API, jobs,
tasks, CLI) on it, `lrface.training` (torch) on top; nothing below imports what is above it.

Checked twice: statically (every import statement of every module, module level or inside a function) and by
importing the service's entry points in a fresh interpreter and looking at what got loaded.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import lrface

PACKAGE = Path(lrface.__file__).resolve().parent

# package prefix -> prefixes none of its modules may import (torch: the core and the service run on onnxruntime)
FORBIDDEN = {
    "lrface.core": ("lrface.service", "lrface.training", "torch", "lrface.client"),
    "lrface.service": ("lrface.training", "torch"),
    "lrface.client": ("lrface.service", "lrface.training", "lrface.core", "torch"),
    # lrface.models: the network definitions (torch, used by training only) and the shipped weights
    "lrface.models": ("lrface.service", "lrface.training"),
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) of every import statement in the file, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.append((node.lineno, base))
            # `from lrface import training` imports lrface.training
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*"]
    return found


def _check(path: Path, module: str) -> list[str]:
    bad = []
    for layer, forbidden in FORBIDDEN.items():
        if module != layer and not module.startswith(layer + "."):
            continue
        for line, imported in _imports(path, module):
            for prefix in forbidden:
                if imported == prefix or imported.startswith(prefix + "."):
                    bad.append(f"{path}:{line}: {module} imports {imported}")
    return bad


def _violations() -> list[str]:
    return [v for path in sorted(PACKAGE.rglob("*.py")) for v in _check(path, _module_name(path))]


def test_every_module_is_under_the_one_lrface_namespace():
    # nothing importable lives beside the package: the old top-level packages are gone from the source tree
    root = PACKAGE.parent
    for old in ("service", "models", "training"):
        assert not (root / old / "__init__.py").exists(), f"{old}/ is a top-level package again"


def test_no_module_imports_a_layer_above_it():
    assert _violations() == []


@pytest.mark.parametrize("source", ["from lrface.training import evaluate", "import lrface.training.evaluate",
                                    "from ..training.evaluate import main", "import torch"])
def test_the_checker_sees_a_forbidden_import(tmp_path, source):
    # a service module importing training (or torch), at module level or lazily inside a function, is caught
    probe = tmp_path / "probe.py"
    probe.write_text(f"def handler():\n    {source}\n")
    assert _check(probe, "lrface.service.probe"), source
    assert _check(probe, "lrface.training.probe") == [] or source == "import torch"


@pytest.mark.parametrize("modules", [
    "lrface.service.cli, lrface.service.offline, lrface.service.server",
    "lrface.service.api.app, lrface.service.tasks, lrface.service.jobs.lifecycle, lrface.service.jobs.recovery",
    "lrface.core.augment, lrface.core.embed, lrface.core.detect, lrface.client",
])
def test_the_service_entry_points_load_neither_training_nor_torch(modules):
    code = (f"import sys, {modules}; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m.startswith('lrface.training')); "
            "sys.exit(f'loaded: {bad}' if bad else 0)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
