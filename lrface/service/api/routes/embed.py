"""POST /v1/embed and POST /v1/verify: resolution-robust face embeddings and one-to-one verification."""
from __future__ import annotations

from typing import Annotated

import numpy as np
import orjson
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.routing import APIRoute
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from lrface.service.api.deps import Services, ServicesDep, SettingsDep, named_embedder
from lrface.service.api.errors import APIError
from lrface.service.api.images import Align, check_pixel_budget, prepare_face, prepare_faces, read_upload, small_enough_inline
from lrface.service.api.limits import run_batched
from lrface.service.api.multipart import parse_plain_multipart
from lrface.service.api.routes.synthesize import FaceBox
from lrface.core.embedder import EMBEDDER_MODELS, Embedder, EmbedderName
from lrface.service.settings import Settings

router = APIRouter(prefix="/v1", tags=["recognition"])


MODEL_DESCRIPTION = ("which embedder: full (the default; the model card lrface/models/weights/embedder.md) or lite "
                     "(a third of the compute, a little less accurate: embedder_lite.md). Embeddings of different "
                     "models are not comparable: embed a gallery and its queries with the same one")


class EmbedItem(BaseModel):
    index: int
    filename: str
    width: int = Field(description="width of the face given to the embedder (112x96 after align=auto)")
    height: int
    align: Align = Field(description="what was done with the image: none (taken as an aligned crop) or auto "
                                     "(the face was detected and aligned)")
    face_box: FaceBox | None


class EmbedResponse(BaseModel):
    model_id: str
    dim: int
    embeddings: list[list[float]] = Field(description="one L2-normalised vector per image, in upload order")
    items: list[EmbedItem]


class VerifyResponse(BaseModel):
    similarity: float = Field(description="cosine similarity of the two embeddings, in [-1, 1]")
    same_person: bool = Field(description="similarity >= threshold")
    threshold: float = Field(description="the embedder's verification threshold (its sidecar's verify_threshold)")
    model_id: str


def _detector_for(services: Services, align: Align | None):
    if align is Align.none:
        return None
    detector = services.model("detector")
    if detector is None and align is Align.auto:
        raise APIError(503, "model_unavailable", f"the face detector is not available: {services.model_errors.get('detector')}")
    return detector


async def _embed_uploads(services: Services, settings: Settings, embedder: Embedder, uploads: list[UploadFile],
                         align: Align | None, endpoint: str):
    datas = [await read_upload(u, settings.max_upload_bytes) for u in uploads]
    return await _embed_files(services, settings, embedder, [u.filename for u in uploads], datas, align, endpoint)


async def _embed_files(services: Services, settings: Settings, embedder: Embedder, filenames: list[str | None],
                       datas: list[bytes], align: Align | None, endpoint: str):
    detector = _detector_for(services, align)
    check_pixel_budget(datas, settings.max_request_pixels)

    def prepare():
        # One image at a time: each is decoded and brought to its model rows before the next is decoded.
        return prepare_faces(datas, filenames, align, settings.max_image_pixels, detector, embedder.prepare)

    if getattr(embedder, "batcher", None) is None:
        # One model call per request, in the thread pool, under the compute gate.
        def work():
            prepared, batch = prepare()
            return prepared, embedder.run(batch)

        async with services.limiter.slot():
            prepared, vectors = await run_in_threadpool(work)
    else:
        # Micro-batching: decode (on the loop when tiny, else in the pool under the compute gate), then wait for
        # the model in the batcher's queue without holding a thread or a compute slot.
        if small_enough_inline(datas, align):
            prepared, batch = prepare()
        else:
            async with services.limiter.slot():
                prepared, batch = await run_in_threadpool(prepare)
        # A lone request (no other inference request in this process) runs the embedder's ~2 ms call on the
        # loop's thread when the batcher is idle: nothing else waits for the loop, and the two thread hand-offs
        # of the queue would cost a quarter of the request's time.
        lone = settings.inline_lone_requests and services.in_flight is not None and services.in_flight.n <= 1
        vectors = await run_batched(services, embedder.run_async(batch, inline=lone))
    services.metrics.images.labels(endpoint).inc(len(datas))
    return prepared, vectors


ALIGN_DESCRIPTION = ("none: the image is an aligned face crop; auto: detect and align the most prominent face; "
                     "not given: none for an image shaped like an aligned 112x96 crop (any scale, width within 4 % "
                     "or 1 px of height x 96/112), auto for anything else (a whole photo is never embedded as a face)")
EMBED_DESCRIPTION = ("Upload one or several face images as `images` (up to LRFACE_MAX_EMBED_IMAGES); get one "
                     "L2-normalised embedding each. Faces of any resolution (down to 8 px high) share one space: "
                     "compare them with a dot product. `align=auto` detects and aligns the most prominent face first; "
                     "without `align`, images that are not shaped like an aligned 112x96 crop are aligned that way too "
                     "(`items[].align` says which; 422 `no_face` when there is no face to find).")


async def embed(
    request: Request,
    images: Annotated[list[UploadFile], File(description="face images")],
    align: Annotated[Align | None, Form(description=ALIGN_DESCRIPTION)] = None,
    model: Annotated[EmbedderName, Form(description=MODEL_DESCRIPTION)] = "full",
) -> EmbedResponse:
    # (The shared objects straight from the app rather than through Depends: this is the hot path, and each
    # dependency costs FastAPI a resolution step per request.)
    services: Services = request.app.state.services
    settings = services.settings
    embedder: Embedder = await named_embedder(services, model)
    if len(images) > settings.max_embed_images:  # (before reading any of them)
        raise APIError(413, "too_many_images", f"at most {settings.max_embed_images} images per request, got {len(images)}")
    datas = [await read_upload(u, settings.max_upload_bytes) for u in images]
    return await _embed(services, embedder, [u.filename for u in images], datas, align)


