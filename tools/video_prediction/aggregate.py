"""Tables like the paper's tables 3 (Atari) and 4 (DMC) from eval_video.py's CSVs.

    python -m tools.video_prediction.aggregate --results outputs/video_prediction [--out DIR] [--step N]

Every <run>.csv in --results (or the files given) contributes, per run, its row of the newest
step (or of --step). Runs of the same env and method (seeds) are averaged: mean +- standard
deviation over runs (n given). The paper's numbers (paper_tables_3_4.csv beside this file)
are shown in the rows marked "paper"; games we have no paper number for get "-".
Prints Markdown; with --out also writes video_prediction_table.md and a long-form CSV.
"""
import argparse
import sys
from pathlib import Path

import pandas as pd

PAPER_CSV = Path(__file__).with_name("paper_tables_3_4.csv")
METHODS = ("STORM", "GIT-STORM")
TITLES = {"atari": "Table 3 (Atari 100k)", "dmc": "Table 4 (DMC)", "other": "Other environments"}


def benchmark_of(env_name: str) -> str:
    return "atari" if env_name.startswith("ALE/") else "dmc" if env_name.startswith("dmc/") else "other"


def load_results(paths: list[Path], step: int | None) -> pd.DataFrame:
    files = [f for p in paths for f in (sorted(p.glob("*.csv")) if p.is_dir() else [p])]
    frames = []
    for f in files:
        table = pd.read_csv(f)
        if not {"run", "step", "env_name", "method", "fvd", "perplexity"} <= set(table.columns):
            print(f"skipping {f}: not an eval_video.py CSV", file=sys.stderr)
            continue
        frames.append(table)
    if not frames:
        raise SystemExit(f"no eval_video.py CSVs in {', '.join(map(str, paths))}")
    rows = pd.concat(frames, ignore_index=True)
    if step is not None:
        rows = rows[rows["step"] == step]
    else:   # each run's newest step
        rows = rows[rows["step"] == rows.groupby("run")["step"].transform("max")]
    return rows


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per (env_name, method): means, standard deviations over runs, run count."""
    grouped = rows.groupby(["env_name", "method"])
    out = grouped.agg(fvd_mean=("fvd", "mean"), fvd_std=("fvd", "std"), perplexity_mean=("perplexity", "mean"),
                      perplexity_std=("perplexity", "std"), runs=("run", "nunique"), videos=("videos", "min"),
                      steps=("step", lambda s: ",".join(map(str, sorted(set(s))))))
    out = out.reset_index()
    out["source"] = "ours"
    return out


def cell(mean, std=float("nan"), runs=1) -> str:
    if pd.isna(mean):
        return "-"
    text = f"{mean:.2f}"
    if runs > 1 and not pd.isna(std):
        text += f" ± {std:.2f}"
    return text


def markdown(ours: pd.DataFrame, paper: pd.DataFrame) -> str:
    ours = ours.assign(benchmark=ours["env_name"].map(benchmark_of))
    paper = paper.assign(benchmark=paper["env_name"].map(benchmark_of))
    names = dict(zip(paper["env_name"], paper["game"]))
    sections = []
    for benchmark in ("atari", "dmc", "other"):
        envs = list(dict.fromkeys([*paper.loc[paper.benchmark == benchmark, "env_name"],
                                   *sorted(ours.loc[ours.benchmark == benchmark, "env_name"])]))
        if not envs:
            continue
        lines = [f"### {TITLES[benchmark]}", "",
                 "| Game | source | FVD (↓) STORM | FVD (↓) GIT-STORM | Perplexity STORM | Perplexity GIT-STORM | runs |",
                 "|---|---|---:|---:|---:|---:|---|"]
        for env in envs:
            game = names.get(env, env.removeprefix("ALE/").removeprefix("dmc/"))
            for source, table in (("ours", ours), ("paper", paper)):
                part = table[table.env_name == env].set_index("method")
                if part.empty:
                    continue
                fvd, ppl, runs, clips = [], [], [], []
                for method in METHODS:
                    if method not in part.index:
                        fvd.append("-"), ppl.append("-"), runs.append("0")
                    elif source == "paper":
                        fvd.append(cell(part.at[method, "fvd"])), ppl.append(cell(part.at[method, "perplexity"]))
                    else:
                        r = part.loc[method]
                        fvd.append(cell(r.fvd_mean, r.fvd_std, r.runs))
                        ppl.append(cell(r.perplexity_mean, r.perplexity_std, r.runs))
                        runs.append(str(int(r.runs)))
                        clips.append(int(r.videos))
                count = (f"{' / '.join(runs)} runs, {min(clips)} clips" if source == "ours"
                         else f"table {int(part['table'].iloc[0])}")
                lines.append(f"| {game} | {source} | {fvd[0]} | {fvd[1]} | {ppl[0]} | {ppl[1]} | {count} |")
        sections.append("\n".join(lines))
    note = ("FVD over the predicted frames only. Perplexity: exp of the mean negative log-likelihood of the real "
            "future frames' posterior tokens under the prior (appendix K). ours: mean ± std over runs; runs = "
            "STORM / GIT-STORM runs averaged, clips = fewest clips per run.")
    return "\n\n".join(sections) + "\n\n" + note + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, nargs="+", default=[Path("outputs/video_prediction")],
                        help="eval_video.py CSVs or folders of them")
    parser.add_argument("--step", type=int, default=None, help="use this step of every run (default: its newest)")
    parser.add_argument("--out", type=Path, default=None, help="folder for video_prediction_table.md / .csv")
    args = parser.parse_args(argv)
    paper = pd.read_csv(PAPER_CSV)
    ours = summarise(load_results(args.results, args.step))
    text = markdown(ours, paper)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "video_prediction_table.md").write_text(text)
        long = pd.concat([ours, paper.assign(source="paper").rename(
            columns={"fvd": "fvd_mean", "perplexity": "perplexity_mean"})], ignore_index=True)
        long["benchmark"] = long["env_name"].map(benchmark_of)
        columns = ["benchmark", "env_name", "method", "source", "fvd_mean", "fvd_std", "perplexity_mean",
                   "perplexity_std", "runs", "videos", "steps"]
        long[columns].to_csv(args.out / "video_prediction_table.csv", index=False)
        print(f"wrote {args.out / 'video_prediction_table.md'} and {args.out / 'video_prediction_table.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
