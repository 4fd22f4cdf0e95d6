"""Writing the aggregation's tables (Markdown, CSV) and plots (PNG)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on training machines or in CI

import matplotlib.pyplot as plt  # noqa: E402  (must follow the backend choice)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from rliable import plot_utils  # noqa: E402

from .benchmarks import BenchmarkData  # noqa: E402

# rliable splits "X<sep>Y" pair labels on a separator; a control character cannot
# occur in a method name, unlike ',' or ';'.
PAIR_SEPARATOR = "\x1f"

PLOT_FILES = {
    "aggregate": "aggregate_metrics.png",
    "improvement": "probability_of_improvement.png",
    "profiles": "performance_profiles.png",
}


@dataclass(frozen=True)
class Results:
    """Everything one aggregation computed, ready to be written out."""

    data: BenchmarkData
    methods: list[str]
    paper_methods: dict[str, str]  # label in the outputs -> method name in the paper
    scores: pd.DataFrame  # one row per run (see analysis.combine_scores)
    tasks_aggregated: list[str]
    runs_per_task: dict[str, int]  # method -> runs per task used in the aggregates
    aggregates: pd.DataFrame  # method, metric, value, ci_low, ci_high
    improvement: pd.DataFrame  # x, y, value, ci_low, ci_high
    taus: np.ndarray
    profiles: dict[str, np.ndarray]
    profile_cis: dict[str, np.ndarray]
    warnings: list[str]
    settings: list[str]  # how the numbers were made, one line each


def format_metric(data: BenchmarkData, metric: str, value: float) -> str:
    """Human mean and median in percent and IQM / gap as fractions, as in Table 5; DMC raw."""
    if not data.spec.human_normalised:
        return f"{value:.1f}"
    if metric in data.spec.metric_names[:2]:
        return f"{100 * value:.1f}%"
    return f"{value:.3f}"


def format_difference(data: BenchmarkData, metric: str, difference: float) -> str:
    """A metric difference in the units format_metric shows the metric in."""
    if not data.spec.human_normalised:
        return f"{difference:+.1f}"
    if metric in data.spec.metric_names[:2]:
        return f"{100 * difference:+.1f} pp"
    return f"{difference:+.3f}"


def format_raw(value: float) -> str:
    """A raw score with at most one decimal and no trailing '.0' (Table 5 prints integers)."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def per_task_means(results: Results, column: str) -> pd.DataFrame:
    """Mean of `column` over each method's runs: tasks as rows, methods as columns."""
    table = results.scores.pivot_table(index="task", columns="method", values=column, aggfunc="mean")
    return table.reindex(index=results.data.tasks, columns=results.methods)


def table_frame(results: Results) -> pd.DataFrame:
    """The Table 5 / Table 6 layout: raw per-task means, then the aggregate rows."""
    data = results.data
    raw = per_task_means(results, "raw_score")
    frame = pd.DataFrame({"task": data.tasks, "name": [data.display_names[t] for t in data.tasks]})
    if data.spec.human_normalised:
        frame["random"] = data.random.reindex(data.tasks).to_numpy()
        frame["human"] = data.human.reindex(data.tasks).to_numpy()
    for method in results.methods:
        frame[method] = raw[method].to_numpy()
    values = results.aggregates.pivot(index="metric", columns="method", values="value")
    aggregate_rows = pd.DataFrame({"task": list(data.spec.metric_names), "name": list(data.spec.metric_names)})
    for method in results.methods:
        aggregate_rows[method] = values.loc[list(data.spec.metric_names), method].to_numpy()
    return pd.concat([frame, aggregate_rows], ignore_index=True)


def _per_task_section(results: Results) -> list[str]:
    """The Table 5 / 6 layout: raw per-task means and the aggregate rows."""
    data, spec = results.data, results.data.spec
    label = spec.task_label
    lines = [f"## Per-{label.lower()} scores", ""]
    lines.append(
        f"Mean raw score over each method's runs ('—': no score). The aggregate rows are computed on "
        f"{'human-normalised' if spec.human_normalised else 'raw'} scores over the "
        f"{len(results.tasks_aggregated)} {label.lower()}s every method has."
    )
    lines.append("")
    reference = ["Random", "Human"] if spec.human_normalised else []
    rows = []
    for _, row in table_frame(results).iterrows():
        if row["task"] in spec.metric_names:
            cells = [f"**{row['name']}**"] + [""] * len(reference)
            cells += [format_metric(data, row["task"], row[m]) for m in results.methods]
        else:
            cells = [row["name"]] + [format_raw(row[c]) for c in ("random", "human")[: len(reference)]]
            cells += ["—" if pd.isna(row[m]) else format_raw(row[m]) for m in results.methods]
        rows.append(cells)
    return lines + _markdown_table([label] + reference + results.methods, rows) + [""]


