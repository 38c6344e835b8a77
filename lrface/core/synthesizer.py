"""MR-GAN synthesis: K realistic LR variants of aligned HR faces, reproducible per (key, seed, k) (onnxruntime)."""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from lrface.core.face import FACE_HEIGHT, from_model_output, lr_width_for_height, to_canvas, to_model_input
from lrface.core.onnx_model import OnnxModel, check_faces
from lrface.core.params import AugmentParams, check_heights


@dataclass
class Variant:
    """One synthesized LR face.

    `height` x `width` is the simulated LR capture size (width = `lr_width_for_height(height)`); `image` has
    that size, or is the 112x96 canvas when synthesized with `canvas=True`.
    """

    image: np.ndarray  # uint8 H x W x 3
    k: int
    seed: int
    height: int
    width: int


class Synthesizer(OnnxModel):
    """MR-GAN: K realistic LR variants of aligned HR faces, reproducible per (key, seed, k)."""

    NAME, WHAT, INPUTS, OUTPUT = "mrgan", "MR-GAN", frozenset({"face", "z", "scale"}), "lr"
    DEFAULT_MAX_BATCH = 32
    BATCHER_NAME = "MR-GAN synthesizer"

    def _read_meta(self, meta: dict) -> None:
        # the sensor stage's per-pixel noise; a generator exported without that stage has no such input
        self._noise_shape: tuple[int, ...] | None = None
        for model_input in self._session.get_inputs():
            if model_input.name == "noise":
                self._noise_shape = tuple(int(d) for d in model_input.shape[1:])
        try:
            self.model_id: str = str(meta["model_id"])
            self.z_dim: int = int(meta["z_dim"])
            lo, hi = (int(v) for v in meta["height_range"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{self.model_path.with_suffix('.json')} lacks a valid model_id / z_dim / height_range: {exc}") from None
        self.height_range: tuple[int, int] = (lo, hi)
        values = np.asarray(meta.get("height_values") or [], dtype=np.int64)
        weights = meta.get("height_weights")
        weights = np.ones(len(values)) if weights is None else np.asarray(weights, dtype=np.float64)
        if len(weights) != len(values) or (weights < 0).any():
            raise ValueError(f"{self.model_path.with_suffix('.json')}: height_weights must be as long as height_values and >= 0")
        self._height_values, self._height_weights = values, weights
        self._height_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray] | None] = {}

    # -- randomness -------------------------------------------------------------------------------------------

    def _height_bounds(self, min_height: int | None, max_height: int | None) -> tuple[int, int]:
        """The range heights are drawn from: the given bounds, the model's `height_range` for those not given
        (the arguments are checked already: `check_heights`)."""
        lo = self.height_range[0] if min_height is None else int(min_height)
        hi = self.height_range[1] if max_height is None else int(max_height)
        if lo > hi:
            raise ValueError(f"the height range [{lo}, {hi}] is empty: the model's default range is "
                             f"{list(self.height_range)}; give both min_height and max_height")
        return lo, hi

    def _height_distribution(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The sidecar's empirical heights restricted to [lo, hi], or None when nothing is left there."""
        if (lo, hi) not in self._height_cache:
            mask = (self._height_values >= lo) & (self._height_values <= hi)
            values, weights = self._height_values[mask], self._height_weights[mask]
            total = weights.sum()
            self._height_cache[(lo, hi)] = (values, weights / total) if len(values) and total > 0 else None
        return self._height_cache[(lo, hi)]

    def check(self, params: AugmentParams) -> AugmentParams:
        """`params`, when this model can draw their heights (ValueError when a range left open on one side is empty
        with the model's default bound for the other side)."""
        self.variant_params("", params.seed, 0, params.height, params.min_height, params.max_height)
        return params

    def variant_params(self, key: str, seed: int, k: int, height: int | None = None,
                       min_height: int | None = None, max_height: int | None = None) -> tuple[int, np.ndarray]:
        """(height, z) of variant `k` of the source `key` under run seed `seed` (docs/ARCHITECTURE.md).

        The generator is `np.random.default_rng([seed, zlib.crc32(key.encode()), k])`. Unless `height` is fixed,
        the height is drawn first: from the sidecar's `height_values` / `height_weights` restricted to
        [min_height, max_height] (each bound defaults to the sidecar's `height_range`), or uniformly among the
        integers of that range when the restriction leaves nothing. Then `z = rng.standard_normal(z_dim,
        dtype=np.float32)`, then (models with a `noise` input) `noise = rng.standard_normal((3, 112, 96),
        dtype=np.float32)`. Depends on nothing else, so outputs do not depend on batching or order.
        """
        h, z, _ = self._draw(key, seed, k, height, min_height, max_height)
        return h, z

    def _draw(self, key: str, seed: int, k: int, height: int | None, min_height: int | None,
              max_height: int | None) -> tuple[int, np.ndarray, np.random.Generator]:
        """`variant_params` plus the generator, positioned after z (the noise comes next)."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, not {seed!r}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"variant index k must be an integer >= 0, not {k!r}")
        check_heights(height, min_height, max_height)
        rng = np.random.default_rng([int(seed), zlib.crc32(key.encode("utf-8")), int(k)])
        if height is None:
            lo, hi = self._height_bounds(min_height, max_height)
            dist = self._height_distribution(lo, hi)
            height = int(rng.choice(dist[0], p=dist[1])) if dist is not None else int(rng.integers(lo, hi + 1))
        z = rng.standard_normal(self.z_dim, dtype=np.float32)
        return int(height), z, rng

    # -- synthesis --------------------------------------------------------------------------------------------

    def prepare(self, faces: list[np.ndarray], *, keys: list[str], variants: int, seed: int,
                height: int | None = None, min_height: int | None = None, max_height: int | None = None,
                canvas: bool = False) -> "SynthesisPlan":
        """Check the arguments and build the model rows: one (face, z, scale) row per (face, variant) pair.

        The randomness of every row is fixed here, so how rows are later batched changes nothing.
        """
        if isinstance(variants, bool) or not isinstance(variants, (int, np.integer)) or variants < 1:
            raise ValueError(f"variants must be an integer >= 1, not {variants!r}")
        if len(keys) != len(faces):
            raise ValueError(f"got {len(faces)} faces but {len(keys)} keys; give one key per face")
        faces = check_faces(list(faces))
        # Validate the height arguments once, before any work.
        if faces:
            self.variant_params(keys[0], seed, 0, height, min_height, max_height)
        items = []  # (face index, k, height)
        zs, noises = [], []
        for i, key in enumerate(keys):
            for k in range(variants):
                h, z, rng = self._draw(key, seed, k, height, min_height, max_height)
                items.append((i, k, h))
                zs.append(z)
                if self._noise_shape is not None:
                    noises.append(rng.standard_normal(self._noise_shape, dtype=np.float32))
        if not items:
            return SynthesisPlan(items, {}, len(faces), int(seed), canvas)
        canvases = to_model_input(faces)
        feed = {
            "face": np.ascontiguousarray(np.repeat(canvases, variants, axis=0)),
            "z": np.stack(zs),
            "scale": np.array([[h / FACE_HEIGHT] for _, _, h in items], dtype=np.float32),
        }
        if noises:
            feed["noise"] = np.stack(noises)
        return SynthesisPlan(items, feed, len(faces), int(seed), canvas)

    def run(self, plan: "SynthesisPlan") -> np.ndarray:
        """The model's `lr` rows of a plan: through the micro-batcher when there is one, else in
        batches of up to `max_batch` rows."""
        if not plan.items:
            return np.zeros((0, 3, FACE_HEIGHT, 96), dtype=np.float32)
        if self.batcher is not None:
            return self.batcher.submit(plan.feed).result()
        n = len(plan.items)
        outs = [self._run_rows({k: v[i:i + self.max_batch] for k, v in plan.feed.items()})
                for i in range(0, n, self.max_batch)]
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    async def run_async(self, plan: "SynthesisPlan") -> np.ndarray:
        """`run` from an event loop without blocking it (needs the micro-batcher)."""
        if self.batcher is None:
            raise RuntimeError("run_async needs micro_batch=True")
        if not plan.items:
            return np.zeros((0, 3, FACE_HEIGHT, 96), dtype=np.float32)
        return await self.batcher.submit_async(plan.feed)

    def finish(self, plan: "SynthesisPlan", out: np.ndarray) -> list[list[Variant]]:
        """Model rows -> the variants (native LR size, or the 112x96 canvas): result[i][k] is variant k of face i."""
        results: list[list[Variant]] = [[] for _ in range(plan.n_faces)]
        if not plan.items:
            return results
        for (i, k, h), rgb in zip(plan.items, from_model_output(out)):
            native = np.ascontiguousarray(rgb[:h, :lr_width_for_height(h)])  # the capture sits top-left
            image = to_canvas(native) if plan.canvas else native
            results[i].append(Variant(image=image, k=k, seed=plan.seed, height=h, width=lr_width_for_height(h)))
        return results

    def synthesize(self, faces: list[np.ndarray], *, keys: list[str], variants: int, seed: int,
                   height: int | None = None, min_height: int | None = None, max_height: int | None = None,
                   canvas: bool = False) -> list[list[Variant]]:
        """`variants` LR variants of each face; result[i][k] is variant k of faces[i].

        `faces` are uint8 RGB arrays of any size (brought to the canvas with `to_canvas`); `keys[i]` names
        face i for the randomness (the relative path in bulk runs). (face, variant) pairs are run in batches
        of up to `max_batch` (with the micro-batcher, together with other callers' rows).
        """
        plan = self.prepare(faces, keys=keys, variants=variants, seed=seed, height=height, min_height=min_height,
                            max_height=max_height, canvas=canvas)
        return self.finish(plan, self.run(plan))


@dataclass
class SynthesisPlan:
    """What `Synthesizer.prepare` made: the (face index, k, height) of every row and the onnxruntime feed."""

    items: list[tuple[int, int, int]]
    feed: dict[str, np.ndarray]
    n_faces: int
    seed: int
    canvas: bool
