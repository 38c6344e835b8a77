"""A strict reader of the plain multipart/form-data bodies that clients send for one or a few small uploads.

The hot path of `POST /v1/embed` uses it instead of FastAPI's form handling (python-multipart, UploadFile objects
and pydantic validation cost more than the rest of a one-face request). It only says yes to the plain shape
(`form-data; name="..."` and `filename="..."` in printable ASCII, the given field names, no preamble, parts
split by the boundary only where the boundary is meant to be, no epilogue); for anything else it returns None
and the route falls back to FastAPI's parsing, which also produces every error answer. So a request gets the same
answer whichever path reads it.
"""
from __future__ import annotations

import re

_CONTENT_TYPE = re.compile(rb'multipart/form-data;[ \t]*boundary=("?)([0-9A-Za-z\'()+_,\-./:=?]{1,70})\1[ \t]*', re.I)
_DISPOSITION = re.compile(rb'form-data; name="([A-Za-z_][A-Za-z0-9_]*)"(?:; filename="([\x20\x21\x23-\x5b\x5d-\x7e]+)")?')


def parse_plain_multipart(content_type: bytes, body: bytes, names: frozenset[str]) -> list[tuple[str, str | None, bytes]] | None:
    """[(field name, file name or None for a plain field, value)] in body order, or None when the body is not of
    the plain shape (or has a field outside `names`)."""
    match = _CONTENT_TYPE.fullmatch(content_type)
    if match is None:
        return None
    delimiter = b"--" + match.group(2)
    separator = b"\r\n" + delimiter
    if not body.startswith(delimiter + b"\r\n"):
        return None
    end = body.rfind(separator + b"--")
    if end < 0 or body[end + len(separator) + 2:] not in (b"", b"\r\n"):
        return None
    parts = body[len(delimiter) + 2:end].split(separator + b"\r\n")
    # The delimiter may appear nowhere else (a parser that reads it elsewhere as a boundary would see other parts).
    if body.count(separator) != len(parts) or body.count(delimiter) != len(parts) + 1:
        return None
    fields = []
    for part in parts:
        head, found, value = part.partition(b"\r\n\r\n")
        if not found:
            return None
        disposition = None
        for line in head.split(b"\r\n"):
            key, colon, text = line.partition(b":")
            key = key.lower()
            if not colon:
                return None
            if key == b"content-disposition" and disposition is None:
                disposition = text.strip()
            elif key != b"content-type":
                return None
        field = _DISPOSITION.fullmatch(disposition or b"")
        if field is None or field.group(1).decode() not in names:
            return None
        filename = field.group(2)
        fields.append((field.group(1).decode(), filename.decode() if filename is not None else None, value))
    return fields
