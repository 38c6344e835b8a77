"""The lean path of POST /v1/embed (lrface.service.api.multipart + routes/embed.py): plain multipart bodies are read
without FastAPI's form machinery, everything else falls back to it, and either way a request gets the same answer.
"""
from __future__ import annotations

import asyncio

import httpx
import pytest

import lrface.service.api.routes.embed as embed_route
from lrface.service.api.multipart import parse_plain_multipart
from lrface.service.settings import Settings
from service_helpers import HR_FACES, bomb_png

FACE = HR_FACES[0].read_bytes()
NAMES = frozenset({"images", "align"})


def _body(parts: list[bytes], boundary: str = "b0und4ry", epilogue: bytes = b"", preamble: bytes = b"") -> tuple[bytes, bytes]:
    delimiter = f"--{boundary}".encode()
    body = preamble + b"".join(delimiter + b"\r\n" + p + b"\r\n" for p in parts) + delimiter + b"--\r\n" + epilogue
    return f"multipart/form-data; boundary={boundary}".encode(), body


def _file(name="images", filename="a.jpg", data=FACE, extra=b"") -> bytes:
    return (f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'.encode() + extra
            + b"Content-Type: image/jpeg\r\n\r\n" + data)


def _field(name: str, value: bytes) -> bytes:
    return f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value


def test_the_reader_takes_what_clients_send():
    request = httpx.Request("POST", "http://x/v1/embed", files=[("images", ("a.jpg", FACE, "image/jpeg")),
                                                                 ("images", ("b c.jpg", b"xy", "image/jpeg"))],
                            data={"align": "auto"})
    body = request.read()
    fields = parse_plain_multipart(request.headers["content-type"].encode(), body, NAMES)
    assert sorted(fields) == sorted([("align", None, b"auto"), ("images", "a.jpg", FACE), ("images", "b c.jpg", b"xy")])
    content_type, body = _body([_file(), _field("align", b"none")])
    assert parse_plain_multipart(content_type, body, NAMES) == [("images", "a.jpg", FACE), ("align", None, b"none")]


@pytest.mark.parametrize("case", [
    "unknown field", "preamble", "epilogue", "boundary in data", "no final boundary", "quoted filename",
    "filename*", "extra header", "non-ASCII filename", "not multipart", "no headers end",
])
def test_the_reader_declines_anything_else(case):
    parts, kw = [_file()], {}
    content_type = None
    if case == "unknown field":
        parts.append(_field("other", b"1"))
    elif case == "preamble":
        kw["preamble"] = b"hello\r\n"
    elif case == "epilogue":
        kw["epilogue"] = b"trailing words"
    elif case == "boundary in data":
        parts = [_file(data=FACE[:100] + b"\r\n--b0und4ry" + FACE[100:])]
    elif case == "quoted filename":
        parts = [_file(filename='a\\"b.jpg')]
    elif case == "filename*":
        parts = [b"Content-Disposition: form-data; name=\"images\"; filename*=UTF-8''a.jpg\r\n\r\n" + FACE]
    elif case == "extra header":
        parts = [_file(extra=b"X-Thing: 1\r\n")]
    elif case == "non-ASCII filename":
        parts = [_file(filename="f\u00e9.jpg")]
    elif case == "no headers end":
        parts = [b'Content-Disposition: form-data; name="images"; filename="a.jpg"']
    if case == "non-ASCII filename":
        content_type, body = _body([p.replace("f\u00e9".encode(), "f\u00e9".encode("utf-8")) for p in parts])
    else:
        content_type, body = _body(parts, **kw)
    if case == "no final boundary":
        body = body[:body.rindex(b"--b0und4ry--")]
    if case == "not multipart":
        content_type = b"application/octet-stream"
    assert parse_plain_multipart(content_type, body, NAMES) is None


# -- the same answers either way ----------------------------------------------------------------------------------

