"""Schemathesis over the service's own OpenAPI document: generated valid and invalid requests for every
operation, in process (ASGI), with the models loaded and a real Redis for the jobs (no worker: jobs are only
accepted or refused). Every response must be no 5xx, have a documented content type, and, where the schema
describes the body, match it. Bounded: a few dozen examples per operation, well under a minute.

Needs the `schemathesis` package (in the `test` extra); skipped with that reason when it is not installed.
"""
from __future__ import annotations

import io
import zipfile

import pytest

schemathesis = pytest.importorskip(
    "schemathesis", reason="schemathesis is not installed: pip install 'schemathesis>=4.32,<5' (the test extra has it)")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402  (schemathesis brings hypothesis)
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)

from lrface.service.api import create_app  # noqa: E402
from lrface.service.settings import Settings  # noqa: E402
from service_helpers import (  # noqa: E402
    HR_FACES,
    TEST_REDIS_URL,
    forget_namespace,
    make_faces,
    redis_or_skip,
    unique_namespace,
)

pytestmark = [pytest.mark.redis, pytest.mark.slow]

MAX_EXAMPLES = 25
FACE = HR_FACES[0].read_bytes()


def _archive() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in HR_FACES[:2]:
            zf.write(path, path.name)
    return buf.getvalue()


ARCHIVE = _archive()


def _use_real_files(case) -> None:
    body = case.body
    if not isinstance(body, dict):
        return
    for name in ("image", "image_a", "image_b"):
        if isinstance(body.get(name), (bytes, str)):
            body[name] = FACE
    if isinstance(body.get("images"), list):
        body["images"] = [FACE for _ in body["images"]] or [FACE]
    if isinstance(body.get("archive"), (bytes, str)):
        body["archive"] = ARCHIVE


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory, mrgan_path, embedder_path):
    client = redis_or_skip()
    prefix, queue = unique_namespace()
    tmp = tmp_path_factory.mktemp("fuzz")
    make_faces(tmp / "data" / "faces", 2)
    settings = Settings(
        mrgan_model_path=mrgan_path, embedder_model_path=embedder_path, threads=1, providers=["cpu"],
        broker_url=TEST_REDIS_URL, key_prefix=prefix, queue=queue, state_dir=tmp / "state", data_root=tmp / "data",
        jobs_root=tmp / "jobs", max_upload_bytes=256 * 1024, max_archive_bytes=1024 * 1024,
        max_active_jobs=1000, load_models_on_startup=False,
    )
    app = create_app(settings)
    yield app
    forget_namespace(client, prefix, queue)
    store = app.state.services._store
    if store is not None:
        store.redis.close()


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_app):
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


def _operations() -> list[tuple[str, str]]:
    # The operations, read from the app's own OpenAPI (no models or Redis needed for that) at collection time,
    # so each gets its own test id.
    paths = create_app(Settings(load_models_on_startup=False)).openapi()["paths"]
    return [(path, method.upper()) for path, item in paths.items() for method in item]


# Every operation with valid data; those with a request body also with invalid data (the others take a free
# string path parameter at most, so no request to them can be invalid).
CASES = [(path, method, "valid") for path, method in _operations()]
CASES += [(path, method, "invalid") for path, method, _ in CASES if method == "POST"]


@pytest.mark.parametrize("path, method, mode", CASES, ids=[f"{m} {p} {mode}" for p, m, mode in CASES])
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_openapi_operations_never_fail_and_match_their_schema(fuzz_schema, path, method, mode, monkeypatch):
    from lrface.service import tasks

    # Accepted jobs stay in the test Redis under this test's prefix (deleted afterwards); their chunk tasks are
    # not published at all, as no worker would run them.
    monkeypatch.setattr(tasks, "enqueue_chunk", lambda job_id, index, paths: None)
    generation = GenerationMode.POSITIVE if mode == "valid" else GenerationMode.NEGATIVE
    strategy = fuzz_schema[path][method].as_strategy(generation_mode=generation)

    @given(case=strategy, real_files=st.booleans())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def run(case, real_files):
        if real_files:  # random bytes are never an image: half the time the other fields go with real files
            _use_real_files(case)
        case.call_and_validate(checks=[not_a_server_error, content_type_conformance, response_schema_conformance])

    run()
