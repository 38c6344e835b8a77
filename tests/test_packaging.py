"""What `pip install .` ships: the `lrface` package with its client, and the web demo's files as package data."""
from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from service_helpers import REPO

pytestmark = [pytest.mark.slow]


def test_the_wheel_ships_the_client_and_the_demo(tmp_path):
    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO),
                            "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("lrface-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "site")
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert {"lrface/__init__.py", "lrface/client.py", "lrface/service/api/demo/index.html", "lrface/service/api/demo/demo.js",
            "lrface/service/api/demo/demo.css"} <= names
    # one top-level package, lrface (no generic `models`, `service` or `training` beside it), with its package data
    assert {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")} == {"lrface"}
    assert {"lrface/models/weights/mrgan.onnx", "lrface/models/weights/embedder.json", "lrface/models/weights/embedder.md",
            "lrface/training/configs/adapt_full.py", "lrface/core/face.py"} <= names
    assert "lrface = lrface.service.cli:main" in entry_points
    # Imported from the unpacked wheel alone (not from the source tree): the client and the demo page are there.
    code = ("import lrface.client, lrface.service.api.routes.demo as demo; from lrface.client import Client, AsyncClient; "
            "assert (demo.DEMO_DIR / 'index.html').is_file(); print(lrface.client.__file__, demo.DEMO_DIR)")
    run = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(tmp_path / 'site')!r}); {code}"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert all(part.startswith(str(tmp_path / "site")) for part in run.stdout.split())
