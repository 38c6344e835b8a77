"""The offline commands on folders: `lrface augment`, `lrface synth` and `lrface embed` (onnxruntime, no torch).

Argument parsing and reporting only: the work is `lrface.core.augment` and `lrface.core.embed`, which the bulk
jobs run too.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from lrface.core import recordio
from lrface.core.augment import (augment_sources, manifest_rows, plan_sources, write_errors, write_manifest,
                                 write_record_dataset)
from lrface.core.embed import embed_sources, embeddings_npz_bytes, plan_embed_sources
from lrface.core.faces import default_detector
from lrface.core.files import ERRORS_NAME, IMAGE_EXTENSIONS, MANIFEST_NAME, REC_NAME, write_atomic
from lrface.core.embedder import Embedder
from lrface.core.onnx_model import ModelNotFoundError, execution_providers
from lrface.core.params import AugmentParams
from lrface.core.synthesizer import Synthesizer


class _Parser(argparse.ArgumentParser):
    """argparse with exit status 1 on invalid arguments (the lrface offline commands' convention)."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


class _UsageError(Exception):
    pass


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value


def _add_model_args(p: argparse.ArgumentParser, name: str, default_batch: int) -> None:
    if name == "embedder":
        p.add_argument("--model", metavar="NAME|PATH", help="a shipped embedder by name: full (the default, "
                       "lrface/models/weights/embedder.onnx) or lite (embedder_lite.onnx: a third of the compute, "
                       "see its model card), or the path of an ONNX model (its JSON sidecar next to it)")
    else:
        p.add_argument("--model", metavar="PATH", help=f"ONNX model (its JSON sidecar next to it); default: the shipped lrface/models/weights/{name}.onnx")
    p.add_argument("--batch-size", type=_positive, default=default_batch, metavar="N", help=f"faces per model call (default {default_batch})")
    p.add_argument("--threads", type=_positive, metavar="N", help="onnxruntime intra-op threads (default: all cores)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="execution provider (default auto: CUDA when available)")


def _add_synthesis_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variants", "-k", type=_positive, required=True, metavar="K", help="LR variants per face")
    p.add_argument("--seed", type=_non_negative, default=0, metavar="S", help="run seed (default 0); same seed, same files")
    p.add_argument("--height", type=int, metavar="H", help="fixed LR height in px (default: drawn per variant from the model's height distribution)")
    p.add_argument("--min-height", type=int, metavar="A", help="lowest LR height to draw")
    p.add_argument("--max-height", type=int, metavar="B", help="highest LR height to draw")
    p.add_argument("--canvas", action="store_true", help="write 112x96 canvases instead of native LR sizes")
    p.add_argument("--align", choices=("none", "auto"), default="none",
                   help="none (default): the images are aligned face crops; auto: detect and align the most prominent "
                        "face of each image first (RetinaFace, as the API's align=auto)")
    _add_model_args(p, "mrgan", 32)


def _augment_params(args) -> AugmentParams:
    """The command's AugmentParams; a usage error naming the flags when they are invalid."""
    try:
        return AugmentParams(args.variants, args.seed, args.height, args.min_height, args.max_height, args.canvas)
    except ValueError as exc:
        raise _UsageError(re.sub(r"\b(min_height|max_height|height)\b", lambda m: "--" + m[1].replace("_", "-"),
                                 str(exc))) from None


def _load_synthesizer(args, params: AugmentParams) -> Synthesizer:
    synth = Synthesizer(args.model, providers=execution_providers(args.device), threads=args.threads,
                        max_batch=args.batch_size)
    try:
        synth.check(params)
    except ValueError as exc:
        raise _UsageError(str(exc).replace("min_height", "--min-height").replace("max_height", "--max-height")) from None
    return synth


def _load_detector(args, align: str | None):
    """The face detector, unless every image is taken as an aligned crop: loaded now for --align auto, on the
    first image that needs it without --align (a folder or .rec of aligned crops never loads it)."""
    if align == "none":
        return None
    detector = default_detector(providers=execution_providers(args.device), threads=args.threads)
    if align == "auto":
        detector.load()
    return detector


def _run(prog: str, body: Callable[[], int]) -> int:
    try:
        return body()
    except (_UsageError, ModelNotFoundError, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1


def main_augment(argv: list[str] | None = None) -> int:
    p = _Parser(prog="lrface augment", description="Write K realistic LR variants of every face of INPUT (a folder "
                "or a .rec) to OUTPUT_DIR/<relative path without extension>_<k>.png, plus OUTPUT_DIR/manifest.jsonl. "
                "Resumable: faces whose K outputs exist are skipped.")
    p.add_argument("input_dir", metavar="INPUT", help="folder of aligned HR faces, or photos with --align auto "
                   "(walked recursively), or a RecordIO DATA.rec (its DATA.idx beside it): records are named "
                   "<label>/<record id>")
    p.add_argument("output_dir", metavar="OUTPUT_DIR", help="where the variants go (may be inside INPUT_DIR; it is not walked)")
    p.add_argument("--out-format", choices=("png", "rec"), default="png",
                   help="png (default): one file per variant; rec: OUTPUT_DIR/train.rec + train.idx (insightface's "
                   "layout, the source's label kept) and the manifest")
    _add_synthesis_args(p)
    args = p.parse_args(argv)

    def body() -> int:
        input_dir, output_dir = Path(args.input_dir), Path(args.output_dir)
        is_rec = recordio.is_recordio(input_dir)
        if not input_dir.is_dir() and not is_rec:
            raise _UsageError(f"input {input_dir} does not exist or is neither a folder nor a .rec file")
        if output_dir.resolve() == input_dir.resolve():
            raise _UsageError("OUTPUT_DIR must differ from INPUT_DIR")
        failures: list[dict] = []
        try:
            sources = plan_sources(input_dir, output_dir, errors=failures)
        except (OSError, ValueError) as exc:
            raise _UsageError(f"cannot read {input_dir}: {exc}") from None
        if not sources and not failures:
            raise _UsageError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {input_dir}" if not is_rec
                              else f"no image records in {input_dir}")
        params = _augment_params(args)
        synth = _load_synthesizer(args, params)
        detector = _load_detector(args, args.align)
        output_dir.mkdir(parents=True, exist_ok=True)
        final_dir = output_dir
        if args.out_format == "rec":
            output_dir = final_dir / ".variants"  # PNGs first (resumable), packed into train.rec at the end
        for f in failures:
            tqdm.write(f"lrface augment: skipping {f['source']}: {f['message']}", file=sys.stderr)
        with tqdm(total=len(sources), unit="face", desc="augment", file=sys.stderr) as bar:
            # Chunks bound the work between reports so failures show up as they happen.
            results = []
            for start in range(0, len(sources), 256):
                chunk = augment_sources(synth, input_dir, output_dir, sources[start:start + 256], params,
                                        progress=bar.update, align=args.align, detector=detector)
                for r in chunk:
                    if r["status"] == "failed":
                        tqdm.write(f"lrface augment: cannot read {r['source']}: {r['message']} ({r['reason']})", file=sys.stderr)
                results += chunk
        failures += [r for r in results if r["status"] == "failed"]
        write_errors(final_dir, failures)
        if args.out_format == "rec":
            rows = manifest_rows(synth, output_dir, sources, params)
            lines = write_record_dataset(output_dir, final_dir, sources, rows)
            shutil.rmtree(output_dir, ignore_errors=True)
            where = f"{final_dir / REC_NAME} (+ .idx, {final_dir / MANIFEST_NAME})"
        else:
            lines = write_manifest(synth, output_dir, sources, params)
            where = str(output_dir / MANIFEST_NAME)
        done = sum(r["status"] == "done" for r in results)
        skipped = sum(r["status"] == "skipped" for r in results)
        print(f"augment: {done} done, {skipped} skipped, {len(failures)} failed; {lines} variants in {where}"
              + (f"; failures in {final_dir / ERRORS_NAME}" if failures else ""))
        return 0

    return _run("lrface augment", body)


def main_synth(argv: list[str] | None = None) -> int:
    p = _Parser(prog="lrface synth", description="Write K realistic LR variants of one aligned HR face to "
                "DIR/<stem>_<k>.png, plus DIR/manifest.jsonl. Same files as `lrface augment` on its folder.")
    p.add_argument("image", metavar="IMAGE", help="aligned HR face image, or a photo with --align auto")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _add_synthesis_args(p)
    args = p.parse_args(argv)

    def body() -> int:
        image = Path(args.image)
        if not image.is_file():
            raise _UsageError(f"image {image} does not exist")
        params = _augment_params(args)
        synth = _load_synthesizer(args, params)
        out = Path(args.out)
        (result,) = augment_sources(synth, image.parent, out, [image.name], params, align=args.align,
                                    detector=_load_detector(args, args.align))
        if result["status"] == "failed":
            print(f"lrface synth: cannot read {image}: {result['message']} ({result['reason']})", file=sys.stderr)
            return 1
        write_manifest(synth, out, [image.name], params)
        for o in result["outputs"]:
            print(out / o)
        return 0

    return _run("lrface synth", body)


def main_embed(argv: list[str] | None = None) -> int:
    p = _Parser(prog="lrface embed", description="Embed every face of INPUT (a folder or a .rec) into an .npz with "
                "`paths` (relative, '/'-separated), `embeddings` (N x D float32, L2-normalised) and `model_id` (the embedder's).")
    p.add_argument("input_dir", metavar="INPUT", help="folder of faces (any sizes, walked recursively), or a RecordIO "
                   "DATA.rec (its DATA.idx beside it): paths are then <label>/<record id>")
    p.add_argument("--out", required=True, metavar="FILE.npz", help="output file")
    p.add_argument("--align", choices=("none", "auto"),
                   help="none: every image is an aligned face crop; auto: detect and align the most prominent face of "
                        "each (RetinaFace, as the API's align=auto). Default: none for images shaped like an aligned "
                        "112x96 crop (width within 4%% or 1 px of height x 96/112), auto for the others, as the API "
                        "does without align; an image where no face is found is reported and left out")
    _add_model_args(p, "embedder", 64)
    args = p.parse_args(argv)

    def body() -> int:
        input_dir, out = Path(args.input_dir), Path(args.out)
        is_rec = recordio.is_recordio(input_dir)
        if not input_dir.is_dir() and not is_rec:
            raise _UsageError(f"input {input_dir} does not exist or is neither a folder nor a .rec file")
        failures: list[dict] = []
        try:
            sources = plan_embed_sources(input_dir, errors=failures)
        except (OSError, ValueError) as exc:
            raise _UsageError(f"cannot read {input_dir}: {exc}") from None
        for f in failures:
            print(f"lrface embed: skipping {f['source']}: {f['message']}", file=sys.stderr)
        if not sources:
            raise _UsageError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {input_dir}" if not is_rec
                              else f"no image records in {input_dir}")
        embedder = Embedder(args.model, providers=execution_providers(args.device), threads=args.threads,
                            max_batch=args.batch_size)
        detector = _load_detector(args, args.align)
        with tqdm(total=len(sources), unit="face", desc="embed", file=sys.stderr) as bar:
            paths, embeddings, read_failures = embed_sources(embedder, input_dir, sources, args.batch_size,
                                                             progress=bar.update, align=args.align,
                                                             detector=detector)
        for r in read_failures:
            print(f"lrface embed: cannot read {r['source']}: {r['message']} ({r['reason']})", file=sys.stderr)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, embeddings_npz_bytes(paths, embeddings, embedder.model_id))
        print(f"embed: {len(paths)} faces ({embedder.model_id}, dim {embedder.dim}) -> {out}; "
              f"{len(failures) + len(read_failures)} failed")
        return 0

    return _run("lrface embed", body)


def main(argv: list[str] | None = None) -> int:
    """`python -m lrface.service.offline augment|synth|embed ...` (the same as `lrface ...`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"augment": main_augment, "synth": main_synth, "embed": main_embed}
    if not argv or argv[0] not in commands:
        print("usage: python -m lrface.service.offline {augment,synth,embed} ...", file=sys.stderr)
        return 1
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
