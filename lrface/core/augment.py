"""Bulk augmentation: K realistic LR variants of every face of a folder (or a .rec), resumable (torch-free).

The steps are plain functions so that the Celery bulk jobs (`lrface/service/tasks.py`) can run them on chunks
of a folder and get the same files as the CLI (`lrface augment`, `lrface/service/offline.py`):

    rel_paths = plan_sources(input_dir, output_dir)                  # once per job: sorted relative paths
    results = augment_sources(synth, input_dir, output_dir, chunk, params, ...)           # per chunk, idempotent
    write_errors(output_dir, [r for r in all_results if r["status"] == "failed"])         # once, at the end
    write_manifest(synth, output_dir, rel_paths, params)                                  # once, at the end

Every output depends only on (relative path, seed, k) and the model (docs/ARCHITECTURE.md, "Reproducible
randomness"), so chunks may run in any order, on any worker, and be retried: existing outputs are skipped and
every file is written to a temp name and renamed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from lrface.core import recordio
from lrface.core.face import encode_png, lr_width_for_height
from lrface.core.faces import READ_ERRORS, face_source, plan_records, read_failure, write_failure
from lrface.core.files import ERRORS_NAME, MANIFEST_NAME, REC_NAME, find_images, write_atomic, write_jsonl
from lrface.core.params import AugmentParams
from lrface.core.synthesizer import Synthesizer


def output_path(rel_path: str, k: int) -> str:
    """Output of variant k of a source, relative to the output folder: `<rel without extension>_<k>.png`."""
    stem = rel_path.rsplit(".", 1)[0] if "." in rel_path.rsplit("/", 1)[-1] else rel_path
    return f"{stem}_{k}.png"




def plan_sources(input_dir: str | os.PathLike, output_dir: str | os.PathLike, *,
                 errors: list[dict] | None = None) -> list[str]:
    """The sources of an augmentation run: image paths under input_dir relative to it, sorted.

    An output_dir inside input_dir is not walked. Two sources whose outputs would share a name (`a.jpg` and
    `a.png` in one folder) cannot both be written: the first in sorted order is kept, each other one is left
    out and, when `errors` is given, appended to it as a failure (reason "name_collision").
    A `.rec` input gives its image records' names (`<label>/<record id>`, in record id order); records that
    cannot be read are failures.
    """
    if recordio.is_recordio(input_dir):
        return plan_records(input_dir, errors)
    paths = find_images(input_dir, exclude=output_dir)
    kept, owner = [], {}
    for rel in paths:
        stem = output_path(rel, 0)
        if stem in owner:
            if errors is not None:
                errors.append({"source": rel, "status": "failed", "reason": "name_collision",
                               "message": f"its outputs would overwrite those of {owner[stem]}"})
            continue
        owner[stem] = rel
        kept.append(rel)
    return kept


def augment_sources(synth: Synthesizer, input_dir: str | os.PathLike, output_dir: str | os.PathLike,
                    rel_paths: list[str], params: AugmentParams, *, progress: Callable[[int], None] | None = None, align: str | None = "none",
                    detector=None) -> list[dict]:
    """Write the K variants of each source in `rel_paths`; one result dict per source, in order.

    Result: `{"source", "status": "done" | "skipped" | "failed", "outputs": [paths relative to output_dir]}`,
    plus `"reason"` (a short code such as "not_an_image", "corrupt", "too_small") and `"message"` when failed.
    A source is skipped when all its K outputs exist; otherwise its missing outputs are written (atomically).
    Unreadable sources are failures, never exceptions. Parameters the model cannot draw heights for raise
    ValueError before any work.
    `progress(n)` is called as sources finish (for a progress bar or a task's state). `align` / `detector`: as
    for `load_face` (default "none": the sources are aligned crops).
    """
    faces_in, output_dir = face_source(input_dir), Path(output_dir)
    synth.check(params)
    variants = params.variants
    results: dict[str, dict] = {}
    pending = []
    for rel in rel_paths:
        outputs = [output_path(rel, k) for k in range(variants)]
        # (os.path.isfile: False, not an error, for a name too long to exist)
        if all(os.path.isfile(output_dir / o) for o in outputs):
            results[rel] = {"source": rel, "status": "skipped", "outputs": outputs}
            if progress:
                progress(1)
        else:
            pending.append(rel)
    per_call = max(1, synth.max_batch // variants)
    for start in range(0, len(pending), per_call):
        faces, keys = [], []
        for rel in pending[start:start + per_call]:
            try:
                faces.append(faces_in.load(rel, align, detector)[0])
                keys.append(rel)
            except READ_ERRORS as exc:
                results[rel] = read_failure(rel, exc)
                if progress:
                    progress(1)
        made = synth.synthesize(faces, keys=keys, **params.synthesis()) if faces else []
        for rel, rel_variants in zip(keys, made):
            outputs = []
            try:
                for v in rel_variants:
                    out = output_path(rel, v.k)
                    if not os.path.isfile(output_dir / out):
                        write_atomic(output_dir / out, encode_png(v.image))
                    outputs.append(out)
            except OSError as exc:  # this source's outputs cannot be written (a name too long, ...): the run goes on
                results[rel] = write_failure(rel, exc)
            else:
                results[rel] = {"source": rel, "status": "done", "outputs": outputs}
            if progress:
                progress(1)
    return [results[rel] for rel in rel_paths]


def manifest_rows(synth: Synthesizer, output_dir: str | os.PathLike, rel_paths: list[str],
                  params: AugmentParams) -> list[dict]:
    """Manifest lines for the (source, k) pairs whose output exists, in (source, k) order.

    `height` / `width` are the simulated LR capture size (recomputed with `variant_params`, which is
    deterministic); with canvas outputs the image on disk is 112x96 but the line still gives that LR size.
    """
    output_dir, p = Path(output_dir), params
    rows = []
    for rel in sorted(rel_paths):
        for k in range(p.variants):
            out = output_path(rel, k)
            if not os.path.isfile(output_dir / out):
                continue
            h = int(p.height) if p.height is not None else synth.variant_params(rel, p.seed, k, None, p.min_height,
                                                                                p.max_height)[0]
            rows.append({"source": rel, "output": out, "k": k, "seed": int(p.seed), "height": h,
                         "width": lr_width_for_height(h)})
    return rows


def write_manifest(synth: Synthesizer, output_dir: str | os.PathLike, rel_paths: list[str],
                   params: AugmentParams) -> int:
    """Rewrite `output_dir/manifest.jsonl` from scratch (atomically) from the outputs on disk; returns its line count.

    Pass the whole run's `rel_paths` (from `plan_sources`), not a chunk: the file describes the whole folder.
    Idempotent: the same outputs on disk give the same bytes.
    """
    rows = manifest_rows(synth, output_dir, rel_paths, params)
    return write_jsonl(Path(output_dir) / MANIFEST_NAME, rows)


def write_errors(output_dir: str | os.PathLike, failures: list[dict]) -> None:
    """Rewrite `output_dir/errors.jsonl` with one `{"source", "reason", "message"}` line per failure (sorted by
    source); removes a stale file when there are none."""
    path = Path(output_dir) / ERRORS_NAME
    if not failures:
        path.unlink(missing_ok=True)
        return
    rows = [{"source": f["source"], "reason": f.get("reason", "unreadable"), "message": f.get("message", "")}
            for f in sorted(failures, key=lambda f: f["source"])]
    write_jsonl(path, rows)


def source_label(rel: str, labels: dict[str, int]) -> int:
    """The identity label of a source: a record's own label (`<label>/<id>`), else the index of its top folder."""
    if recordio.is_record_name(rel):
        return recordio.parse_record_name(rel)[0]
    return labels[rel.split("/", 1)[0] if "/" in rel else ""]


def write_record_dataset(staging: Path, output_dir: Path, rel_paths: list[str], manifest: list[dict]) -> int:
    """Pack the variants in `staging` (as listed by `manifest`, rows of `manifest_rows`) into
    OUTPUT_DIR/train.rec + train.idx in insightface's layout, with the source's label; rewrite the manifest with
    each variant's record id. Returns the number of image records."""
    folders = sorted({rel.split("/", 1)[0] if "/" in rel else "" for rel in rel_paths})
    labels = {name: i for i, name in enumerate(folders)}
    rows = sorted(manifest, key=lambda r: (source_label(r["source"], labels), r["source"], r["k"]))
    for record_id, row in enumerate(rows, 1):
        row["label"] = source_label(row["source"], labels)
        row["record"] = record_id

    def images():
        for row in rows:
            yield row["label"], (staging / row["output"]).read_bytes()

    recordio.write_insightface(output_dir / REC_NAME, images())
    for row in rows:
        row["output"] = REC_NAME
    write_jsonl(output_dir / MANIFEST_NAME, rows)
    return len(rows)
