"""Evaluation return against env steps per game, one line per variant (the paper's figures
12-15), and a final-score table (table 7 style), from the evaluation CSVs of a sweep.
Variants sharing a legend label (a figure's Atari and DMC baselines) make one line.

    python -m tools.ablations --figure 14 --results outputs/eval_result --out outputs/ablations/fig14
    python -m tools.ablations --results outputs/eval_result --variants GITSTORM,GITSTORM_vqvae \
        --games Boxing,Hero,MsPacman --out outputs/ablations/mine
    python -m tools.ablations --commands 14          # the sweep that trains figure 14's variants

Runs are found as in tools/aggregate (files `<game>-<METHOD>-seed_<N>.csv`, or a --manifest);
METHOD is the variant. Per game and line, at every evaluated step: the mean over seeds and a
95% percentile bootstrap interval over seeds (the seeds resampled with replacement). The final
score of a run is its row with the largest step. Missing seeds (expected: every seed any
selected run has), runs that stop early and games without a variant are listed in
warnings.txt, the report and on stderr; nothing is dropped silently.

Writes to --out: ablation_curves.png, curves.csv (game, label, variant, step, mean, ci_low,
ci_high, seeds), final_scores.csv (game, label, variant, mean, ci_low, ci_high, n_seeds, seeds,
steps), final_scores.md, warnings.txt.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tools.aggregate.benchmarks import AggregateError, load_benchmark, normalise_name  # noqa: E402
from tools.aggregate.report import method_colors  # noqa: E402
from tools.aggregate.results import RunSource, discover_runs, read_eval_csv, read_manifest  # noqa: E402

from .figures import FIGURES, sweep_commands  # noqa: E402


def bootstrap_mean_interval(values: np.ndarray, reps: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """(mean, 2.5th, 97.5th percentile of the bootstrap means) of the values of one step.

    For one task this is what rliable's stratified bootstrap of the mean gives (the runs are
    the only stratum), vectorised: all `reps` resamples in one array.
    """
    mean = float(values.mean())
    if len(values) < 2:
        return mean, mean, mean
    resampled = values[rng.integers(0, len(values), size=(reps, len(values)))].mean(axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return mean, float(low), float(high)


def display_names() -> dict[str, str]:
    """Normalised game/task name -> the paper's spelling (Atari 100k and DMC)."""
    names = {}
    for benchmark in ("atari100k", "dmc"):
        for task, shown in load_benchmark(benchmark).display_names.items():
            names[normalise_name(task)] = shown
    return names


def load_runs(sources: list[RunSource], variants: list[str] | None, games: list[str] | None,
              labels: dict[str, str]) -> pd.DataFrame:
    """Every evaluation row of the selected runs: game (normalised key), variant, its legend label
    (one line of the figure; several variants may share one, e.g. GITSTORM and GITSTORM_DMC),
    seed, step, return."""
    wanted_games = None if games is None else {normalise_name(g) for g in games}
    frames = []
    for source in sources:
        game = normalise_name(source.task)
        if (variants is not None and source.method not in variants) or (
                wanted_games is not None and game not in wanted_games):
            continue
        table = read_eval_csv(source.path).drop_duplicates("step", keep="last")   # a re-evaluation appends
        frames.append(pd.DataFrame({"game": game, "written": source.task, "variant": source.method,
                                    "label": labels.get(source.method, source.method),
                                    "seed": source.seed, "run_name": source.run_name,
                                    "step": table["step"].astype(int).to_numpy(),
                                    "value": table["episode_avg_return"].astype(float).to_numpy()}))
    if not frames:
        raise AggregateError("no evaluation CSV matches the selected variants and games")
    rows = pd.concat(frames, ignore_index=True)
    runs = rows.drop_duplicates("run_name")
    clash = runs[runs.duplicated(["game", "label", "seed"], keep=False)]
    if not clash.empty:
        raise AggregateError("two runs for the same game, line and seed: "
                             f"{', '.join(sorted(clash['run_name']))}; keep one or give them other --labels")
    return rows


