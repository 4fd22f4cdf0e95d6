"""STORM (MLP prior) vs GIT-STORM (MaskGIT prior) variants as world models, on the same Atari data.

    python tools/benchmarks/compare_priors.py [--games Boxing,Pong] [--steps 10000] [--updates 800]
        [--seeds 0,1] [--batch-size 8] [--batch-length 16] [--preset cpu] [--override KEY=VALUE ...]
        [--eval-at 1000,2000,4000] [--json runs.json] [--plot curves.png]
    python tools/benchmarks/compare_priors.py --from-json a.json b.json [--plot curves.png]

1. Collects --steps agent steps of each ALE/<game>-v5 once, with a seeded uniform random policy
   (training env: life loss counts as termination, as in train.py).
2. The first 80% of each game's steps are training data, the last 20% are held out.
3. Trains every variant of --variants (VARIANTS below: STORM; GIT-STORM with floor and ceil
   mask rounding, TrainTarget=next, ceil with T_draft = T_revise = 4, M = 2, the authors'
   architecture, full conditioning, all-[MASK] training shares, a 4 x 64 MaskGIT)
   for --updates Adam steps per seed on the *same* batches in the same order (sequences drawn
   from all games from a seeded generator; 18 actions, the games' sets embedded in it).
4. Prints one Markdown table: per figure, mean +- standard deviation over the seeds, held-out
   per game (eval mode, disjoint sequences of --batch-length steps).
5. With --eval-at, also evaluates the held-out figures along the same training run after the
   given numbers of updates and prints the curves of the sampling KL and perplexity; --json
   keeps every run (figures at every evaluation point), --plot draws the curves (one column per
   game, one line per variant and seed). --from-json merges runs saved by several jobs (e.g. one
   per seed) into those curves and plot without training.

Two kinds of KL / perplexity exist, because the two priors' training losses count different tokens:
  * "objective": the figures of WorldModel.loss. The MLP prior counts all K tokens; the MaskGIT
    prior counts only the tokens it masked (a random cosine-schedule subset, ~64% on average
    with floor rounding) and sees part of z_t in the others, so these are not comparable.
  * "sampling": KL[q(z_{t+1} | o_{t+1}) || p] summed over all K tokens and the perplexity of the
    posterior sample of z_{t+1} over all K tokens, where p is the distribution `prior.sample(h_t)`
    drew each token from (for MaskGIT, draft-and-revise with the variant's rounds). This is the
    distribution imagination uses, the same for both priors: the comparable figure.
"""
import argparse
import json
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402

from families import compose_config  # noqa: E402
from sub_models.world_models import WorldModel  # noqa: E402
from utils import native_bf16  # noqa: E402