def _normalised_section(results: Results) -> list[str]:
    """Human-normalised per-game means with run counts (Atari only)."""
    data, label = results.data, results.data.spec.task_label
    lines = [f"## Human-normalised scores per {label.lower()}", ""]
    lines += ["Mean over runs, with the number of runs in parentheses.", ""]
    means = per_task_means(results, "score")
    counts = results.scores.pivot_table(index="task", columns="method", values="score", aggfunc="count")
    counts = counts.reindex(index=data.tasks, columns=results.methods)
    rows = []
    for task in data.tasks:
        cells = [data.display_names[task]]
        for method in results.methods:
            mean, count = means.at[task, method], counts.at[task, method]
            cells.append("—" if pd.isna(mean) else f"{mean:.3f} ({int(count)})")
        rows.append(cells)
    return lines + _markdown_table([label] + results.methods, rows) + [""]


def _aggregate_section(results: Results) -> list[str]:
    """Point estimates and CIs of the four aggregate metrics per method."""
    data, spec = results.data, results.data.spec
    lines = ["## Aggregate metrics with 95% confidence intervals", ""]
    rows = []
    for method in results.methods:
        mine = results.aggregates[results.aggregates["method"] == method].set_index("metric")
        cells = [method, str(results.runs_per_task[method])]
        for metric in spec.metric_names:
            estimates = mine.loc[metric, ["value", "ci_low", "ci_high"]]
            value, low, high = (format_metric(data, metric, v) for v in estimates)
            cells.append(f"{value} [{low}, {high}]")
        rows.append(cells)
    header = ["Method", f"Runs per {spec.task_label.lower()}"] + list(spec.metric_names)
    return lines + _markdown_table(header, rows) + [""]


def _paper_section(results: Results) -> list[str]:
    """The paper's published aggregate rows beside the same metrics recomputed here."""
    data, label = results.data, results.data.spec.task_label.lower()
    published = data.paper_aggregates
    compared = [(shown, name) for shown, name in results.paper_methods.items() if name in set(published["method"])]
    if not compared:
        return []
    lines = ["## Published aggregate rows versus recomputed", ""]
    if len(results.tasks_aggregated) < len(data.tasks):
        return lines + [
            f"Not compared: the aggregates here cover {len(results.tasks_aggregated)} of {len(data.tasks)} "
            f"{label}s, while the paper's rows cover all of them.",
            "",
        ]
    lines += [
        f"The published aggregate rows next to the same metrics recomputed here from the per-{label} rows "
        "(where each row comes from: 'Data files' in tools/aggregate/README.md). Where they differ beyond "
        "rounding, see 'Reproducing the paper's aggregate rows' there.",
        "",
    ]
    recomputed = results.aggregates.set_index(["method", "metric"])["value"]
    rows = []
    for shown, name in compared:
        for _, row in published[published["method"] == name].iterrows():
            mine = recomputed[(shown, row["metric"])]
            rows.append(
                [
                    shown,
                    row["metric"],
                    format_metric(data, row["metric"], row["value"]),
                    format_metric(data, row["metric"], mine),
                    format_difference(data, row["metric"], mine - row["value"]),
                ]
            )
    return lines + _markdown_table(["Method", "Metric", "Paper", "Recomputed", "Recomputed − paper"], rows) + [""]


def _improvement_section(results: Results) -> list[str]:
    lines = ["## Probability of improvement", ""]
    if results.improvement.empty:
        return lines + ["Needs at least two methods.", ""]
    rows = [
        [r.x, r.y, f"{r.value:.3f}", f"[{r.ci_low:.3f}, {r.ci_high:.3f}]"] for r in results.improvement.itertuples()
    ]
    return lines + _markdown_table(["X", "Y", "P(X > Y)", "95% CI"], rows) + [""]