def completeness_warnings(rows: pd.DataFrame, games: list[str], lines: list[str], names: dict[str, str]) -> list[str]:
    """Games without a line, missing seeds, runs stopping before the others."""
    expected = sorted(rows["seed"].unique())
    warnings = []
    for key in games:
        game = names.get(key, key)
        for line in lines:
            mine = rows[(rows["game"] == key) & (rows["label"] == line)]
            if mine.empty:
                warnings.append(f"{game} / {line}: no runs (expected seeds {', '.join(map(str, expected))})")
                continue
            missing = sorted(set(expected) - set(mine["seed"]))
            if missing:
                warnings.append(f"{game} / {line}: missing seed(s) {', '.join(map(str, missing))}; "
                                f"mean and interval use seed(s) {', '.join(map(str, sorted(mine['seed'].unique())))}")
            last = mine.groupby("run_name")["step"].max()
            for run, step in last[last < last.max()].items():
                warnings.append(f"{game} / {line}: run {run} ends at step {step}, others at {last.max()}: "
                                f"later points average fewer seeds")
    return warnings


def curve_frame(rows: pd.DataFrame, reps: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    out = []
    for (game, label, step), group in rows.groupby(["game", "label", "step"], sort=True):
        mean, low, high = bootstrap_mean_interval(group["value"].to_numpy(), reps, rng)
        out.append({"game": game, "label": label, "variant": " ".join(sorted(group["variant"].unique())),
                    "step": step,
                    "mean": mean, "ci_low": low, "ci_high": high,
                    "seeds": " ".join(map(str, sorted(group["seed"])))})
    return pd.DataFrame(out)


def final_frame(rows: pd.DataFrame, reps: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    last = rows.sort_values("step").groupby("run_name").tail(1)
    out = []
    for (game, label), group in last.groupby(["game", "label"], sort=True):
        mean, low, high = bootstrap_mean_interval(group["value"].to_numpy(), reps, rng)
        out.append({"game": game, "label": label, "variant": " ".join(sorted(group["variant"].unique())),
                    "mean": mean,
                    "ci_low": low, "ci_high": high, "n_seeds": len(group),
                    "seeds": " ".join(map(str, sorted(group["seed"]))),
                    "steps": " ".join(map(str, sorted(group["step"].unique())))})
    return pd.DataFrame(out)


def final_markdown(final: pd.DataFrame, games: list[str], names: dict[str, str], title: str,
                   warnings: list[str]) -> str:
    """Games as rows, legend labels as columns: 'mean [low, high] (n seeds)'."""
    columns = list(dict.fromkeys(final["label"]))
    lines = [f"# {title}", "", "Final evaluation return (each run's last evaluated step): mean over seeds "
             "[95% bootstrap interval] (seeds).", "",
             "| game | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for game in games:
        cells = []
        for label in columns:
            hit = final[(final["game"] == game) & (final["label"] == label)]
            cells.append("—" if hit.empty else "; ".join(
                f"{r.mean:.1f} [{r.ci_low:.1f}, {r.ci_high:.1f}] ({r.n_seeds})" for r in hit.itertuples()))
        lines.append(f"| {names.get(game, game)} | " + " | ".join(cells) + " |")
    lines += ["", "## Warnings", ""] + ([f"- {w}" for w in warnings] or ["none"])
    return "\n".join(lines) + "\n"


def plot_curves(curves: pd.DataFrame, games: list[str], names: dict[str, str], title: str, path: Path,
                dpi: int) -> None:
    """One panel per game: mean return against env steps per legend label, 95% band shaded."""
    labels = list(dict.fromkeys(curves["label"]))
    colors = method_colors(labels)
    columns = min(3, len(games))
    rows = -(-len(games) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax, game in zip(axes.flat, games):
        if not (curves["game"] == game).any():
            ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes)
        for label in labels:
            line = curves[(curves["game"] == game) & (curves["label"] == label)].sort_values("step")
            if line.empty:
                continue
            ax.plot(line["step"], line["mean"], color=colors[label], label=label, linewidth=1.6)
            ax.fill_between(line["step"], line["ci_low"], line["ci_high"], color=colors[label], alpha=0.2,
                            linewidth=0)
        ax.set_title(names.get(game, game))
        ax.set_xlabel("env steps")
        ax.set_ylabel("evaluation return")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(games):]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], color=colors[label], linewidth=2) for label in labels]
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.ablations", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--figure", choices=sorted(FIGURES), help="the paper's games, variants and legend")
    parser.add_argument("--results", type=Path, default=Path("outputs/eval_result"),
                        help="folder of <game>-<METHOD>-seed_<N>.csv (default: %(default)s)")
    parser.add_argument("--manifest", type=Path, help="CSV listing the runs instead (see tools/aggregate/README.md)")
    parser.add_argument("--out", type=Path, default=Path("outputs/ablations"), help="default: %(default)s")
    parser.add_argument("--variants", help="comma list of METHODs to plot, in legend order (default: all found)")
    parser.add_argument("--labels", help="legend labels, e.g. 'GITSTORM=GIT-STORM,GITSTORM_vqvae=VQ-VAE'")
    parser.add_argument("--games", help="comma list of games/tasks, in panel order (default: all found)")
    parser.add_argument("--title", help="figure title")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    parser.add_argument("--dpi", type=int, default=100)
    parser.add_argument("--commands", choices=sorted(FIGURES),
                        help="print the train.py sweeps of this figure's variants and exit")
    parser.add_argument("--launcher", default="slurm", help="hydra/launcher for --commands (default: %(default)s)")
    return parser


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def run(args: argparse.Namespace) -> list[Path]:
    if args.reps < 1:
        raise AggregateError(f"--reps must be positive, got {args.reps}")
    figure = FIGURES.get(args.figure)
    variants = _split(args.variants) or (list(figure.variants) if figure else None)
    games = _split(args.games) or (list(figure.games) if figure else None)
    labels = dict(figure.variants) if figure else {}
    for pair in _split(args.labels) or []:
        if "=" not in pair:
            raise AggregateError(f"--labels entry {pair!r}: expected METHOD=label")
        method, label = pair.split("=", 1)
        labels[method.strip()] = label.strip()
    title = args.title or (figure.title if figure else "Ablation")

    sources = read_manifest(args.manifest, args.results) if args.manifest else discover_runs(args.results)
    rows = load_runs(sources, variants, games, labels)
    game_keys = [normalise_name(g) for g in games] if games else list(dict.fromkeys(rows["game"]))
    wanted = variants or sorted(rows["variant"].unique())
    lines = list(dict.fromkeys(labels.get(v, v) for v in wanted))   # legend order
    found = set(rows["label"])
    warnings = [f"{line}: no runs at all" for line in lines if line not in found]
    lines = [line for line in lines if line in found]
    names = display_names()
    names.update({key: written for key, written in zip(rows["game"], rows["written"]) if key not in names})
    warnings += completeness_warnings(rows, game_keys, lines, names)

    order = {line: i for i, line in enumerate(lines)}
    games_order = {game: i for i, game in enumerate(game_keys)}
    by_order = {"label": order, "game": games_order}
    sort = dict(key=lambda c: c.map(by_order[c.name]) if c.name in by_order else c)
    curves = curve_frame(rows, args.reps, args.seed).sort_values(["game", "label", "step"], **sort)
    final = final_frame(rows, args.reps, args.seed).sort_values(["game", "label"], **sort)

    args.out.mkdir(parents=True, exist_ok=True)
    paths = {name: args.out / name for name in ("ablation_curves.png", "curves.csv", "final_scores.csv",
                                                 "final_scores.md", "warnings.txt")}
    plot_curves(curves, game_keys, names, title, paths["ablation_curves.png"], args.dpi)
    curves.assign(game=curves["game"].map(names)).to_csv(paths["curves.csv"], index=False)
    final.assign(game=final["game"].map(names)).to_csv(paths["final_scores.csv"], index=False)
    paths["final_scores.md"].write_text(final_markdown(final, game_keys, names, title, warnings))
    paths["warnings.txt"].write_text("".join(w + "\n" for w in warnings))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return list(paths.values())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.commands:
        print("\n".join(sweep_commands(args.commands, args.launcher)))
        return 0
    try:
        paths = run(args)
    except AggregateError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} files to {args.out}: {', '.join(p.name for p in paths)}")
    return 0