def _requests() -> dict[str, tuple[bytes, bytes]]:
    tiny = HR_FACES[1].read_bytes()
    return {
        "one face": _body([_file()]),
        "three faces, align none": _body([_file(filename="x.jpg"), _file(data=tiny), _file(), _field("align", b"none")]),
        "align auto on a crop": _body([_file(), _field("align", b"auto")]),
        "align bogus": _body([_file(), _field("align", b"sideways")]),
        "no images": _body([_field("align", b"none")]),
        "not an image": _body([_file(data=b"hello, not an image\n" * 20)]),
        "empty file": _body([_file(data=b"")]),
        "bomb": _body([_file(filename="bomb.png", data=bomb_png())]),
        "too many images": _body([_file() for _ in range(5)]),
        "an image field without a file name": _body([_field("images", FACE)]),
        "an unknown field too": _body([_file(), _field("note", b"hi")]),
        "two align fields": _body([_file(), _field("align", b"none"), _field("align", b"auto")]),
        "file too large": _body([_file(data=FACE + b"\0" * 70_000)]),
        "model lite": _body([_file(), _field("model", b"lite")]),
        "model full, align none": _body([_file(), _field("model", b"full"), _field("align", b"none")]),
        "model bogus": _body([_file(), _field("model", b"huge")]),
        "two model fields": _body([_file(), _field("model", b"lite"), _field("model", b"full")]),
    }


@pytest.fixture(scope="module")
def app(tmp_path_factory, mrgan_path, embedder_path):
    from lrface.service.api import create_app

    settings = Settings(mrgan_model_path=mrgan_path, embedder_model_path=embedder_path, threads=1, providers=["cpu"],
                        state_dir=tmp_path_factory.mktemp("fast"), load_models_on_startup=False,
                        max_embed_images=4, max_upload_bytes=64 * 1024)
    app = create_app(settings)
    yield app
    app.state.services.close_models()


async def _post_all(app, bodies):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
        return {name: await client.post("/v1/embed", content=body, headers={"content-type": ctype.decode()})
                for name, (ctype, body) in bodies.items()}


def test_fast_and_standard_paths_answer_alike(app, monkeypatch):
    bodies = _requests()
    taken = []
    fast = embed_route._embed_fast

    async def spy(request):
        try:
            response = await fast(request)
        except Exception:  # an error answer from the lean path (an image that does not decode, ...)
            taken.append(True)
            raise
        taken.append(response is not None)
        return response

    monkeypatch.setattr(embed_route, "_embed_fast", spy)
    got = asyncio.run(_post_all(app, bodies))
    took_fast = dict(zip(bodies, taken))

    async def never(request):
        return None

    monkeypatch.setattr(embed_route, "_embed_fast", never)
    expected = asyncio.run(_post_all(app, bodies))
    for name in bodies:
        g, e = got[name], expected[name]
        assert (g.status_code, g.headers["content-type"]) == (e.status_code, e.headers["content-type"]), name
        if e.status_code == 200:
            gj, ej = g.json(), e.json()
            assert gj["items"] == ej["items"] and gj["model_id"] == ej["model_id"], name
            assert gj["embeddings"] == ej["embeddings"], name  # (one request at a time: the same model call)
        else:
            assert g.json() == e.json(), name
    assert took_fast["one face"] and took_fast["three faces, align none"] and took_fast["align auto on a crop"]
    assert took_fast["model lite"] and took_fast["model full, align none"]
    assert got["model lite"].json()["model_id"].startswith("adapt_lite_")  # the lite embedder answered
    assert got["model full, align none"].json()["model_id"] == got["one face"].json()["model_id"]
    assert took_fast["not an image"] and took_fast["empty file"]  # errors of the images themselves: same code
    for name in ("align bogus", "no images", "too many images", "an image field without a file name",
                 "an unknown field too", "two align fields", "file too large", "model bogus", "two model fields"):
        assert not took_fast[name], f"{name}: should have been left to FastAPI"
