"""The HTTP API (FastAPI): `create_app()` builds it; `uvicorn --factory lrface.service.api:create_app` serves it."""
from lrface.service.api.app import create_app

__all__ = ["create_app"]
