"""Command line: `python -m tools.aggregate --benchmark atari100k --results outputs/eval_result ...`.

See tools/aggregate/README.md for the flags and the files written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from . import analysis, report
from .benchmarks import BENCHMARKS, REFERENCE_SCORE_SETS, AggregateError, BenchmarkData, load_benchmark
from .results import RUN_COLUMNS, discover_runs, load_run_scores, read_manifest

PAPER_SUFFIX = " (paper)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.aggregate",
        description="Aggregate final evaluation scores of many runs (game x method x seed) into "
        "Table 5/6 style tables and rliable plots (Figures 2, 3 and 9 of the GIT-STORM paper).",
    )
    parser.add_argument("--benchmark", choices=sorted(BENCHMARKS), default="atari100k")
    parser.add_argument(
        "--results",
        type=Path,
        default=Path("outputs/eval_result"),
        help="folder of evaluation CSVs named <game>-<METHOD>-seed_<N>.csv (default: %(default)s)",
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        help="CSV listing runs instead of scanning --results: columns run_name and/or csv, "
        "optionally game, method, seed",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/aggregate"), help="output folder (default: %(default)s)"
    )
    parser.add_argument(
        "--include-paper",
        default="",
        help="comma-separated paper methods to place beside the runs, or 'all' "
        "(atari100k: SimPLe,TWM,IRIS,DreamerV3,STORM,GIT-STORM,REM; dmc: SAC,CURL,PPO,DrQ-v2,DreamerV3,STORM,GIT-STORM)",
    )
    parser.add_argument(
        "--paper-only",
        action="store_true",
        help="aggregate the paper's published scores alone (all its methods unless --include-paper narrows them)",
    )
    parser.add_argument(
        "--step",
        type=int,
        help="score each run at the largest evaluated step <= STEP (default: its largest step)",
    )
    parser.add_argument(
        "--reference-scores",
        choices=sorted(REFERENCE_SCORE_SETS),
        default="dqn_zoo",
        help="Atari random/human scores: precise DQN Zoo values or Table 5's rounded ones (default: %(default)s)",
    )
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap replications (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap random seed (default: %(default)s)")
    parser.add_argument(
        "--task-bootstrap",
        action="store_true",
        help="resample tasks as well as runs for the aggregate and profile CIs "
        "(gives single-run data such as the paper's non-zero intervals)",
    )
    parser.add_argument(
        "--pi-target",
        help="compare this method against every other for the probability of improvement "
        "(default: every pair); paper methods carry the suffix ' (paper)' unless --paper-only",
    )
    parser.add_argument("--dpi", type=int, default=100, help="resolution of the PNG plots (default: %(default)s)")
    return parser


def describe_settings(args: argparse.Namespace, data: BenchmarkData, run_count: int, with_paper: bool) -> list[str]:
    """How the numbers were made, one line each, for the top of the report."""
    label = data.spec.task_label.lower()
    sources = []
    if run_count:
        rule = "largest evaluated step" if args.step is None else f"largest evaluated step <= {args.step}"
        sources.append(f"{run_count} runs from {args.manifest or args.results}, each at its {rule}")
    if with_paper:
        sources.append(f"the paper's published per-{label} scores ({data.spec.scores_file}), one 'run' per {label}")
    if data.spec.human_normalised:
        normalisation = f"(score - random) / (human - random) with the {args.reference_scores} reference scores"
    else:
        normalisation = f"none (raw returns); optimality gap against {data.spec.gamma:g}"
    resampled = "runs and tasks" if args.task_bootstrap else "runs within each task"
    return [
        "Scores: " + "; ".join(sources),
        "Normalisation: " + normalisation,
        f"Intervals: 95% stratified bootstrap (rliable, percentile), {args.reps} reps, seed {args.seed}, "
        f"resampling {resampled}",
    ]


def aggregate(args: argparse.Namespace) -> report.Results:
    """Reads the runs named by `args` and computes every table and metric."""
    if args.reps < 1:
        raise AggregateError(f"--reps must be a positive number of bootstrap replications, got {args.reps}")
    if args.step is not None and args.step < 0:
        raise AggregateError(f"--step must be a non-negative environment step, got {args.step}")
    if args.paper_only and args.manifest is not None:
        raise AggregateError("--paper-only uses no runs, so it cannot be combined with --manifest")
    data = load_benchmark(args.benchmark, args.reference_scores)

    requested = [name.strip() for name in args.include_paper.split(",") if name.strip()]
    if requested == ["all"] or (args.paper_only and not requested):
        requested = list(data.spec.paper_methods)
    paper_methods = data.resolve_paper_methods(requested)

    warnings: list[str] = []
    if args.paper_only:
        runs = pd.DataFrame(columns=RUN_COLUMNS)
    else:
        sources = read_manifest(args.manifest, args.results) if args.manifest else discover_runs(args.results)
        runs, warnings = load_run_scores(sources, data, args.step)
        if runs.empty:
            raise AggregateError(f"none of the {len(sources)} runs has an evaluation row to score")
    # Paper methods keep their plain names when alone; beside runs they are marked so
    # that the paper's "STORM" and a run method "STORM" stay apart.
    suffix = "" if args.paper_only else PAPER_SUFFIX
    scores = analysis.combine_scores(runs, data, paper_methods, suffix)
    methods = sorted(runs["method"].unique()) + [m + suffix for m in paper_methods]

    warnings += analysis.completeness_warnings(scores, data, methods)
    matrices = analysis.build_matrices(scores, data, methods)
    warnings += matrices.warnings
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)

    pairs = analysis.improvement_pairs(methods, args.pi_target) if len(methods) > 1 else []
    aggregates = analysis.aggregate_estimates(matrices.matrices, data, args.reps, args.seed, args.task_bootstrap)
    improvement = analysis.improvement_estimates(matrices.matrices, pairs, args.reps, args.seed)
    taus = analysis.profile_thresholds(data)
    profiles, profile_cis = analysis.performance_profiles(
        matrices.matrices, taus, args.reps, args.seed, args.task_bootstrap
    )

    return report.Results(
        data=data,
        methods=methods,
        paper_methods={m + suffix: m for m in paper_methods},
        scores=scores,
        tasks_aggregated=matrices.tasks,
        runs_per_task={m: a.shape[0] for m, a in matrices.matrices.items()},
        aggregates=aggregates,
        improvement=improvement,
        taus=taus,
        profiles=profiles,
        profile_cis=profile_cis,
        warnings=warnings,
        settings=describe_settings(args, data, len(runs), bool(paper_methods)),
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        results = aggregate(args)
        paths = report.write_outputs(results, args.out, args.dpi)
    except AggregateError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} files to {args.out}: {', '.join(p.name for p in paths)}")
    return 0
