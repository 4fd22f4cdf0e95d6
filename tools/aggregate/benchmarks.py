"""Benchmark definitions and the published numbers shipped beside this file.

Data files (transcribed from the GIT-STORM paper, arXiv 2410.07836, appendix C, except
the REM entries):
  atari100k_scores.csv   Table 5: per game the random and human reference scores
                         (as printed in the paper, rounded to integers, and the precise
                         DQN Zoo values they were rounded from) and the published scores
                         of SimPLe, TWM, IRIS, DreamerV3, STORM and GIT-STORM; then REM's
                         (Cohen et al., ICML 2024): the mean over its 5 seeds in the
                         official repository's results/data/REM.json (REM_SPEC section 6).
  dmc_scores.csv         Table 6: per task the published scores of SAC, CURL, PPO,
                         DrQ-v2, DreamerV3, STORM and GIT-STORM.
  paper_aggregates.csv   The aggregate rows of both tables, as published; REM's rows are
                         rliable point estimates over REM.json's 5 runs x 26 games,
                         computed by the author of REM_SPEC (section 6), not printed in
                         a paper table.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

DATA_DIR = Path(__file__).resolve().parent


class AggregateError(ValueError):
    """Bad input to the aggregation tool; the message says what was expected."""


@dataclass(frozen=True)
class Benchmark:
    """How one benchmark is scored and aggregated."""

    name: str
    title: str
    scores_file: str
    task_label: str  # column header for the tasks: "Game" or "Task"
    paper_methods: tuple[str, ...]
    human_normalised: bool  # Atari: scores become (raw - random) / (human - random)
    metric_names: tuple[str, str, str, str]  # display names of mean, median, IQM, gap
    gamma: float  # optimality-gap threshold, in the units the metrics are computed in
    tau_max: float  # right end of the performance-profile x axis
    score_label: str  # what the metric values are, for axis labels


BENCHMARKS: dict[str, Benchmark] = {
    "atari100k": Benchmark(
        name="atari100k",
        title="Atari 100k",
        scores_file="atari100k_scores.csv",
        task_label="Game",
        paper_methods=("SimPLe", "TWM", "IRIS", "DreamerV3", "STORM", "GIT-STORM", "REM"),
        human_normalised=True,
        metric_names=("Human Mean", "Human Median", "IQM", "Optimality Gap"),
        # Paper appendix K: gamma = 1 is human performance.
        gamma=1.0,
        # rliable's Atari 100k profiles stop at 8; the best single game shipped
        # (REM Boxing) is about 7.3.
        tau_max=8.0,
        score_label="Human-normalised score",
    ),
    "dmc": Benchmark(
        name="dmc",
        title="DeepMind Control Suite",
        scores_file="dmc_scores.csv",
        task_label="Task",
        paper_methods=("SAC", "CURL", "PPO", "DrQ-v2", "DreamerV3", "STORM", "GIT-STORM"),
        human_normalised=False,
        metric_names=("Mean", "Median", "IQM", "Optimality Gap"),
        # DMC returns lie in [0, 1000]; 1000 plays the role that human performance
        # plays on Atari.
        gamma=1000.0,
        tau_max=1000.0,
        score_label="Episode return",
    ),
}

# Which random/human scores normalise Atari returns: the precise DQN Zoo values
# (what rliable, DreamerV3 and STORM use) or the integers printed in Table 5.
REFERENCE_SCORE_SETS = {"dqn_zoo": ("random_dqn_zoo", "human_dqn_zoo"), "table5": ("random", "human")}


def normalise_name(name: str) -> str:
    """Key under which task and method names are compared: case, spaces, '_' and '-' ignored."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def nearest_names(name: str, candidates: list[str], count: int = 3) -> list[str]:
    """The candidates closest to `name`, compared on their normalised keys."""
    by_key = {normalise_name(c): c for c in candidates}
    close = difflib.get_close_matches(normalise_name(name), list(by_key), n=count, cutoff=0.4)
    return [by_key[key] for key in close]


