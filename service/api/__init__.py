"""The HTTP API (FastAPI): `create_app()` builds it; `uvicorn --factory service.api:create_app` serves it."""
from service.api.app import create_app

__all__ = ["create_app"]
