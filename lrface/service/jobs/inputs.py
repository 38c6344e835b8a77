"""A job's input: a folder under the data root (checked: no way out of it) and the sources planned from it."""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path, PurePosixPath

from lrface.core import recordio
from lrface.service.jobs.archive_limits import shown
from lrface.service.jobs.params import JobInputError


def resolve_input_dir(data_root: Path, relative: str) -> Path:
    """A folder named relative to the data root, checked: relative, no '..', inside the root after symlinks."""
    text = (relative or "").strip()
    if not text or "\x00" in text:
        raise JobInputError(400, "invalid_path", "input_dir must be a non-empty path relative to the data root")
    if text.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", text) or PurePosixPath(text).is_absolute():
        raise JobInputError(400, "invalid_path", "input_dir must be relative to the data root, not an absolute path")
    parts = re.split(r"[\\/]+", text)
    if ".." in parts:
        raise JobInputError(400, "invalid_path", "input_dir must not contain '..'")
    root = data_root.resolve()
    try:
        target = _resolve(root / Path(*[p for p in parts if p not in ("", ".")] or ["."]))
        if not _is_within(target, root):
            raise JobInputError(403, "forbidden_path", "input_dir resolves outside the data root")
        is_dir = target.is_dir()
        is_rec = not is_dir and recordio.is_recordio(target)
        if is_rec:  # its index is read too: it must not lead outside the root either
            idx = recordio.index_path(target)
            if idx.exists() and not _is_within(_resolve(idx), root):
                raise JobInputError(403, "forbidden_path", "the .idx beside the .rec resolves outside the data root")
    except OSError as exc:  # a name too long, a loop of links, ...: not a folder we can use
        raise JobInputError(400, "invalid_path", f"input_dir cannot be used: {exc.strerror or exc}") from None
    if not is_dir and not is_rec:
        raise JobInputError(400, "input_not_found",
                            f"input_dir {text[:200]!r} is not a folder or a .rec file under the data root")
    return target


def _resolve(path: Path) -> Path:
    """`path.resolve()`, with a loop of links an OSError (Python before 3.13 raises RuntimeError for it)."""
    try:
        return path.resolve()
    except RuntimeError:
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP)) from None


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def is_utf8(name: str) -> bool:
    # Names read from disk or a tar header that are not UTF-8 carry lone surrogates (surrogateescape).
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def display_name(name: str) -> str:
    """A name that can go into JSON and Redis: bytes that are not UTF-8 become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def plan_job_sources(input_dir: Path, output_dir: Path, allowed_root: Path,
                     kind: str = "augment") -> tuple[list[str], list[dict]]:
    """Sources of a job and up-front failures: name collisions (augmentation), files that resolve outside the
    allowed root, and for a .rec input its unreadable records. Embedding jobs take what `lrface embed` takes."""
    from lrface.core.augment import plan_sources
    from lrface.core.embed import plan_embed_sources

    failures: list[dict] = []
    if recordio.is_recordio(input_dir):
        try:
            names = plan_sources(input_dir, output_dir, errors=failures)
        except (OSError, ValueError) as exc:
            raise JobInputError(400, "bad_recordio", "the RecordIO dataset cannot be read: "
                                f"{exc.strerror if isinstance(exc, OSError) and exc.strerror else shown(str(exc))}") from None
        return names, failures
    if kind == "embed":
        planned = plan_embed_sources(input_dir, errors=failures)
    else:
        planned = plan_sources(input_dir, output_dir, errors=failures)
    root = allowed_root.resolve()
    sources = []
    for rel in planned:
        try:
            resolved = _resolve(input_dir / rel)
        except OSError as exc:
            failures.append({"source": rel, "status": "failed", "reason": "unreadable",
                             "message": f"the file cannot be read: {exc.strerror or type(exc).__name__}"})
            continue
        if not is_utf8(rel):
            failures.append({"source": display_name(rel), "status": "failed", "reason": "bad_name",
                             "message": "the file name is not valid UTF-8"})
        elif _is_within(resolved, root):
            sources.append(rel)
        else:
            failures.append({"source": rel, "status": "failed", "reason": "outside_root",
                             "message": "the file is a link to a place outside the data root"})
    for failure in failures:  # name collisions may carry such names too
        failure["source"] = display_name(failure["source"])
    return sources, failures


def chunked(items: list[str], size: int) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]
