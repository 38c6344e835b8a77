"""GET /: the web demo, a plain HTML page (and its script and style under /demo/) that calls only the public API."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

DEMO_DIR = Path(__file__).resolve().parents[1] / "demo"
DEMO_PREFIX = "/demo"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def demo_page() -> FileResponse:
    return FileResponse(DEMO_DIR / "index.html", media_type="text/html")


def demo_assets() -> StaticFiles:
    return StaticFiles(directory=DEMO_DIR)
