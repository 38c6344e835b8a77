"""Python client of the lrface HTTP API: `Client` (sync) and `AsyncClient` (asyncio) with the same methods.

    from lrface.client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as lr:
        variants = lr.synthesize("photo.jpg", variants=4, seed=1, align="auto")   # [Variant(image=HxWx3 uint8, ...)]
        vectors = lr.embed(["a.jpg", "b.png"])                                     # float32 [N, D]
        fast = lr.embed("cctv.png", model="lite")                                 # the lite embedder
        result = lr.verify("enrolment.jpg", "cctv.png")                            # .similarity .same_person .threshold
        job = lr.wait(lr.submit_job("faces/", variants=2), progress=True)
        rows = lr.manifest(job)

Images may be paths, bytes (an encoded file), PIL images or uint8 arrays (HxWx3 RGB or HxW grey). 503 and 429
answers are retried (honouring `Retry-After`) up to `max_retries` times; other errors raise an `APIError`
subclass that carries the API's error code (`exc.code`), status and message.
"""
from __future__ import annotations

import asyncio
import base64
import io
import os
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import httpx
import numpy as np
from PIL import Image

__all__ = [
    "Client", "AsyncClient", "Variant", "Synthesis", "Verification", "Job",
    "APIError", "AuthenticationError", "NotFoundError", "PayloadTooLargeError", "InvalidRequestError",
    "RateLimitedError", "OverloadedError", "JobFailedError",
]

DEFAULT_URL = "http://127.0.0.1:8000"
FINAL_JOB_STATES = ("succeeded", "failed", "cancelled")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


# -- errors ----------------------------------------------------------------------------------------------------

class APIError(Exception):
    """An error answer of the API: `status_code`, `code` (the JSON `error` field) and `message`."""

    def __init__(self, status_code: int, code: str, message: str, body: dict | None = None,
                 retry_after: float | None = None):
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.body = body or {}
        self.retry_after = retry_after


class AuthenticationError(APIError):
    """401: no or a wrong API key."""


class NotFoundError(APIError):
    """404: no such job (or path)."""


class PayloadTooLargeError(APIError):
    """413: an upload, image or archive above the server's limits."""


class InvalidRequestError(APIError):
    """400, 403, 415, 422: bad parameters, not an image, no face, an unsafe archive, ..."""


class RateLimitedError(APIError):
    """429 after the retries: too many jobs queued or running."""


class OverloadedError(APIError):
    """503 after the retries: the server sheds load, or a model or the job store is unavailable."""


class JobFailedError(Exception):
    """`wait` on a job that ended in state `failed`; `job` holds its final state."""

    def __init__(self, job: "Job"):
        super().__init__(f"job {job.id} failed: {job.error or 'see job.errors'}")
        self.job = job


_ERROR_CLASSES = {401: AuthenticationError, 404: NotFoundError, 413: PayloadTooLargeError, 429: RateLimitedError,
                  503: OverloadedError}


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


def _error_from(response: httpx.Response) -> APIError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    code = str(body.get("error") or f"http_{response.status_code}")
    message = str(body.get("message") or response.reason_phrase or "")
    if response.status_code in _ERROR_CLASSES:
        cls = _ERROR_CLASSES[response.status_code]
    elif 400 <= response.status_code < 500:
        cls = InvalidRequestError
    else:
        cls = APIError
    return cls(response.status_code, code, message, body, _retry_after(response))


# -- results ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """One synthesized LR variant: `image` is HxWx3 uint8 RGB (native LR size, or 112x96 with canvas=True)."""
    image: np.ndarray
    seed: int
    height: int
    width: int
    k: int


class Synthesis(list):
    """The variants of one `synthesize` call (a list), with the run `seed`, the detected `face_box` (align=auto,
    else None) and the `model_id`."""

    def __init__(self, variants: Iterable[Variant], seed: int, face_box: dict | None, model_id: str):
        super().__init__(variants)
        self.seed = seed
        self.face_box = face_box
        self.model_id = model_id


@dataclass(frozen=True)
class Verification:
    similarity: float
    same_person: bool
    threshold: float
    model_id: str


@dataclass(frozen=True)
class Job:
    """A bulk job as last seen: `id`, `state`, counts (`total`, `done`, `failed`) and the full answer in `raw`."""
    id: str
    state: str
    total: int
    done: int
    failed: int
    error: str | None
    errors: list = field(default_factory=list)
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def finished(self) -> bool:
        return self.state in FINAL_JOB_STATES

    @classmethod
    def from_json(cls, body: dict) -> "Job":
        counts = body.get("counts", {})
        return cls(id=body["job_id"], state=body["state"], total=counts.get("total", 0), done=counts.get("done", 0),
                   failed=counts.get("failed", 0), error=body.get("error"), errors=body.get("errors", []), raw=body)


