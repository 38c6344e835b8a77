"""Experiments as configs: `lrface/training/configs/NAME.py` defines `config`, usually a few fields changed from a base."""
from __future__ import annotations

import importlib
import re


def load_config(name: str):
    """The `config` object of lrface/training/configs/NAME.py (NAME may also be given as a path ending in NAME.py)."""
    name = re.sub(r"\.py$", "", name.replace("\\", "/").rsplit("/", 1)[-1])
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise ValueError(f"bad config name {name!r}")
    try:
        module = importlib.import_module(f"lrface.training.configs.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"lrface.training.configs.{name}":
            raise ValueError(f"no config named {name!r} in lrface/training/configs") from None
        raise
    return module.config
