"""`load_results`: every result record of every run folder under a folder, as one pandas DataFrame.

A run folder holds results.json (records), config.json (resolved config, library version, backbone id) and,
for sweep runs, sweep.json (stage, variant, table label). Reports, plots and users' own analyses all start
from this frame, so a number in a table is a groupby away from the records it came from.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from vlprompt.artifacts.files import CONFIG_NAME, RESULTS_NAME, SPEC_NAME
from vlprompt.core.errors import VlpromptError
from vlprompt.core.io import read_json

log = logging.getLogger(__name__)

# Columns added to each record: where it came from and how a sweep labelled it.
RUN_COLUMNS = ("run", "path", "backbone", "label", "stage", "variant", "sweep")


def _read_json(path: Path) -> object:
    try:
        return read_json(path, "re-run that run or remove its folder.")
    except OSError as error:
        raise VlpromptError(f"Cannot read '{path}' ({error}); re-run that run or remove its folder.") from None


def _integer_columns(rows: list[dict]) -> list[str]:
    """Columns whose values are all ints (or missing): kept as nullable Int64 rather than float with NaN."""
    kinds: dict[str, set] = {}
    for row in rows:
        for key, value in row.items():
            if value is not None:
                kinds.setdefault(key, set()).add(type(value))
    return [key for key, types in kinds.items() if types == {int}]


def load_results(folder: str | Path) -> pd.DataFrame:
    """One row per result record of every run folder under ``folder`` (a sweep, a protocol's output or a
    single run folder), in folder order.

    Record fields (method, dataset, shots, seed, split, accuracy as a fraction, ...) become columns, plus
    ``run`` (the folder relative to ``folder``, as traced in reports), ``path`` (the folder), ``backbone``
    (config.json's backbone id), ``label`` / ``stage`` / ``variant`` from sweep.json (defaults: the
    method, "run", "") and ``sweep`` (whether the folder has a sweep.json: plain runs that fill the same
    table cell are reported as separate rows, sweep runs doing so are an error). A results.json without
    config.json beside it is not a run (e.g. the demo's summary of its runs) and is skipped: every number in
    a table must trace to a folder holding its resolved config.
    """
    root = Path(folder)
    if not root.is_dir():
        raise VlpromptError(f"Runs folder '{root}' does not exist or is not a folder.")
    rows: list[dict] = []
    for results_path in sorted(root.rglob(RESULTS_NAME)):
        run_dir = results_path.parent
        name = run_dir.relative_to(root).as_posix()
        if not (run_dir / CONFIG_NAME).exists():
            log.info(
                "skipping %s: no %s beside its %s, so it is not a run folder", name, CONFIG_NAME, RESULTS_NAME
            )
            continue
        results = _read_json(results_path)
        config = _read_json(run_dir / CONFIG_NAME)
        spec = _read_json(run_dir / SPEC_NAME) if (run_dir / SPEC_NAME).exists() else {}
        if not isinstance(results, list) or not isinstance(config, dict) or not isinstance(spec, dict):
            raise VlpromptError(
                f"'{results_path}' or its {CONFIG_NAME} / {SPEC_NAME} is not what a run writes (a list of "
                "records and mappings); re-run that run or remove its folder."
            )
        for record in results:
            rows.append(
                {
                    **record,
                    "run": name,
                    "path": str(run_dir),
                    "backbone": str(config.get("backbone_id") or record.get("backbone")),
                    "label": str(spec.get("label") or record.get("method")),
                    "stage": str(spec.get("stage", "run")),
                    "variant": str(spec.get("variant", "")),
                    "sweep": (run_dir / SPEC_NAME).exists(),
                }
            )
    if not rows:
        raise VlpromptError(
            f"No run results under '{root}': no folder there holds a {RESULTS_NAME} with its {CONFIG_NAME}. "
            "Point at a sweep's output folder, a folder of run folders or one run folder."
        )
    frame = pd.DataFrame.from_records(rows)
    frame = frame.astype({column: "Int64" for column in _integer_columns(rows)})
    return frame[[*RUN_COLUMNS, *(c for c in frame.columns if c not in RUN_COLUMNS)]]