# -- inputs ----------------------------------------------------------------------------------------------------

def _image_file(image: Any, default_name: str = "image.png") -> tuple[str, bytes, str]:
    """(file name, bytes, media type) of an image given as a path, bytes, a PIL image or an array."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        return path.name, path.read_bytes(), "application/octet-stream"
    if isinstance(image, (bytes, bytearray, memoryview)):
        return default_name.rsplit(".", 1)[0], bytes(image), "application/octet-stream"
    if isinstance(image, Image.Image):
        pil = image if image.mode in ("RGB", "L") else image.convert("RGB")
    elif isinstance(image, np.ndarray):
        array = image
        if array.dtype != np.uint8:
            raise TypeError(f"image arrays must be uint8 (HxWx3 RGB or HxW grey), not {array.dtype}")
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
            raise TypeError(f"image arrays must be HxWx3 (RGB) or HxW (grey), not shape {array.shape}")
        pil = Image.fromarray(np.ascontiguousarray(array))
    else:
        raise TypeError(f"an image is a path, bytes, a PIL image or a uint8 array, not {type(image).__name__}")
    buf = io.BytesIO()
    pil.save(buf, format="PNG")  # lossless: the server sees exactly these pixels
    return default_name, buf.getvalue(), "image/png"


def _form(**fields) -> dict[str, str]:
    out = {}
    for name, value in fields.items():
        if value is None:
            continue
        out[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


def _archive_of(source: Any) -> tuple[str, Any]:
    """(archive name, bytes or an open file) for `submit_job`: a local folder is zipped into a temp file."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "archive.zip", bytes(source)
    path = Path(source)
    if path.is_dir():
        spool = tempfile.TemporaryFile()
        with zipfile.ZipFile(spool, "w", zipfile.ZIP_STORED) as zf:  # images are compressed already
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                zf.write(file, file.relative_to(path).as_posix())
        spool.seek(0)
        return f"{path.name or 'folder'}.zip", spool
    if path.is_file():
        if not path.name.lower().endswith(ARCHIVE_SUFFIXES):
            raise ValueError(f"{path} is neither a folder nor a zip / tar archive")
        return path.name, open(path, "rb")
    raise FileNotFoundError(f"{path} is not a local folder or archive (a folder on the server: input_dir=...)")


def _job_id(job: "Job | str") -> str:
    return job.id if isinstance(job, Job) else str(job)


def _parse_manifest(text: str) -> list[dict]:
    import json

    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _parse_synthesis(body: dict) -> Synthesis:
    variants = []
    for v in body["variants"]:
        with Image.open(io.BytesIO(base64.b64decode(v["image_base64"]))) as im:
            rgb = np.asarray(im.convert("RGB"))
        variants.append(Variant(image=rgb, seed=v["seed"], height=v["height"], width=v["width"], k=v["k"]))
    return Synthesis(variants, seed=body["seed"], face_box=body.get("face_box"), model_id=body["model_id"])


def _parse_verification(body: dict) -> Verification:
    return Verification(similarity=float(body["similarity"]), same_person=bool(body["same_person"]),
                        threshold=float(body["threshold"]), model_id=body["model_id"])


