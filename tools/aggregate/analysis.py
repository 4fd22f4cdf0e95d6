"""From per-run scores to aggregate metrics with stratified-bootstrap confidence intervals.

The metrics follow the paper's appendix K (Agarwal et al., 2021) and are computed by
`rliable`: mean, median, interquartile mean (IQM: scipy's trim_mean with 25% cut from
each end, over all runs x tasks pooled), optimality gap (gamma minus the mean of
scores clipped at gamma), probability of improvement and performance profiles.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd
from rliable import library, metrics

from .benchmarks import AggregateError, BenchmarkData

PAPER_RUN_PREFIX = "paper:"


@contextlib.contextmanager
def seeded_global_numpy(seed: int):
    """Seeds NumPy's global generator for the duration, then restores it.

    rliable's stratified bootstrap draws its resampling indices with
    `np.random.choice` (the global generator) and ignores `random_state`, so seeding
    the global generator is the only way to make its intervals reproducible.
    """
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def combine_scores(
    runs: pd.DataFrame, data: BenchmarkData, paper_methods: list[str], paper_suffix: str
) -> pd.DataFrame:
    """Run scores and the chosen paper methods' published scores in one long frame.

    A paper method contributes one "run" (seed 0) per task, labelled
    `<method><paper_suffix>` so that it cannot be confused with a run method of the
    same name. Adds the column `score`: the value metrics are computed on.
    """
    frames = [runs]
    for method in paper_methods:
        published = data.paper_scores[method].dropna()
        frames.append(
            pd.DataFrame(
                {
                    "run_name": PAPER_RUN_PREFIX + method,
                    "method": method + paper_suffix,
                    "task": published.index,
                    "seed": 0,
                    "step": np.nan,
                    "raw_score": published.to_numpy(),
                    "path": data.spec.scores_file,
                }
            )
        )
    scores = pd.concat([f for f in frames if not f.empty], ignore_index=True)
    scores["score"] = [data.normalise(t, r) for t, r in zip(scores["task"], scores["raw_score"])]
    return scores


def completeness_warnings(scores: pd.DataFrame, data: BenchmarkData, methods: list[str]) -> list[str]:
    """Tasks and seeds missing from each method, and runs scored at differing steps.

    The expected seeds are every seed seen in any run method: a method trained on
    fewer seeds is reported as missing the others.
    """
    runs = scores[~scores["run_name"].str.startswith(PAPER_RUN_PREFIX)]
    expected_seeds = sorted(runs["seed"].unique())
    label = data.spec.task_label.lower()
    warnings = []
    for method in methods:
        mine = scores[scores["method"] == method]
        absent = [t for t in data.tasks if t not in set(mine["task"])]
        if absent:
            warnings.append(
                f"{method}: no scores for {len(absent)} of {len(data.tasks)} {label}s: {', '.join(absent)}"
            )
        if mine["run_name"].str.startswith(PAPER_RUN_PREFIX).all():
            continue
        for task, group in mine.groupby("task", sort=False):
            missing = sorted(set(expected_seeds) - set(group["seed"]))
            if missing:
                warnings.append(f"{method} / {task}: missing seed(s) {', '.join(map(str, missing))}")
        steps = sorted(mine["step"].unique())
        if len(steps) > 1:
            behind = mine[mine["step"] < steps[-1]]["run_name"]
            warnings.append(
                f"{method}: runs were scored at different steps {[int(s) for s in steps]}; "
                f"below step {int(steps[-1])}: {', '.join(sorted(behind))}"
            )
    return warnings


@dataclass(frozen=True)
class ScoreMatrices:
    """Per method a (runs x tasks) array over the tasks every method has scores for."""

    tasks: list[str]
    matrices: dict[str, np.ndarray]
    warnings: list[str]


def build_matrices(scores: pd.DataFrame, data: BenchmarkData, methods: list[str]) -> ScoreMatrices:
    """The rectangular score arrays rliable needs, reporting whatever had to be left out.

    Methods are compared on the same tasks, so tasks lacking any method are left out
    of the aggregates. rliable also needs the same number of runs on every task of a
    method; where seeds are missing on some task, each task keeps its lowest-seed
    runs up to the smallest count, and the runs beyond it are reported. (Runs on
    different tasks are resampled independently, so their seeds need not match.)
    """
    tasks_of = scores.groupby("method")["task"].agg(set)
    covered = [t for t in data.tasks if all(t in tasks_of.get(m, set()) for m in methods)]
    label = data.spec.task_label.lower()
    if not covered:
        raise AggregateError(
            f"no {label} has scores from every method ({', '.join(methods)}); nothing to aggregate"
        )
    warnings = []
    if len(covered) < len(data.tasks):
        excluded = [t for t in data.tasks if t not in covered]
        warnings.append(
            f"aggregates use the {len(covered)} of {len(data.tasks)} {label}s that every method has: "
            f"left out {', '.join(excluded)}"
        )
    matrices = {}
    for method in methods:
        mine = scores[(scores["method"] == method) & scores["task"].isin(covered)].sort_values("seed", kind="stable")
        runs_per_task = int(mine.groupby("task").size().min())
        kept = mine.groupby("task", sort=False).head(runs_per_task)
        dropped = mine.drop(kept.index)
        if not dropped.empty:
            warnings.append(
                f"{method}: aggregates use {runs_per_task} run(s) per {label} (the fewest any {label} has); "
                f"left out of aggregates: {', '.join(sorted(dropped['run_name']))}"
            )
        columns = [kept[kept["task"] == t]["score"].to_numpy() for t in covered]
        matrices[method] = np.stack(columns, axis=1)
    return ScoreMatrices(covered, matrices, warnings)


def metric_functions(gamma: float):
    """Mean, median, IQM and optimality gap of a (runs x tasks) array, as rliable defines them."""
    return (
        metrics.aggregate_mean,
        metrics.aggregate_median,
        metrics.aggregate_iqm,
        functools.partial(metrics.aggregate_optimality_gap, gamma=gamma),
    )


def aggregate_estimates(
    matrices: dict[str, np.ndarray], data: BenchmarkData, reps: int, seed: int, task_bootstrap: bool
) -> pd.DataFrame:
    """Point estimates and 95% stratified-bootstrap CIs of the four aggregate metrics.

    Returns columns method, metric, value, ci_low, ci_high, one row per method and
    metric. A method with one run per task (the paper's numbers) gets zero-width
    intervals unless `task_bootstrap` also resamples tasks.
    """
    functions = metric_functions(data.spec.gamma)
    with seeded_global_numpy(seed):
        points, intervals = library.get_interval_estimates(
            matrices,
            lambda x: np.array([f(x) for f in functions]),
            reps=reps,
            task_bootstrap=task_bootstrap,
        )
    rows = []
    for method in matrices:
        for index, metric in enumerate(data.spec.metric_names):
            rows.append(
                {
                    "method": method,
                    "metric": metric,
                    "value": float(points[method][index]),
                    "ci_low": float(intervals[method][0, index]),
                    "ci_high": float(intervals[method][1, index]),
                }
            )
    return pd.DataFrame(rows)


def probability_of_improvement(scores_x: np.ndarray, scores_y: np.ndarray) -> float:
    """P(X > Y) on a random task: per task the share of run pairs where X wins (ties
    count half), averaged over tasks.

    Equals rliable.metrics.probability_of_improvement (its Mann-Whitney U over
    n_x * n_y), computed for all tasks at once: rliable's per-task scipy call made
    bootstrapping a handful of pairs take minutes.
    """
    x, y = scores_x[:, None, :], scores_y[None, :, :]
    per_task = (x > y).mean(axis=(0, 1)) + 0.5 * (x == y).mean(axis=(0, 1))
    return float(per_task.mean())


def improvement_pairs(methods: list[str], target: str | None) -> list[tuple[str, str]]:
    """(X, Y) pairs to compare: `target` against every other method, or every pair."""
    if target is None:
        return [(x, y) for i, x in enumerate(methods) for y in methods[i + 1 :]]
    if target not in methods:
        raise AggregateError(f"--pi-target {target!r} is not one of the methods being compared: {methods}")
    return [(target, y) for y in methods if y != target]


def improvement_estimates(
    matrices: dict[str, np.ndarray], pairs: list[tuple[str, str]], reps: int, seed: int
) -> pd.DataFrame:
    """P(X > Y) with 95% CIs from rliable's stratified independent bootstrap.

    Returns columns x, y, value, ci_low, ci_high.
    """
    rows = []
    with seeded_global_numpy(seed):
        for x, y in pairs:
            points, intervals = library.get_interval_estimates(
                {"pair": [matrices[x], matrices[y]]},
                lambda a, b: np.array([probability_of_improvement(a, b)]),
                reps=reps,
            )
            rows.append(
                {
                    "x": x,
                    "y": y,
                    "value": float(points["pair"][0]),
                    "ci_low": float(intervals["pair"][0, 0]),
                    "ci_high": float(intervals["pair"][1, 0]),
                }
            )
    return pd.DataFrame(rows, columns=["x", "y", "value", "ci_low", "ci_high"])


def profile_thresholds(data: BenchmarkData) -> np.ndarray:
    """The tau values at which performance profiles are evaluated."""
    return np.linspace(0.0, data.spec.tau_max, 81)


def score_distribution(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """Fraction of all runs x tasks with score > tau, for each tau.

    Equals rliable's default profile (library.score_distributions) computed with one
    comparison instead of np.vectorize over the taus, which made bootstrapping the
    profiles of six methods take about 20 s.
    """
    return (scores.reshape(-1, 1) > taus.reshape(1, -1)).mean(axis=0)


def performance_profiles(
    matrices: dict[str, np.ndarray], taus: np.ndarray, reps: int, seed: int, task_bootstrap: bool
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Score distributions (fraction of runs with score > tau) and their 95% CIs."""
    with seeded_global_numpy(seed):
        return library.create_performance_profile(
            matrices, taus, custom_profile_func=score_distribution, reps=reps, task_bootstrap=task_bootstrap
        )