def markdown_report(results: Results) -> str:
    lines = [f"# {results.data.spec.title}: aggregate results", ""]
    lines += [f"- {line}" for line in results.settings] + [""]
    lines += ["## Missing data and exclusions", ""]
    lines += [f"- {w}" for w in results.warnings] if results.warnings else ["None: every method has every run."]
    lines.append("")
    lines += _per_task_section(results)
    if results.data.spec.human_normalised:
        lines += _normalised_section(results)
    lines += _aggregate_section(results)
    lines += _paper_section(results)
    lines += _improvement_section(results)
    lines += ["## Plots", "", f"![Aggregate metrics]({PLOT_FILES['aggregate']})"]
    if not results.improvement.empty:
        lines.append(f"![Probability of improvement]({PLOT_FILES['improvement']})")
    lines.append(f"![Performance profiles]({PLOT_FILES['profiles']})")
    return "\n".join(lines) + "\n"


def method_colors(methods: list[str]) -> dict[str, tuple]:
    """One colour per method, the same in every plot."""
    return dict(zip(methods, sns.color_palette("colorblind", n_colors=len(methods))))


def plot_aggregates(results: Results, path: Path, dpi: int) -> None:
    """Figure 2 style: each metric's point estimate and 95% CI per method."""
    points, intervals = {}, {}
    for method in results.methods:
        mine = results.aggregates[results.aggregates["method"] == method].set_index("metric")
        mine = mine.loc[list(results.data.spec.metric_names)]
        points[method] = mine["value"].to_numpy()
        intervals[method] = mine[["ci_low", "ci_high"]].to_numpy().T
    fig, _ = plot_utils.plot_interval_estimates(
        points,
        intervals,
        metric_names=list(results.data.spec.metric_names),
        algorithms=results.methods,
        colors=method_colors(results.methods),
        xlabel=results.data.spec.score_label,
        xlabel_y_coordinate=-0.3 if len(results.methods) < 4 else -0.15,
    )
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def plot_improvement(results: Results, path: Path, dpi: int) -> None:
    """Figure 3 style: P(X > Y) with 95% CIs, one bar per pair."""
    estimates = {f"{r.x}{PAIR_SEPARATOR}{r.y}": r.value for r in results.improvement.itertuples()}
    intervals = {f"{r.x}{PAIR_SEPARATOR}{r.y}": [r.ci_low, r.ci_high] for r in results.improvement.itertuples()}
    colors = method_colors(results.methods)
    fig, ax = plt.subplots(figsize=(4.5, 0.5 * len(estimates) + 1.0))
    plot_utils.plot_probability_of_improvement(
        estimates,
        intervals,
        pair_separator=PAIR_SEPARATOR,
        ax=ax,
        colors=[colors[x] for x in results.improvement["x"]],
    )
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def plot_profiles(results: Results, path: Path, dpi: int) -> None:
    """Figure 9 style: fraction of runs with score > tau, with 95% CI bands."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plot_utils.plot_performance_profiles(
        results.profiles,
        results.taus,
        performance_profile_cis=results.profile_cis,
        colors=method_colors(results.methods),
        xlabel=rf"{results.data.spec.score_label} ($\tau$)",
        ax=ax,
        legend=True,
    )
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def write_outputs(results: Results, out_dir: Path, dpi: int) -> list[Path]:
    """Writes the report files into `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {
        "report.md": lambda p: p.write_text(markdown_report(results)),
        "table.csv": lambda p: table_frame(results).to_csv(p, index=False),
        "aggregates.csv": lambda p: results.aggregates.to_csv(p, index=False),
        "runs.csv": lambda p: results.scores.to_csv(p, index=False),
        "probability_of_improvement.csv": lambda p: results.improvement.to_csv(p, index=False),
        "warnings.txt": lambda p: p.write_text("".join(w + "\n" for w in results.warnings)),
        PLOT_FILES["aggregate"]: lambda p: plot_aggregates(results, p, dpi),
        PLOT_FILES["profiles"]: lambda p: plot_profiles(results, p, dpi),
    }
    if not results.improvement.empty:
        written[PLOT_FILES["improvement"]] = lambda p: plot_improvement(results, p, dpi)
    paths = []
    for name, write in written.items():
        write(out_dir / name)
        paths.append(out_dir / name)
    return paths
