"""Resolution-robust face embeddings: faces of any size -> L2-normalised float32 vectors (onnxruntime)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from lrface.core.face import FACE_HEIGHT, to_model_input
from lrface.core.onnx_model import OnnxModel, check_faces, default_model_path

# The shipped embedders, by the name `--model` (CLI), `model=` (API) and a job's `model` take -> the stem of their
# files in lrface/models/weights/ (ONNX + JSON sidecar + model card .md). "full" is the default.
EMBEDDER_MODELS = {"full": "embedder", "lite": "embedder_lite"}
DEFAULT_EMBEDDER = "full"
EmbedderName = Literal["full", "lite"]  # EMBEDDER_MODELS' names, as the API's `model` fields take them

# Most faces an embed call may run on the caller's (event loop's) thread when `inline` is asked for.
INLINE_MAX_ROWS = 4


class Embedder(OnnxModel):
    """Resolution-robust face embeddings: faces of any size -> L2-normalised float32 vectors."""

    NAME, WHAT, INPUTS, OUTPUT = "embedder", "embedder", frozenset({"face"}), "embedding"
    DEFAULT_MAX_BATCH = 64
    BATCHER_NAME = "face embedder"

    def __init__(self, model_path: str | Path | None = None, *args, **kwargs):
        super().__init__(embedder_path(model_path), *args, **kwargs)

    def _read_meta(self, meta: dict) -> None:
        try:
            self.model_id: str = str(meta["model_id"])
            self.dim: int = int(meta["dim"])
            self.verify_threshold: float = float(meta["verify_threshold"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{self.model_path.with_suffix('.json')} lacks a valid model_id / dim / verify_threshold: {exc}") from None

    def prepare(self, faces: list[np.ndarray]) -> np.ndarray:
        """Check the faces and bring them to the model input (float32 N x 3 x 112 x 96)."""
        faces = check_faces(list(faces))
        if not faces:
            return np.zeros((0, 3, FACE_HEIGHT, 96), dtype=np.float32)
        return to_model_input(faces)

    def _normalized(self, out: np.ndarray) -> np.ndarray:
        # The contract says the model normalises; renormalising guards against export drift.
        out = np.array(out, dtype=np.float32, copy=True).reshape(len(out), self.dim)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.divide(out, norms, out=out, where=norms > 0).astype(np.float32, copy=False)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Embeddings of prepared faces (`prepare`): through the micro-batcher when there is one, else in
        batches of up to `max_batch`."""
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.batcher is not None:
            return self._normalized(self.batcher.submit({"face": batch}).result())
        out = np.zeros((len(batch), self.dim), dtype=np.float32)
        for start in range(0, len(batch), self.max_batch):
            out[start:start + self.max_batch] = self._run_rows({"face": batch[start:start + self.max_batch]})
        return self._normalized(out)

    async def run_async(self, batch: np.ndarray, *, inline: bool = False) -> np.ndarray:
        """`run` from an event loop without blocking it (needs the micro-batcher).

        `inline=True`: when the batcher is idle and the batch is small (<= INLINE_MAX_ROWS faces), the call runs
        right here on the loop's thread instead (the API does this for a lone request: nothing else is waiting,
        and the embedder's call takes ~2 ms a face, so the loop is never held for long)."""
        if self.batcher is None:
            raise RuntimeError("run_async needs micro_batch=True")
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if inline and len(batch) <= INLINE_MAX_ROWS:
            out = self.batcher.run_now({"face": batch})
            if out is not None:
                return self._normalized(out)
        return self._normalized(await self.batcher.submit_async({"face": batch}))

    def embed(self, faces: list[np.ndarray]) -> np.ndarray:
        """float32 N x dim, each row L2-normalised; faces are uint8 RGB of any size (>= 8 px high)."""
        return self.run(self.prepare(faces))


def embedder_path(model: str | Path | None) -> Path | None:
    """An embedder file from what a user names: a shipped model's name (EMBEDDER_MODELS: "full", "lite") -> its
    file in lrface/models/weights/; None -> None (the default, "full"); anything else is taken as a path."""
    if model is None:
        return None
    if isinstance(model, str) and model in EMBEDDER_MODELS:
        return default_model_path(EMBEDDER_MODELS[model])
    return Path(model)
