"""Error texts that leave the server (API answers, a job's `error`) name settings, never the server's paths."""
from __future__ import annotations

from lrface.service.jobs.archive_limits import shown


def redact_paths(text: str, settings) -> str:
    """`text` with the server's folders replaced by the settings that define them (longest first, so a folder
    inside another is named by its own setting)."""
    folders = {
        "$LRFACE_UPLOADS_ROOT": settings.uploads_root_path,
        "$LRFACE_JOBS_ROOT": settings.jobs_root_path,
        "$LRFACE_DATA_ROOT": settings.data_root_path,
        "$LRFACE_STATE_DIR": settings.state_dir.expanduser(),
    }
    for name, folder in sorted(folders.items(), key=lambda item: -len(str(item[1]))):
        text = text.replace(str(folder), name)
    return text


def error_text(exc: BaseException, settings, limit: int = 500) -> str:
    """`Type: message` of an exception for a client: server paths named by their settings, cut to `limit`."""
    return f"{type(exc).__name__}: {shown(redact_paths(str(exc), settings), limit)}"
