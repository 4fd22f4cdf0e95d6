"""Finding run evaluation CSVs and taking one score from each.

A run writes `outputs/eval_result/<run_name>.csv` with the header
`step,episode_avg_return` (more columns may follow) and one row per evaluated
checkpoint. Run names are `<game>-<METHOD>-seed_<N>`, e.g. `Boxing-GITSTORM-seed_0`
or `cartpole_balance-GITSTORM_DMC-seed_3`. A manifest CSV can name runs whose file
names do not follow that pattern.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .benchmarks import AggregateError, BenchmarkData

REQUIRED_COLUMNS = ("step", "episode_avg_return")

# Columns of the per-run score frame that load_run_scores returns.
RUN_COLUMNS = ["run_name", "method", "task", "seed", "step", "raw_score", "path"]

# Parsed from the right, so a game or task name may itself contain '-'; the method is
# the single '-'-free part before the seed.
RUN_NAME_PATTERN = re.compile(r"^(?P<task>.+)-(?P<method>[^-]+)-seed_?(?P<seed>\d+)$")


@dataclass(frozen=True)
class RunSource:
    """One run's evaluation CSV and what it was a run of."""

    run_name: str
    task: str  # as written; resolved against the benchmark later
    method: str
    seed: int
    path: Path


def parse_run_name(run_name: str) -> tuple[str, str, int]:
    """Splits `<game>-<METHOD>-seed_<N>` into (game, method, seed)."""
    match = RUN_NAME_PATTERN.match(run_name)
    if match is None:
        raise AggregateError(
            f"run name {run_name!r} does not look like '<game>-<METHOD>-seed_<N>' "
            "(e.g. 'Boxing-GITSTORM-seed_0'); rename the file or list it in a --manifest "
            "with game, method and seed columns"
        )
    return match["task"], match["method"], int(match["seed"])


def discover_runs(results_dir: Path) -> list[RunSource]:
    """Every `*.csv` directly inside `results_dir`, named `<game>-<METHOD>-seed_<N>.csv`."""
    if not results_dir.is_dir():
        raise AggregateError(f"results directory {str(results_dir)!r} does not exist or is not a directory")
    paths = sorted(results_dir.glob("*.csv"))
    if not paths:
        raise AggregateError(
            f"no evaluation CSVs (*.csv) found in {str(results_dir)!r}; expected files "
            "'<game>-<METHOD>-seed_<N>.csv' as written by eval.py"
        )
    return [RunSource(p.stem, *parse_run_name(p.stem), path=p) for p in paths]


def _cell(row: pd.Series, column: str) -> str:
    """A manifest cell as stripped text; '' when the column is absent or the cell empty."""
    if column not in row.index or pd.isna(row[column]):
        return ""
    return str(row[column]).strip()


def read_manifest(manifest: Path, results_dir: Path) -> list[RunSource]:
    """Runs listed in a manifest CSV.

    Columns: `run_name` and/or `csv` (a path; relative paths are relative to the
    manifest's folder), and optionally `game` (or `task`), `method` and `seed`. Without
    `csv` the file is `<results_dir>/<run_name>.csv`; game, method and seed left empty
    are parsed from the run name (or, without one, from the CSV's file name).
    """
    try:
        table = pd.read_csv(manifest, dtype=str)
    except FileNotFoundError:
        raise AggregateError(f"manifest {str(manifest)!r} does not exist") from None
    except pd.errors.EmptyDataError:
        raise AggregateError(
            f"manifest {str(manifest)!r} is empty; expected a header such as 'run_name,game,method,seed'"
        ) from None
    table.columns = [c.strip() for c in table.columns]
    if not {"run_name", "csv"} & set(table.columns):
        raise AggregateError(
            f"manifest {str(manifest)!r} has columns {list(table.columns)}; expected a 'run_name' or "
            "'csv' column, optionally with 'game' (or 'task'), 'method' and 'seed'"
        )
    if table.empty:
        raise AggregateError(f"manifest {str(manifest)!r} lists no runs")
    sources = []
    for line, (_, row) in enumerate(table.iterrows(), start=2):
        csv_cell, name = _cell(row, "csv"), _cell(row, "run_name")
        if not csv_cell and not name:
            raise AggregateError(f"manifest {str(manifest)!r} line {line}: needs a run_name or a csv path")
        path = Path(csv_cell) if csv_cell else results_dir / f"{name}.csv"
        if csv_cell and not path.is_absolute():
            path = manifest.parent / path
        name = name or path.stem
        task = _cell(row, "game") or _cell(row, "task")
        method, seed = _cell(row, "method"), _cell(row, "seed")
        if not (task and method and seed):
            parsed_task, parsed_method, parsed_seed = parse_run_name(name)
            task, method, seed = task or parsed_task, method or parsed_method, seed or str(parsed_seed)
        if not re.fullmatch(r"\d+", seed):
            raise AggregateError(f"manifest {str(manifest)!r} line {line}: seed {seed!r} is not a non-negative integer")
        sources.append(RunSource(name, task, method, int(seed), path))
    return sources