VARIANTS = (  # (label, config, overrides)
    ("STORM", "STORM", ()),
    ("GIT-STORM floor", "GITSTORM", ()),
    ("GIT-STORM ceil", "GITSTORM", ("Models.MaskGit.MaskRounding=ceil",)),
    ("GIT-STORM next", "GITSTORM", ("Models.MaskGit.TrainTarget=next",)),
    ("GIT-STORM ceil 4/4/2", "GITSTORM", ("Models.MaskGit.MaskRounding=ceil", "Models.MaskGit.DraftRounds=4",
                                           "Models.MaskGit.ReviseRounds=4", "Models.MaskGit.ReviseRepetitions=2")),
    ("GIT-STORM authors", "GITSTORM", ("Models.MaskGit.Architecture=authors",)),
    ("GIT-STORM full h", "GITSTORM", ("Models.MaskGit.Conditioning=full",)),
    ("GIT-STORM all-mask 0.25", "GITSTORM", ("Models.MaskGit.AllMaskProbability=0.25",)),
    ("GIT-STORM all-mask 1", "GITSTORM", ("Models.MaskGit.AllMaskProbability=1.0",)),
    ("GIT-STORM 4 layers x 64", "GITSTORM", ("Models.MaskGit.NumLayers=4", "Models.MaskGit.EmbeddingDim=64",
                                              "Models.MaskGit.FeedForwardDim=128")),
)
NUM_ACTIONS = 18   # the full Atari action set: every game's minimal set maps into it
TRAIN_FIGURES = ("reconstruction_loss", "reward_loss", "termination_loss", "dynamics_kl", "prior_perplexity")
HELDOUT_FIGURES = (("reconstruction_loss", "reconstruction loss", "{:.2f}"), ("reward_loss", "reward loss", "{:.4f}"),
                   ("sampling_kl", "dynamics KL (sampling, all tokens)", "{:.3f}"),
                   ("sampling_perplexity", "perplexity (sampling, all tokens)", "{:.3f}"),
                   ("dynamics_kl", "dynamics KL (objective)", "{:.3f}"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", default="Boxing,Pong", help="Atari games, ALE/<game>-v5 (default Boxing,Pong)")
    parser.add_argument("--steps", type=int, default=10000, help="random-policy agent steps per game (default 10000)")
    parser.add_argument("--updates", type=int, default=800, help="world-model updates per variant and seed (800)")
    parser.add_argument("--seeds", default="0,1", help="model/batch seeds, comma-separated (default 0,1)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per batch (default 8)")
    parser.add_argument("--batch-length", type=int, default=16, help="steps per sequence (default 16)")
    parser.add_argument("--preset", default="cpu", help="config preset (default cpu); 'none' = paper sizes")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--override", action="append", default=[],
                        help="Hydra override applied to every variant, repeatable (e.g. sizes)")
    parser.add_argument("--variants", default=None,
                        help="comma-separated labels of VARIANTS to run (default: all)")
    parser.add_argument("--lr", type=float, default=None, help="world-model learning rate (default: the config's)")
    parser.add_argument("--prior-lr-scale", type=float, default=1.0,
                        help="Models.WorldModel.PriorLearningRateScale for every variant (default 1; labels "
                             "get ' prior lr xS')")
    parser.add_argument("--holdout", type=float, default=0.2, help="fraction of steps held out (default 0.2)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: faster than 2 on a busy 2-core machine)")
    parser.add_argument("--eval-at", default="",
                        help="comma-separated update counts at which to evaluate along the run (<= --updates; "
                             "the end of training is always evaluated)")
    parser.add_argument("--json", default=None, help="write every run's figures at every evaluation point here")
    parser.add_argument("--plot", default=None, help="PNG of the held-out sampling KL and perplexity curves")
    parser.add_argument("--from-json", nargs="+", default=None, metavar="JSON",
                        help="no training: merge the runs of these --json files into curves (and --plot)")
    args = parser.parse_args(argv)
    if args.from_json:
        return args
    eval_at = [int(count) for count in args.eval_at.split(",") if count]
    if any(not 0 < count <= args.updates for count in eval_at):
        parser.error(f"--eval-at {args.eval_at}: expected update counts in [1, --updates={args.updates}]")
    args.eval_at = sorted(set(eval_at) | {args.updates})
    args.games = args.games.split(",")
    args.seeds = [int(seed) for seed in args.seeds.split(",")]
    labels = [label for label, _, _ in VARIANTS]
    args.variants = labels if args.variants is None else args.variants.split(",")
    unknown = sorted(set(args.variants) - set(labels))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; expected labels among {labels}")
    if args.steps * (1 - args.holdout) < args.batch_length or args.steps * args.holdout < args.batch_length:
        parser.error("--steps too small for --batch-length on both sides of the --holdout split")
    return args


def collect(game: str, steps: int, seed: int):
    """Random-policy steps of one seeded training env: obs (N, 64, 64, 3) uint8, action (N,),
    reward (N,), termination (N,) with slot t = (o_t, a_t, r_t, d_t) as in the replay buffer."""
    from env_wrapper import make_env
    env = make_env(f"ALE/{game}-v5", seed, training=True)
    obs, _ = env.reset()
    observations, actions, rewards, terminations = [], [], [], []
    for _ in range(steps):
        action = env.action_space.sample()
        next_obs, reward, terminated, truncated, info = env.step(action)
        observations.append(torch.as_tensor(obs))
        actions.append(int(action))
        rewards.append(float(reward))
        terminations.append(float(terminated or info["life_loss"]))
        obs = env.reset()[0] if terminated or truncated else next_obs
    env.close()
    return (torch.stack(observations), torch.tensor(actions), torch.tensor(rewards, dtype=torch.float32),
            torch.tensor(terminations, dtype=torch.float32))


def gather(data, starts, length, device):
    index = starts[:, None] + torch.arange(length)
    return tuple(x[index].to(device) for x in data)


def build(config_name, overrides, args, seed):
    base = [] if args.preset in (None, "", "none") else [f"+preset={args.preset}"]
    base += args.override + list(overrides)
    if args.lr is not None:
        base.append(f"Models.WorldModel.LearningRate={args.lr}")
    if args.prior_lr_scale != 1.0:
        base.append(f"Models.WorldModel.PriorLearningRateScale={args.prior_lr_scale}")
    cfg = compose_config(config_name, base)
    torch.manual_seed(seed)
    device = torch.device(args.device)
    return cfg, WorldModel(cfg.Models, NUM_ACTIONS, discrete_actions=True, use_bf16=native_bf16(device)).to(device)


def train(wm, data, batch_starts, heldout, args, seed, curve, evaluated):
    """Trains on batch_starts in order; after each of args.eval_at updates evaluates `heldout`
    (game -> data), appends {"updates", game: figures} to `curve` and calls evaluated().
    Returns the training figures."""
    torch.manual_seed(seed + 1)  # the same masks / samples stream for every variant at the start
    history, skipped, eval_seconds = [], 0, 0.0
    start = time.perf_counter()
    for updates, starts in enumerate(batch_starts, 1):
        metrics, finite = wm.update(*gather(data, starts, args.batch_length, wm.device))
        skipped += int(not bool(finite))
        history.append({k.split("/", 1)[1]: v.float().item() for k, v in metrics.items()})
        if updates in args.eval_at:
            began = time.perf_counter()
            curve.append({"updates": updates, **{game: evaluate(wm, part, args, seed) for game, part in heldout.items()}})
            eval_seconds += time.perf_counter() - began
            print(f"  {updates} updates ({time.perf_counter() - start:.0f} s): held-out sampling KL " + ", ".join(
                f"{game} {curve[-1][game]['sampling_kl']:.3f}" for game in heldout), file=sys.stderr, flush=True)
            evaluated()
    seconds = time.perf_counter() - start - eval_seconds
    tail = history[-max(1, len(history) // 10):]
    final = {k: sum(h[k] for h in tail) / len(tail) for k in TRAIN_FIGURES}
    final["seconds_per_update"] = seconds / len(batch_starts)
    final["skipped_updates"] = skipped
    return final


@torch.no_grad()
def evaluate(wm, data, args, seed):
    """Held-out figures over disjoint sequences, eval mode, one fixed seed; the training's random
    stream is left as it was, so evaluating along a run does not change the run."""
    with torch.random.fork_rng(devices=[wm.device] if wm.device.type == "cuda" else []):
        return _evaluate(wm, data, args, seed)


def _evaluate(wm, data, args, seed):
    n = data[0].shape[0] // args.batch_length
    starts = torch.arange(n) * args.batch_length
    obs, actions, rewards, terminations = gather(data, starts, args.batch_length, wm.device)
    wm.eval()
    torch.manual_seed(seed + 2)
    _, objective = wm.loss(obs, actions, rewards, terminations)
    torch.manual_seed(seed + 3)
    sampling = wm.sampling_figures(obs, actions)  # against what imagination draws z_{t+1} from
    return {
        "sequences": n,
        "reconstruction_loss": objective["world_model/reconstruction_loss"].item(),
        "reward_loss": objective["world_model/reward_loss"].item(),
        "dynamics_kl": objective["world_model/dynamics_kl"].item(),
        "sampling_kl": sampling["world_model/sampling_kl"].item(),
        "sampling_perplexity": sampling["world_model/sampling_perplexity"].item(),
    }


def mean_sd(values):
    values = torch.tensor(values, dtype=torch.float64)
    sd = values.std().item() if len(values) > 1 else 0.0
    return values.mean().item(), sd


CURVE_FIGURES = (("sampling_kl", "held-out sampling KL (all tokens)"),
                 ("sampling_perplexity", "held-out perplexity (all tokens)"))


def print_curves(runs, games):
    """Markdown: per game and curve figure, mean +- sd over the seeds at every evaluation point."""
    labels = list(dict.fromkeys(run["label"] for run in runs))
    for game in games:
        for key, name in CURVE_FIGURES:
            print(f"\n{game}, {name}, along training (mean ± sd over seeds)\n")
            print("| updates | " + " | ".join(labels) + " |")
            print("|---:|" + "---:|" * len(labels))
            counts = sorted({point["updates"] for run in runs for point in run["curve"]})
            for count in counts:
                cells = []
                for label in labels:
                    values = [point[game][key] for run in runs if run["label"] == label
                              for point in run["curve"] if point["updates"] == count]
                    mean, sd = mean_sd(values) if values else (float("nan"), 0.0)
                    cells.append(f"{mean:.3f} ± {sd:.3f} (n={len(values)})")
                print(f"| {count} | " + " | ".join(cells) + " |")


def plot_curves(runs, games, path):
    """One column per game; rows: sampling KL (log y), perplexity, and each run's sampling KL
    over the first variant's at the same seed and update count (1 = equal), all vs updates
    (log x); one colour per variant, solid / dashed lines for even / odd seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = list(dict.fromkeys(run["label"] for run in runs))
    colours = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}
    reference = {(run["seed"], point["updates"]): point for run in runs if run["label"] == labels[0]
                 for point in run["curve"]}
    fig, axes = plt.subplots(3, len(games), figsize=(4.5 * len(games), 9), squeeze=False)
    for column, game in enumerate(games):
        panels = [(key, name.replace("held-out ", ""), lambda run, point, k=key: point[game][k])
                  for key, name in CURVE_FIGURES]
        panels.append(("ratio", f"sampling KL / {labels[0]}'s (same seed)",
                       lambda run, point: point[game]["sampling_kl"]
                       / reference[run["seed"], point["updates"]][game]["sampling_kl"]))
        for row, (key, title, pick) in enumerate(panels):
            ax = axes[row][column]
            for run in runs:
                points = [point for point in run["curve"] if key != "ratio" or (run["seed"], point["updates"]) in reference]
                ax.plot([point["updates"] for point in points], [pick(run, point) for point in points],
                        marker="o", markersize=3, color=colours[run["label"]],
                        linestyle="-" if run["seed"] % 2 == 0 else "--", label=f"{run['label']} s{run['seed']}")
            ax.set_xscale("log")
            if key != "sampling_perplexity":
                ax.set_yscale("log")
            ax.set_title(f"{game}: {title}", fontsize=9)
            ax.set_xlabel("updates", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def curves_from_json(paths):
    runs, games = [], []
    for path in paths:
        with open(path) as f:
            saved = json.load(f)
        runs += saved["runs"]
        games += [game for game in saved["games"] if game not in games]
    return runs, games


def saved_runs(args, results):
    suffix = f" prior lr x{args.prior_lr_scale:g}" if args.prior_lr_scale != 1.0 else ""
    return [{"label": label + suffix, "seed": seed, "params": run["params"], "seconds": run["seconds"],
             "seconds_per_update": run["train"]["seconds_per_update"], "curve": run["curve"]}
            for label in args.variants for seed, run in zip(args.seeds, results[label])]


def save_json(args, argv, results):
    with open(args.json, "w") as f:
        json.dump({"argv": sys.argv[1:] if argv is None else list(argv), "games": args.games,
                   "runs": saved_runs(args, results)}, f, indent=1)


def main(argv=None):
    args = parse_args(argv)
    if args.from_json:
        runs, games = curves_from_json(args.from_json)
        print_curves(runs, games)
        if args.plot:
            plot_curves(runs, games, args.plot)
        return
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    train_parts, heldout, nonzero = [], {}, {}
    for game in args.games:
        data = collect(game, args.steps, 0)
        num_train = int(round(args.steps * (1 - args.holdout)))
        train_parts.append(tuple(x[:num_train] for x in data))
        heldout[game] = tuple(x[num_train:] for x in data)
        nonzero[game] = (int((data[2] != 0).sum()), int(data[3].sum()))
    # one training set: the games' training parts end to end, sequences never cross a game's end
    train_data = tuple(torch.cat(parts) for parts in zip(*train_parts))
    lengths = [part[0].shape[0] for part in train_parts]
    valid = torch.cat([offset + torch.arange(length - args.batch_length + 1)
                       for offset, length in zip(torch.tensor([0] + lengths[:-1]).cumsum(0).tolist(), lengths)])
    collected = time.perf_counter() - began

    results = {label: [] for label in args.variants}
    for seed in args.seeds:
        sampler = torch.Generator().manual_seed(seed)
        batch_starts = valid[torch.randint(0, len(valid), (args.updates, args.batch_size), generator=sampler)]
        for label, config_name, overrides in VARIANTS:
            if label not in args.variants:
                continue
            cfg, wm = build(config_name, overrides, args, seed)
            print(f"seed {seed}: training {label}: {sum(p.numel() for p in wm.parameters()):,} parameters, "
                  f"{args.updates} updates ...", file=sys.stderr, flush=True)
            trained_at = time.perf_counter()
            run = {"config": cfg, "params": sum(p.numel() for p in wm.parameters()), "curve": [], "seconds": None,
                   "train": {"seconds_per_update": None}}
            results[label].append(run)
            # saved after every evaluation, so that a job stopped early keeps the curve so far
            run["train"] = train(wm, train_data, batch_starts, heldout, args, seed, run["curve"],
                                 lambda: save_json(args, argv, results) if args.json else None)
            run.update({f"eval/{game}": run["curve"][-1][game] for game in args.games})
            run["seconds"] = time.perf_counter() - trained_at
            print(f"seed {seed}: {label} done in {run['seconds']:.0f} s", file=sys.stderr, flush=True)
            if args.json:
                save_json(args, argv, results)

    first = results[args.variants[0]][0]
    wm_cfg = first["config"].Models.WorldModel
    maskgit_configs = [runs[0]["config"] for runs in results.values()
                       if runs[0]["config"].Models.WorldModel.Prior == "maskgit"]
    mg_cfg = maskgit_configs[0].Models.MaskGit if maskgit_configs else None
    print(f"## World-model prior comparison: {', '.join(args.games)} (random policy)\n")
    for game in args.games:
        print(f"- {game}: {args.steps} steps ({nonzero[game][0]} non-zero rewards, {nonzero[game][1]} terminations/"
              f"life losses), last {args.steps - int(round(args.steps * (1 - args.holdout)))} held out "
              f"({first[f'eval/{game}']['sequences']} disjoint sequences of {args.batch_length})")
    print(f"- training: {args.updates} updates of {args.batch_size} x {args.batch_length} steps per variant and "
          f"seed (seeds {', '.join(map(str, args.seeds))}), the same batches in the same order for every variant; "
          f"preset {args.preset}, overrides {' '.join(args.override) or 'none'}; lr {wm_cfg.LearningRate:g} "
          f"(prior x{args.prior_lr_scale:g}); "
          f"K x C = {wm_cfg.CategoricalDim} x {wm_cfg.ClassDim}, D = {wm_cfg.TransformerHiddenDim}"
          + (f"; MaskGIT {mg_cfg.NumLayers} layer(s) x {mg_cfg.EmbeddingDim}, FFN {mg_cfg.FeedForwardDim}"
             if mg_cfg is not None else "")
          + f"; device {args.device}, {args.threads} thread(s)")
    print(f"- wall time: {time.perf_counter() - began:.0f} s (collection {collected:.0f} s)\n")

    def cell(label, pick, fmt):
        mean, sd = mean_sd([pick(run) for run in results[label]])
        return f"{fmt.format(mean)} ± {fmt.format(sd)}"

    rows = [("parameters", lambda r: r["params"], "{:,.0f}"),
            ("train: reconstruction loss", lambda r: r["train"]["reconstruction_loss"], "{:.2f}"),
            ("train: dynamics KL (objective)", lambda r: r["train"]["dynamics_kl"], "{:.3f}"),
            ("train: seconds / update", lambda r: r["train"]["seconds_per_update"], "{:.3f}")]
    for game in args.games:
        rows += [(f"{game} held-out: {name}", (lambda r, g=game, k=key: r[f"eval/{g}"][k]), fmt)
                 for key, name, fmt in HELDOUT_FIGURES]
    print("| figure | " + " | ".join(args.variants) + " |")
    print("|---|" + "---:|" * len(args.variants))
    for name, pick, fmt in rows:
        print(f"| {name} | " + " | ".join(cell(label, pick, fmt) for label in args.variants) + " |")
    skipped = {label: sum(run["train"]["skipped_updates"] for run in results[label]) for label in args.variants}
    print(f"\nMean ± standard deviation over {len(args.seeds)} seed(s). Training figures: mean over the last "
          f"{max(1, args.updates // 10)} updates. Objective KL: MLP over all tokens, MaskGIT over its masked tokens "
          "only (not comparable); sampling figures: all tokens under the distribution prior.sample() draws from "
          f"(comparable). Perplexity is at most C/unimix; uniform = {wm_cfg.ClassDim}. Skipped updates: {skipped}.")
    runs = saved_runs(args, results)
    if len(args.eval_at) > 1:
        print_curves(runs, args.games)
    if args.plot:
        plot_curves(runs, args.games, args.plot)


if __name__ == "__main__":
    main()