async def _embed(services: Services, embedder: Embedder, filenames: list[str | None], datas: list[bytes],
                 align: Align | None):
    settings = services.settings
    prepared, vectors = await _embed_files(services, settings, embedder, filenames, datas, align, "embed")
    if np.isfinite(vectors).all():
        # The response model's fields, serialised directly (validating 128 floats per face costs more than the
        # rest of the request; the shape is fixed here and documented by response_model).
        items = [{"index": i, "filename": name or "", "width": int(face.shape[1]), "height": int(face.shape[0]),
                  "align": "auto" if box else "none", "face_box": {k: float(v) for k, v in box.items()} if box else None}
                 for i, (name, (face, box)) in enumerate(zip(filenames, prepared))]
        body = {"model_id": embedder.model_id, "dim": embedder.dim, "embeddings": vectors.tolist(), "items": items}
        return Response(orjson.dumps(body), media_type="application/json")
    items = [EmbedItem(index=i, filename=name or "", width=face.shape[1], height=face.shape[0],
                       align=Align.auto if box else Align.none, face_box=FaceBox(**box) if box else None)
             for i, (name, (face, box)) in enumerate(zip(filenames, prepared))]
    return EmbedResponse(model_id=embedder.model_id, dim=embedder.dim, embeddings=vectors.tolist(), items=items)


_MODEL_VALUES = frozenset(name.encode() for name in EMBEDDER_MODELS)
# Bodies up to this size may take the lean path (read whole into memory); larger ones are streamed by FastAPI.
FAST_PATH_MAX_BODY = 1024 * 1024
_EMBED_FIELDS = frozenset({"images", "align", "model"})


async def _embed_fast(request: Request):
    """The answer for a plain multipart body (a few small images, optional `align`), read without FastAPI's form
    machinery; None for anything else, which then takes the route's FastAPI path (and gets its error answers)."""
    headers = request.headers
    try:
        length = int(headers.get("content-length", ""))
    except ValueError:
        return None
    if not 0 < length <= FAST_PATH_MAX_BODY:
        return None
    fields = parse_plain_multipart(headers.get("content-type", "").encode("latin-1"), await request.body(), _EMBED_FIELDS)
    if fields is None:
        return None
    services: Services = request.app.state.services
    settings = services.settings
    files = [(name, value) for field, name, value in fields if field == "images"]
    aligns = [(name, value) for field, name, value in fields if field == "align"]
    models = [(name, value) for field, name, value in fields if field == "model"]
    if not 0 < len(files) <= settings.max_embed_images or len(aligns) > 1 or len(models) > 1:
        return None  # (FastAPI's path answers these: 422 / 413 too_many_images)
    if any(not name or len(value) > settings.max_upload_bytes for name, value in files):
        return None  # (a file part without a name is not a file to FastAPI; 413 payload_too_large)
    if aligns and (aligns[0][0] is not None or aligns[0][1] not in (b"none", b"auto")):
        return None  # (422 validation_error)
    if models and (models[0][0] is not None or models[0][1] not in _MODEL_VALUES):
        return None  # (422 validation_error)
    align = Align(aligns[0][1].decode()) if aligns else None
    embedder: Embedder = await named_embedder(services, models[0][1].decode() if models else "full")
    return await _embed(services, embedder, [name for name, _ in files], [value for _, value in files], align)


class _EmbedRoute(APIRoute):
    """The embed route: the lean path first, FastAPI's (documented by the same signature) when it declines."""

    def get_route_handler(self):
        standard = super().get_route_handler()

        async def handler(request: Request):
            response = await _embed_fast(request)
            return response if response is not None else await standard(request)

        return handler


router.add_api_route("/embed", embed, methods=["POST"], response_model=EmbedResponse, summary="embed faces",
                     description=EMBED_DESCRIPTION, route_class_override=_EmbedRoute)


@router.post("/verify", response_model=VerifyResponse, summary="are two faces the same person?",
             description="Upload `image_a` and `image_b`. The answer compares the cosine similarity of their embeddings "
                         "with the embedder's `verify_threshold`, read from the model's JSON sidecar "
                         "(lrface/models/weights/embedder.json, embedder_lite.json for `model=lite`) and returned as `threshold`: `same_person` is "
                         "`similarity >= threshold`. Works across resolutions (an enrolment photo against a CCTV crop). "
                         "`align` as for /v1/embed: without it, an image not shaped like an aligned 112x96 crop has its "
                         "face detected and aligned. `model` as for /v1/embed (each model has its own threshold).")
async def verify(
    services: ServicesDep,
    settings: SettingsDep,
    image_a: Annotated[UploadFile, File()],
    image_b: Annotated[UploadFile, File()],
    align: Annotated[Align | None, Form(description=ALIGN_DESCRIPTION)] = None,
    model: Annotated[EmbedderName, Form(description=MODEL_DESCRIPTION)] = "full",
) -> VerifyResponse:
    embedder: Embedder = await named_embedder(services, model)
    _, vectors = await _embed_uploads(services, settings, embedder, [image_a, image_b], align, "verify")
    similarity = float(np.clip(np.dot(vectors[0], vectors[1]), -1.0, 1.0))
    return VerifyResponse(similarity=similarity, same_person=similarity >= embedder.verify_threshold,
                          threshold=embedder.verify_threshold, model_id=embedder.model_id)
