"""Defaults are written once, in `Settings`: the README's settings table (and the defaults it quotes in its text) and
the API's parameter descriptions are checked against it."""
from __future__ import annotations

import re

from lrface.service.settings import Settings
from service_helpers import REPO

README = (REPO / "README.md").read_text()
TABLE_HEADING = "### Limits, backpressure and timeouts"
UNITS = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "Mpx": 1_000_000, "ms": 1, "s": 1, "x": 1}
_VALUE = re.compile(r"^`?(?:(?P<word>on|off|true|false)`?|(?P<number>\d[\d ]*(?:\.\d+)?)\s*(?P<unit>KiB|MiB|GiB|Mpx|ms|s|x)?\b)")


def _default(name: str):
    field = Settings.model_fields[name.lower()]
    return field.default_factory() if field.default_factory is not None else field.default


def _value(text: str):
    """The value a README cell starts with (`10 MiB per image` -> 10485760, `on` -> True), or None."""
    m = _VALUE.match(text.strip())
    if m is None:
        return None
    if m["word"]:
        return m["word"] in ("on", "true")
    number = float(m["number"].replace(" ", ""))
    return number * UNITS[m["unit"]] if m["unit"] else number


def _table_rows() -> list[tuple[list[str], list[str], str]]:
    """(setting names, default cells, beyond-it cell) of each row of the README's settings table."""
    section = README[README.index(TABLE_HEADING):]
    rows = []
    for line in section.splitlines()[3:]:
        if not line.startswith("| `"):
            break
        names_cell, default_cell, beyond = [c.strip() for c in line.strip().strip("|").split(" | ", 2)]
        names = [n.strip().strip("`") for n in names_cell.split(" / ")]
        base = names[0].rsplit("_", 1)[0]
        names = [names[0]] + [base + n if n.startswith("_") else n for n in names[1:]]
        defaults = default_cell.split(" / ") if len(names) > 1 else [default_cell]
        rows.append((names, defaults, beyond))
    return rows


def test_the_settings_table_quotes_the_settings_defaults():
    rows = _table_rows()
    assert len(rows) >= 15, "the settings table was not found"
    checked = []
    for names, defaults, _ in rows:
        assert len(names) == len(defaults), (names, defaults)
        for name, cell in zip(names, defaults):
            assert name.lower() in Settings.model_fields, f"README names LRFACE_{name}, which is no setting"
            value = _value(cell)
            assert value is not None, f"no default value at the start of {name}'s cell: {cell!r}"
            assert value == _default(name), f"README: LRFACE_{name} = {cell!r}; Settings: {_default(name)!r}"
            checked.append(name)
    assert "MAX_ARCHIVE_TOTAL_BYTES" in checked and "BODY_IDLE_TIMEOUT" in checked


def test_defaults_quoted_in_the_readme_text_are_the_settings_defaults():
    # `NAME` (value) and (`NAME`, value), anywhere in the README, for every name that is a setting
    quoted = re.findall(r"`(?:LRFACE_)?([A-Z][A-Z0-9_]+)` \((\d[\d ]*)\)", README)
    quoted += re.findall(r"\(`(?:LRFACE_)?([A-Z][A-Z0-9_]+)`, (\d[\d ]*)\)", README)
    quoted = [(name, value) for name, value in quoted if name.lower() in Settings.model_fields]
    assert {"CHUNK_SIZE", "RETRY_AFTER_S", "JOBS_RETRY_AFTER_S", "SYNTH_MAX_BATCH"} <= {n for n, _ in quoted}
    for name, value in quoted:
        assert float(value.replace(" ", "")) == _default(name), f"README quotes LRFACE_{name} = {value}"


def test_the_api_describes_the_settings_defaults():
    from lrface.service.api import create_app

    schema = create_app(Settings(load_models_on_startup=False)).openapi()
    text = str(schema)
    for name, value in re.findall(r"LRFACE_([A-Z][A-Z0-9_]+) \((\d+)\)", text):
        assert float(value) == _default(name), f"the API describes LRFACE_{name} as {value}"
