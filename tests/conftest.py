"""Shared test fixtures: the checked-in face images and the shipped ONNX models.

Model tests use the shipped weights (`lrface/models/weights/{mrgan,embedder}.onnx`) and are skipped while those
files are missing. To run them against other contract-conforming models (e.g. dev placeholders), point
LRFACE_TEST_WEIGHTS_DIR at a folder holding mrgan.onnx / embedder.onnx and their .json sidecars.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from lrface.core.onnx_model import default_model_path

FIXTURES = Path(__file__).parent / "fixtures"
HR_DIR = FIXTURES / "hr"  # 6 aligned HR faces of 3 dev identities (112x96 JPEG)
LR_DIR = FIXTURES / "lr"  # their real LR captures (same stems)
IMAGES_CSV = FIXTURES / "images.csv"  # dev/images.csv rows of those stems


def _model_path(name: str) -> Path:
    override = os.environ.get("LRFACE_TEST_WEIGHTS_DIR")
    path = Path(override) / f"{name}.onnx" if override else default_model_path(name)
    if not path.is_file() or not path.with_suffix(".json").is_file():
        pytest.skip(f"{name} weights not found at {path} (+ .json): the shipped lrface/models/weights/{name}.onnx is "
                    f"not in the tree yet; set LRFACE_TEST_WEIGHTS_DIR to test other weights")
    return path


@pytest.fixture(scope="session")
def mrgan_path() -> Path:
    return _model_path("mrgan")


@pytest.fixture(scope="session")
def embedder_path() -> Path:
    return _model_path("embedder")


@pytest.fixture(scope="session")
def synthesizer(mrgan_path):
    from lrface.core.synthesizer import Synthesizer

    return Synthesizer(mrgan_path, threads=1)


@pytest.fixture(scope="session")
def embedder(embedder_path):
    from lrface.core.embedder import Embedder

    return Embedder(embedder_path, threads=1)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`):
    on a small shared CPU, OpenMP threads spinning against other processes cost far more."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def server(request, tmp_path_factory, mrgan_path, embedder_path):
    """`lrface serve` for one test module, started once and stopped after the module's last test.

    The module configures it with module-level names:
    - `SERVER_ENV`: LRFACE_* settings for the server (dict);
    - `SERVER_ON_TEST_REDIS` (default True): the test Redis as broker and job store, under a namespace of the
      module's own (removed afterwards; the module is skipped without that Redis); False: the embedded broker;
    - `prepare_server(tmp)`: writes the module's inputs (under `tmp / "data"`, the data root) before the start.
    Yields the `Server`, with `.tmp`, `.env` (its environment), `.redis` (a client of the test Redis, or None) and `.prefix` set.
    """
    from service_helpers import served

    module = request.module
    tmp = tmp_path_factory.mktemp(module.__name__.rpartition(".")[2].removeprefix("test_"))
    prepare = getattr(module, "prepare_server", None)
    if prepare is not None:
        prepare(tmp)
    with served(tmp, mrgan_path, embedder_path, on_test_redis=getattr(module, "SERVER_ON_TEST_REDIS", True),
                **getattr(module, "SERVER_ENV", {})) as srv:
        yield srv