def read_eval_csv(path: Path) -> pd.DataFrame:
    """An evaluation CSV with numeric `step` and `episode_avg_return` columns, checked."""
    expected = "expected a header starting 'step,episode_avg_return' (more columns may follow)"
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise AggregateError(f"evaluation CSV {str(path)!r} does not exist") from None
    except pd.errors.EmptyDataError:
        raise AggregateError(f"evaluation CSV {str(path)!r} is empty; {expected}") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise AggregateError(
            f"evaluation CSV {str(path)!r} lacks column(s) {missing}: found header {list(table.columns)}; {expected}"
        )
    for column in REQUIRED_COLUMNS:
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna()
        if bad.any():
            row = bad.idxmax()
            line = int(row) + 2  # +1 for the header, +1 for 1-based lines
            raise AggregateError(
                f"evaluation CSV {str(path)!r} line {line}: {column} is {table[column][row]!r}, expected a number"
            )
        table[column] = values
    return table


def select_score(table: pd.DataFrame, step: int | None = None) -> tuple[int, float] | None:
    """(step, episode_avg_return) of the row with the largest step (at most `step` if given).

    When several rows share that step the last one wins: a re-run evaluation appends
    to the CSV, so the later row is the newer result. None when no row qualifies.
    """
    rows = table if step is None else table[table["step"] <= step]
    if rows.empty:
        return None
    last = rows[rows["step"] == rows["step"].max()].iloc[-1]
    return int(last["step"]), float(last["episode_avg_return"])


def load_run_scores(
    sources: list[RunSource], data: BenchmarkData, step: int | None
) -> tuple[pd.DataFrame, list[str]]:
    """One score per run, and warnings for runs that had none.

    Returns a frame with the RUN_COLUMNS (task is the canonical id). Unknown task names raise, all of them at once.
    """
    resolved = data.resolve_tasks([s.task for s in sources])
    rows, warnings, seen = [], [], {}
    for source in sources:
        task = resolved[source.task]
        key = (source.method, task, source.seed)
        if key in seen:
            raise AggregateError(
                f"two runs of {source.method} on {task} with seed {source.seed}: "
                f"{str(seen[key])!r} and {str(source.path)!r}; keep one"
            )
        seen[key] = source.path
        chosen = select_score(read_eval_csv(source.path), step)
        if chosen is None:
            where = "" if step is None else f" at or before step {step}"
            warnings.append(f"run {source.run_name}: no evaluation row{where} in {source.path}; left out")
            continue
        rows.append(
            {
                "run_name": source.run_name,
                "method": source.method,
                "task": task,
                "seed": source.seed,
                "step": chosen[0],
                "raw_score": chosen[1],
                "path": str(source.path),
            }
        )
    return pd.DataFrame(rows, columns=RUN_COLUMNS), warnings
