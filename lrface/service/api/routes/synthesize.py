"""POST /v1/synthesize: K realistic low-resolution variants of one face (MR-GAN)."""
from __future__ import annotations

import secrets
from pathlib import PurePath
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from lrface.service.api.deps import ServicesDep, SettingsDep, get_synthesizer
from lrface.service.api.errors import APIError
from lrface.service.api.images import Align, ImageFormat, encode, prepare_face, read_upload, small_enough_inline
from lrface.service.api.limits import run_batched
from lrface.core.params import AugmentParams
from lrface.core.synthesizer import Synthesizer
from lrface.service.settings import Settings

router = APIRouter(prefix="/v1", tags=["synthesis"])
_MAX_VARIANTS = Settings.model_fields["max_variants"].default  # (for the parameter's description)
# With micro-batching, requests for this many native-size LR variants (at most 56 px high) are prepared and encoded
# on the event loop (a fraction of a millisecond); more, or 112x96 canvases, go to the thread pool.
INLINE_VARIANTS = 2


class FaceBox(BaseModel):
    x: float
    y: float
    width: float
    height: float
    score: float


class VariantOut(BaseModel):
    k: int = Field(description="variant index, 0..variants-1")
    seed: int = Field(description="the run seed")
    height: int = Field(description="simulated LR capture height in px")
    width: int = Field(description="simulated LR capture width in px")
    image_base64: str
    media_type: str


class SynthesizeResponse(BaseModel):
    model_id: str
    seed: int = Field(description="the seed used (drawn at random when none was sent); send it back to reproduce")
    face_box: FaceBox | None = Field(description="the detected face (align=auto), else null")
    face_image_base64: str | None = Field(None, description="with include_face=true: the face the variants were made "
                                                            "from (the aligned 112x96 crop with align=auto), as PNG")
    variants: list[VariantOut]


def synthesis_params(settings: Settings, synth: Synthesizer | None, *, variants: int, seed: int, height: int | None,
                     min_height: int | None, max_height: int | None, canvas: bool = False) -> AugmentParams:
    """The request's `AugmentParams`, checked before any work (also against the model when it is loaded);
    422 validation_error when wrong."""
    if not 1 <= variants <= settings.max_variants:
        raise APIError(422, "validation_error", f"variants must be between 1 and {settings.max_variants}, not {variants}")
    try:
        params = AugmentParams(variants, seed, height, min_height, max_height, canvas)
        return synth.check(params) if synth is not None else params
    except ValueError as exc:
        raise APIError(422, "validation_error", str(exc)) from None


def random_seed() -> int:
    return secrets.randbelow(2**31)


DESCRIPTION = """
Upload one face image; get `variants` low-resolution versions as a surveillance camera would capture it.

- `align=none`: the image is already an aligned face crop (112x96 template, any size).
  `align=auto`: the most prominent face is detected (RetinaFace) and aligned first; `face_box` says where.
- Heights: a fixed `height`, or a range `min_height`..`max_height`; by default each variant's height is
  drawn from the model's empirical height distribution. Images come at that native LR size, or on the
  112x96 canvas with `canvas=true`.
- Reproducible: the same image, file name, parameters and `seed` give the same variants
  (the file name is the randomness key, as for `lrface synth`).
"""


@router.post("/synthesize", response_model=SynthesizeResponse, summary="LR variants of one face", description=DESCRIPTION,
             responses={413: {"description": "upload or image too large"}, 415: {"description": "not an image"},
                        422: {"description": "invalid parameters, corrupt image or no face"}})
async def synthesize(
    services: ServicesDep,
    settings: SettingsDep,
    synth: Annotated[Synthesizer, Depends(get_synthesizer)],
    image: Annotated[UploadFile, File(description="the face image")],
    variants: Annotated[int, Form(ge=1, description=f"number of variants, 1..LRFACE_MAX_VARIANTS ({_MAX_VARIANTS})")] = 4,
    seed: Annotated[int | None, Form(ge=0, description="run seed; random (and returned) when omitted")] = None,
    height: Annotated[int | None, Form(description="fixed LR height in px")] = None,
    min_height: Annotated[int | None, Form(description="lowest LR height to draw")] = None,
    max_height: Annotated[int | None, Form(description="highest LR height to draw")] = None,
    align: Annotated[Align, Form(description="none: aligned crop; auto: detect and align")] = Align.none,
    format: Annotated[ImageFormat, Form(description="encoding of the returned images")] = ImageFormat.png,
    canvas: Annotated[bool, Form(description="return 112x96 canvases instead of native LR sizes")] = False,
    include_face: Annotated[bool, Form(description="also return the (aligned) input face as PNG")] = False,
) -> SynthesizeResponse:
    seed = random_seed() if seed is None else seed
    params = synthesis_params(settings, synth, variants=variants, seed=seed, height=height, min_height=min_height,
                              max_height=max_height, canvas=canvas)
    data = await read_upload(image, settings.max_upload_bytes)
    detector = services.model("detector") if align is Align.auto else None
    if align is Align.auto and detector is None:
        raise APIError(503, "model_unavailable", f"the face detector is not available: {services.model_errors.get('detector')}")
    key = PurePath(image.filename or "image").name or "image"

    face_png: list[str] = []

    def plan():
        face, box = prepare_face(data, image.filename, align, settings.max_image_pixels, detector)
        if include_face:
            face_png.append(encode(face, ImageFormat.png)[0])
        return box, synth.prepare([face], keys=[key], **params.synthesis())

    def finish(p, out):
        (made,) = synth.finish(p, out)
        return [(v, *encode(v.image, format)) for v in made]

    if getattr(synth, "batcher", None) is None:
        # One model call per request, in the thread pool, under the compute gate.
        def work():
            box, p = plan()
            return box, finish(p, synth.run(p))

        async with services.limiter.slot():
            box, encoded = await run_in_threadpool(work)
    else:
        # Micro-batching: the model rows wait in the batcher's queue, holding neither a thread nor a compute slot;
        # decoding, drawing the rows' randomness and encoding run on the loop when tiny, else in the pool under
        # the compute gate.
        inline = variants <= INLINE_VARIANTS and not canvas and not include_face
        if inline and small_enough_inline([data], align):
            box, p = plan()
        else:
            async with services.limiter.slot():
                box, p = await run_in_threadpool(plan)
        out = await run_batched(services, synth.run_async(p))
        if inline:
            encoded = finish(p, out)
        else:
            async with services.limiter.slot():
                encoded = await run_in_threadpool(finish, p, out)
    services.metrics.images.labels("synthesize").inc()
    services.metrics.variants.inc(len(encoded))
    return SynthesizeResponse(
        model_id=synth.model_id,
        seed=seed,
        face_box=FaceBox(**box) if box else None,
        face_image_base64=face_png[0] if face_png else None,
        variants=[VariantOut(k=v.k, seed=v.seed, height=v.height, width=v.width, image_base64=b64, media_type=media)
                  for v, b64, media in encoded],
    )