class _Requests:
    """What both clients share: how each call becomes a request and each answer a result (no I/O here)."""

    def __init__(self, base_url: str, api_key: str | None, max_retries: int, max_retry_wait: float):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def wait_before_retry(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before retrying this answer, or None when it is final."""
        if response.status_code not in (429, 503) or attempt >= self.max_retries:
            return None
        after = _retry_after(response)
        if after is None:
            after = min(0.5 * 2 ** attempt, 8.0)
        return min(after, self.max_retry_wait)

    @staticmethod
    def synthesize(image, variants, seed, height, min_height, max_height, align, canvas) -> dict:
        files = {"image": _image_file(image)}
        data = _form(variants=variants, seed=seed, height=height, min_height=min_height, max_height=max_height,
                     align=align, canvas=canvas, format="png")
        return {"method": "POST", "url": "/v1/synthesize", "files": files, "data": data}

    @staticmethod
    def embed(images, align, model) -> dict:
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)  # a stack of N images
        elif not isinstance(images, (list, tuple)):
            images = [images]
        files = [("images", _image_file(im, f"image{i}.png")) for i, im in enumerate(images)]
        if not files:
            raise ValueError("embed needs at least one image")
        return {"method": "POST", "url": "/v1/embed", "files": files, "data": _form(align=align, model=model)}

    @staticmethod
    def verify(a, b, align, model) -> dict:
        files = {"image_a": _image_file(a, "a.png"), "image_b": _image_file(b, "b.png")}
        return {"method": "POST", "url": "/v1/verify", "files": files, "data": _form(align=align, model=model)}

    @staticmethod
    def job_params(params: dict) -> dict:
        allowed = {"kind", "model", "variants", "seed", "height", "min_height", "max_height", "canvas"}
        unknown = set(params) - allowed
        if unknown:
            raise TypeError(f"unknown job parameters: {', '.join(sorted(unknown))} (known: {', '.join(sorted(allowed))})")
        return {k: v for k, v in params.items() if v is not None}


# -- the clients -----------------------------------------------------------------------------------------------

class Client:
    """Synchronous client. `base_url` of the server, `api_key` when it has LRFACE_API_KEYS set."""

    def __init__(self, base_url: str = DEFAULT_URL, *, api_key: str | None = None, timeout: float = 60.0,
                 max_retries: int = 5, max_retry_wait: float = 60.0, transport: httpx.BaseTransport | None = None):
        self._r = _Requests(base_url, api_key, max_retries, max_retry_wait)
        self._http = httpx.Client(base_url=self._r.base_url, headers=self._r.headers(), timeout=timeout,
                                  transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _send(self, method: str, url: str, *, rewind=None, **kw) -> httpx.Response:
        attempt = 0
        while True:
            if rewind is not None:
                rewind.seek(0)
            response = self._http.request(method, url, **kw)
            delay = self._r.wait_before_retry(response, attempt)
            if delay is None:
                break
            time.sleep(delay)
            attempt += 1
        if response.is_error:
            raise _error_from(response)
        return response

    def synthesize(self, image, variants: int = 4, seed: int | None = None, height: int | None = None, *,
                   min_height: int | None = None, max_height: int | None = None, align: str = "none",
                   canvas: bool = False) -> Synthesis:
        """LR variants of one face (align="auto" for a photo: the most prominent face is detected and aligned)."""
        return _parse_synthesis(self._send(**self._r.synthesize(image, variants, seed, height, min_height, max_height,
                                                                align, canvas)).json())

    def embed(self, images, align: str | None = None, model: str | None = None) -> np.ndarray:
        """float32 [N, D] L2-normalised embeddings of one image or a list of them (align: see the server's docs;
        model: "full", the server's default, or "lite")."""
        body = self._send(**self._r.embed(images, align, model)).json()
        return np.asarray(body["embeddings"], dtype=np.float32).reshape(-1, body["dim"])

    def verify(self, a, b, align: str | None = None, model: str | None = None) -> Verification:
        return _parse_verification(self._send(**self._r.verify(a, b, align, model)).json())

    def submit_job(self, folder_or_archive=None, *, input_dir: str | None = None, **params) -> Job:
        """Start a bulk job on a local folder (zipped and uploaded), a local zip / tar archive, archive bytes, or
        (`input_dir=`) a folder under the server's data root. params: kind ("augment", the default, or "embed"),
        and variants, seed, height, min_height, max_height, canvas for augmentation, model ("full" or "lite") for
        embedding."""
        params = self._r.job_params(params)
        if input_dir is not None:
            return Job.from_json(self._send("POST", "/v1/jobs", json={"input_dir": input_dir, **params}).json())
        name, payload = _archive_of(folder_or_archive)
        try:
            rewind = payload if hasattr(payload, "seek") else None
            response = self._send("POST", "/v1/jobs", files={"archive": (name, payload, "application/octet-stream")},
                                  data=_form(**params), rewind=rewind)
        finally:
            if hasattr(payload, "close"):
                payload.close()
        return Job.from_json(response.json())

    def job(self, job: Job | str) -> Job:
        return Job.from_json(self._send("GET", f"/v1/jobs/{_job_id(job)}").json())

    def cancel(self, job: Job | str) -> Job:
        return Job.from_json(self._send("DELETE", f"/v1/jobs/{_job_id(job)}").json())

    def wait(self, job: Job | str, progress: bool = True, *, poll_interval: float = 0.5,
             timeout: float | None = None) -> Job:
        """Poll until the job ends; a tqdm bar of faces processed when `progress`. Raises JobFailedError when it
        failed, TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with _Progress(progress, _job_id(job)) as bar:
            while True:
                current = self.job(job)
                bar.show(current)
                if current.finished:
                    return _final(current)
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {current.id} still {current.state} after {timeout} s")
                time.sleep(poll_interval)

    def manifest(self, job: Job | str) -> list[dict]:
        """The job's manifest: one dict per variant written (source, output, k, seed, height, width)."""
        return _parse_manifest(self._send("GET", f"/v1/jobs/{_job_id(job)}/manifest").text)


class AsyncClient:
    """The same methods as `Client`, as coroutines."""

    def __init__(self, base_url: str = DEFAULT_URL, *, api_key: str | None = None, timeout: float = 60.0,
                 max_retries: int = 5, max_retry_wait: float = 60.0, transport: httpx.AsyncBaseTransport | None = None):
        self._r = _Requests(base_url, api_key, max_retries, max_retry_wait)
        self._http = httpx.AsyncClient(base_url=self._r.base_url, headers=self._r.headers(), timeout=timeout,
                                       transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def _send(self, method: str, url: str, *, rewind=None, **kw) -> httpx.Response:
        attempt = 0
        while True:
            if rewind is not None:
                rewind.seek(0)
            response = await self._http.request(method, url, **kw)
            delay = self._r.wait_before_retry(response, attempt)
            if delay is None:
                break
            await asyncio.sleep(delay)
            attempt += 1
        if response.is_error:
            raise _error_from(response)
        return response

    async def synthesize(self, image, variants: int = 4, seed: int | None = None, height: int | None = None, *,
                         min_height: int | None = None, max_height: int | None = None, align: str = "none",
                         canvas: bool = False) -> Synthesis:
        response = await self._send(**self._r.synthesize(image, variants, seed, height, min_height, max_height,
                                                         align, canvas))
        return _parse_synthesis(response.json())

    async def embed(self, images, align: str | None = None, model: str | None = None) -> np.ndarray:
        body = (await self._send(**self._r.embed(images, align, model))).json()
        return np.asarray(body["embeddings"], dtype=np.float32).reshape(-1, body["dim"])

    async def verify(self, a, b, align: str | None = None, model: str | None = None) -> Verification:
        return _parse_verification((await self._send(**self._r.verify(a, b, align, model))).json())

    async def submit_job(self, folder_or_archive=None, *, input_dir: str | None = None, **params) -> Job:
        params = self._r.job_params(params)
        if input_dir is not None:
            response = await self._send("POST", "/v1/jobs", json={"input_dir": input_dir, **params})
            return Job.from_json(response.json())
        name, payload = _archive_of(folder_or_archive)
        try:
            # (httpx's async client needs the body in memory; archives are bounded by the server's limit anyway)
            data = payload if isinstance(payload, bytes) else payload.read()
            response = await self._send("POST", "/v1/jobs", files={"archive": (name, data, "application/octet-stream")},
                                        data=_form(**params))
        finally:
            if hasattr(payload, "close"):
                payload.close()
        return Job.from_json(response.json())

    async def job(self, job: Job | str) -> Job:
        return Job.from_json((await self._send("GET", f"/v1/jobs/{_job_id(job)}")).json())

    async def cancel(self, job: Job | str) -> Job:
        return Job.from_json((await self._send("DELETE", f"/v1/jobs/{_job_id(job)}")).json())

    async def wait(self, job: Job | str, progress: bool = True, *, poll_interval: float = 0.5,
                   timeout: float | None = None) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        with _Progress(progress, _job_id(job)) as bar:
            while True:
                current = await self.job(job)
                bar.show(current)
                if current.finished:
                    return _final(current)
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {current.id} still {current.state} after {timeout} s")
                await asyncio.sleep(poll_interval)

    async def manifest(self, job: Job | str) -> list[dict]:
        return _parse_manifest((await self._send("GET", f"/v1/jobs/{_job_id(job)}/manifest")).text)


def _final(job: Job) -> Job:
    if job.state == "failed":
        raise JobFailedError(job)
    return job


class _Progress:
    """A tqdm bar of a job's processed faces (done + failed), or nothing; made at the first poll, with its total."""

    def __init__(self, enabled: bool, job_id: str):
        self.enabled = enabled
        self.job_id = job_id
        self.bar = None

    def show(self, job: Job) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=job.total, unit="face", desc=f"job {self.job_id[:8]}")
        self.bar.total = job.total
        self.bar.n = job.done + job.failed
        self.bar.set_postfix_str(job.state, refresh=False)
        self.bar.refresh()

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
