"""What a bulk job is: its parameters, its id, its states, and the error a job request is refused with."""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from lrface.core.params import AugmentParams

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
KINDS = ("augment", "embed")
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


class JobInputError(Exception):
    """The job request cannot be accepted; status / code / message go to the client as they are."""

    def __init__(self, status_code: int, error: str, message: str):
        super().__init__(message)
        self.status_code = status_code
        self.error = error
        self.message = message


@dataclass(frozen=True)
class JobParams(AugmentParams):
    """An augmentation job's `AugmentParams` (validated on construction), or an embedding job (`kind` "embed",
    whose synthesis fields are unused)."""

    kind: str = "augment"  # "embed": embeddings.npz of every face
    model: str = "full"  # an embedding job's embedder (lrface.core.embedder.EMBEDDER_MODELS)

    @classmethod
    def embedding(cls, model: str = "full") -> "JobParams":
        return cls(kind="embed", model=model)

    @classmethod
    def from_dict(cls, p: dict) -> "JobParams":
        if p.get("kind") == "embed":
            return cls.embedding(p.get("model") or "full")  # (jobs stored before `model` existed: full)
        return cls(int(p["variants"]), int(p["seed"]), p.get("height"), p.get("min_height"), p.get("max_height"),
                   bool(p.get("canvas")))

    def as_dict(self) -> dict:
        if self.kind == "embed":
            return {"kind": "embed", "model": self.model}
        return {"kind": self.kind, **self.synthesis()}


def new_job_id() -> str:
    return uuid.uuid4().hex


def is_job_id(text: str) -> bool:
    return bool(_JOB_ID.match(text or ""))