@dataclass(frozen=True)
class BenchmarkData:
    """A benchmark together with the shipped per-task data."""

    spec: Benchmark
    tasks: list[str]  # canonical task ids in the paper's row order
    display_names: dict[str, str]  # task id -> name as printed in the paper
    paper_scores: pd.DataFrame  # index: task id, columns: paper methods (raw scores)
    random: pd.Series | None  # Atari only; index: task id
    human: pd.Series | None
    paper_aggregates: pd.DataFrame  # columns: metric, method, value

    def resolve_tasks(self, names: list[str]) -> dict[str, str]:
        """Maps each given task name to its canonical id.

        Accepts the id ("BankHeist", "cartpole_balance"), the paper's spelling
        ("Bank Heist", "Cartpole Balance") or any variant differing in case, spaces,
        '_' or '-'. All unknown names are reported together, each with the nearest
        valid names.
        """
        lookup = {normalise_name(t): t for t in self.tasks}
        lookup.update({normalise_name(d): t for t, d in self.display_names.items()})
        resolved, unknown = {}, []
        for name in names:
            key = normalise_name(name)
            if key in lookup:
                resolved[name] = lookup[key]
            else:
                unknown.append(name)
        if unknown:
            lines = [
                f"  {name!r}: nearest valid names {nearest_names(name, self.tasks) or 'none'}"
                for name in sorted(set(unknown))
            ]
            raise AggregateError(
                f"unknown {self.spec.task_label.lower()} name(s) for benchmark "
                f"{self.spec.name!r}:\n" + "\n".join(lines) + f"\nvalid names: {', '.join(self.tasks)}"
            )
        return resolved

    def resolve_paper_methods(self, names: list[str]) -> list[str]:
        """Canonical spellings of the requested paper methods, in the order given."""
        lookup = {normalise_name(m): m for m in self.spec.paper_methods}
        resolved = []
        for name in names:
            key = normalise_name(name)
            if key not in lookup:
                raise AggregateError(
                    f"unknown paper method {name!r} for benchmark {self.spec.name!r}; "
                    f"nearest: {nearest_names(name, list(self.spec.paper_methods)) or 'none'}; "
                    f"available: {', '.join(self.spec.paper_methods)}"
                )
            resolved.append(lookup[key])
        return resolved

    def normalise(self, task: str, raw: np.ndarray | float) -> np.ndarray | float:
        """Score on which metrics are computed: human-normalised on Atari, raw on DMC."""
        if not self.spec.human_normalised:
            return raw
        return (raw - self.random[task]) / (self.human[task] - self.random[task])


def load_benchmark(name: str, reference_scores: str = "dqn_zoo") -> BenchmarkData:
    """Loads the shipped data of benchmark `name` ("atari100k" or "dmc")."""
    if name not in BENCHMARKS:
        raise AggregateError(f"unknown benchmark {name!r}; expected one of {sorted(BENCHMARKS)}")
    if reference_scores not in REFERENCE_SCORE_SETS:
        raise AggregateError(
            f"unknown reference score set {reference_scores!r}; expected one of {sorted(REFERENCE_SCORE_SETS)}"
        )
    spec = BENCHMARKS[name]
    table = pd.read_csv(DATA_DIR / spec.scores_file).set_index("task")
    aggregates = pd.read_csv(DATA_DIR / "paper_aggregates.csv")
    random = human = None
    if spec.human_normalised:
        random_column, human_column = REFERENCE_SCORE_SETS[reference_scores]
        random, human = table[random_column].astype(float), table[human_column].astype(float)
    return BenchmarkData(
        spec=spec,
        tasks=list(table.index),
        display_names=table["paper_name"].to_dict(),
        paper_scores=table[list(spec.paper_methods)].astype(float),
        random=random,
        human=human,
        paper_aggregates=aggregates[aggregates["benchmark"] == name].drop(columns="benchmark"),
    )
