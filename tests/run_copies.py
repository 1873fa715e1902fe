"""Derived copies of the fixture runs, written with fwbench's own writers (report and compare
tests)."""

from __future__ import annotations

from pathlib import Path

from fwbench.harness import records


def derived_run(tmp_path: Path, src: Path, name: str, edit=None, edit_meta=None) -> Path:
    """A copy of the run ``src`` written with fwbench's own writers; ``edit(record)`` may
    change a record in place or return False to drop it, ``edit_meta(meta)`` run.json."""
    run = records.load_run(src)
    out = tmp_path / name
    out.mkdir()
    if edit_meta:
        edit_meta(run.meta)
    records.write_meta(out, run.meta)
    for r in run.records:
        if edit is None or edit(r) is not False:
            records.append_record(out / records.RESULTS, r)
    return out
