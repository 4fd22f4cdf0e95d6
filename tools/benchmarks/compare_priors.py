"""STORM (MLP prior) vs GIT-STORM (MaskGIT prior) world models on the same Atari data.

    python tools/benchmarks/compare_priors.py [--game Boxing] [--steps 3000] [--updates 800]
        [--batch-size 8] [--batch-length 16] [--preset cpu] [--device cpu] [--seed 0]

1. Collects --steps agent steps of ALE/<game>-v5 once, with a seeded uniform random policy
   (training env: life loss counts as termination, as in train.py).
2. The first 80% of the steps are the training set, the last 20% the held-out set.
3. Trains both world models for --updates Adam steps on the *same* batches in the same order
   (the sequence starts are drawn once from a seeded generator) from the same global seed.
4. Prints one Markdown table: the training figures averaged over the last 10% of updates, and
   the held-out figures (eval mode, disjoint sequences of --batch-length steps).

Two kinds of KL / perplexity are reported, because the two priors' training losses count
different tokens:
  * "objective": the figures of WorldModel.loss. The MLP prior counts all K tokens; the MaskGIT
    prior counts only the tokens it masked (a random cosine-schedule subset, ~64% on average)
    and sees part of z_t in the others, so these are not comparable across priors.
  * "sampling": KL[q(z_{t+1} | o_{t+1}) || p] summed over all K tokens and the perplexity of the
    posterior sample of z_{t+1} over all K tokens, where p is the distribution `prior.sample(h_t)`
    drew each token from (for MaskGIT, draft-and-revise with the config's rounds). This is the
    distribution imagination uses, the same for both priors: the comparable figure.
"""
import argparse
import math
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402

from config import compose_config  # noqa: E402
from sub_models.functions_losses import categorical_kl  # noqa: E402
from sub_models.world_models import WorldModel  # noqa: E402

MODELS = (("STORM", "STORM (MLP prior)"), ("GITSTORM", "GIT-STORM (MaskGIT prior)"))
TRAIN_FIGURES = ("reconstruction_loss", "reward_loss", "termination_loss", "dynamics_kl", "prior_perplexity")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", default="Boxing", help="Atari game, ALE/<game>-v5 (default Boxing)")
    parser.add_argument("--steps", type=int, default=3000, help="random-policy agent steps collected (default 3000)")
    parser.add_argument("--updates", type=int, default=800, help="world-model updates per prior (default 800)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per batch (default 8)")
    parser.add_argument("--batch-length", type=int, default=16, help="steps per sequence (default 16)")
    parser.add_argument("--preset", default="cpu", help="config preset (default cpu); 'none' = paper sizes")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--override", action="append", default=[],
                        help="Hydra override applied to both configs, repeatable (e.g. Models.MaskGit.TrainTarget=next)")
    parser.add_argument("--lr", type=float, default=None, help="world-model learning rate (default: the config's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the env, the batches and the models")
    parser.add_argument("--holdout", type=float, default=0.2, help="fraction of steps held out (default 0.2)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: faster than 2 on a busy 2-core machine)")
    args = parser.parse_args(argv)
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


def build(config_name, args, action_dim):
    overrides = [] if args.preset in (None, "", "none") else [f"+preset={args.preset}"]
    overrides += args.override
    if args.lr is not None:
        overrides.append(f"Models.WorldModel.LearningRate={args.lr}")
    cfg = compose_config(config_name, overrides)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return cfg, WorldModel(cfg.Models, action_dim, discrete_actions=True, use_bf16=use_bf16).to(device)


def train(wm, data, batch_starts, args):
    torch.manual_seed(args.seed + 1)  # the same masks / samples stream for both priors at the start
    history, skipped = [], 0
    start = time.perf_counter()
    for starts in batch_starts:
        metrics, finite = wm.update(*gather(data, starts, args.batch_length, wm.device))
        skipped += not finite
        history.append({k.split("/", 1)[1]: v.float().item() for k, v in metrics.items()})
    seconds = time.perf_counter() - start
    tail = history[-max(1, len(history) // 10):]
    final = {k: sum(h[k] for h in tail) / len(tail) for k in TRAIN_FIGURES}
    final["seconds_per_update"] = seconds / len(batch_starts)
    final["skipped_updates"] = skipped
    final["first_reconstruction_loss"] = history[0]["reconstruction_loss"]
    return final


@torch.no_grad()
def evaluate(wm, data, args):
    """Held-out figures over disjoint sequences, eval mode, one fixed seed."""
    n = data[0].shape[0] // args.batch_length
    starts = torch.arange(n) * args.batch_length
    obs, actions, rewards, terminations = gather(data, starts, args.batch_length, wm.device)
    wm.eval()
    torch.manual_seed(args.seed + 2)
    _, objective = wm.loss(obs, actions, rewards, terminations)
    torch.manual_seed(args.seed + 3)
    posterior, z = wm.encode(obs)                                   # (B, T, K, C)
    h = wm.sequence_model(z, wm.action_input(actions))              # (B, T, D)
    _, sample_log_probs = wm.prior.sample(h[:, :-1].flatten(0, 1))  # what imagination draws z_{t+1} from
    sample_log_probs = sample_log_probs.unflatten(0, h[:, :-1].shape[:2]).float()
    sampling_kl = categorical_kl(posterior[:, 1:], sample_log_probs).sum(-1).mean()
    sampling_nll = -(sample_log_probs * z[:, 1:]).sum(-1).mean()
    return {
        "sequences": n,
        "reconstruction_loss": objective["world_model/reconstruction_loss"].item(),
        "reward_loss": objective["world_model/reward_loss"].item(),
        "dynamics_kl": objective["world_model/dynamics_kl"].item(),
        "prior_perplexity": objective["world_model/prior_perplexity"].item(),
        "sampling_kl": sampling_kl.item(),
        "sampling_perplexity": math.exp(sampling_nll.item()),
    }


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    data = collect(args.game, args.steps, args.seed)
    num_train = int(round(args.steps * (1 - args.holdout)))
    train_data = tuple(x[:num_train] for x in data)
    heldout_data = tuple(x[num_train:] for x in data)
    from env_wrapper import make_env
    probe = make_env(f"ALE/{args.game}-v5", args.seed, training=True)
    action_dim = int(probe.action_space.n)
    probe.close()
    collected = time.perf_counter() - began

    sampler = torch.Generator().manual_seed(args.seed)
    batch_starts = torch.randint(0, num_train - args.batch_length + 1, (args.updates, args.batch_size),
                                 generator=sampler)

    results = {}
    for config_name, label in MODELS:
        cfg, wm = build(config_name, args, action_dim)
        print(f"training {label}: {sum(p.numel() for p in wm.parameters()):,} parameters, "
              f"{args.updates} updates ...", file=sys.stderr, flush=True)
        results[label] = {"config": cfg, "params": sum(p.numel() for p in wm.parameters()),
                          "train": train(wm, train_data, batch_starts, args),
                          "eval": evaluate(wm, heldout_data, args)}

    wm_cfg = next(iter(results.values()))["config"].Models.WorldModel
    mg_cfg = next(iter(results.values()))["config"].Models.MaskGit
    nonzero = int((data[2] != 0).sum())
    print(f"## World-model prior comparison: ALE/{args.game}-v5, random policy\n")
    print(f"- data: {args.steps} steps (seed {args.seed}; {nonzero} non-zero rewards, "
          f"{int(data[3].sum())} terminations/life losses), first {num_train} for training, "
          f"last {args.steps - num_train} held out ({results[MODELS[0][1]]['eval']['sequences']} disjoint "
          f"sequences of {args.batch_length})")
    print(f"- training: {args.updates} updates of {args.batch_size} x {args.batch_length} steps, the same "
          f"batches in the same order for both; preset {args.preset}; lr {wm_cfg.LearningRate:g}; "
          f"K x C = {wm_cfg.CategoricalDim} x {wm_cfg.ClassDim}, D = {wm_cfg.TransformerHiddenDim}; "
          f"MaskGIT: {mg_cfg.NumLayers} layer(s) x {mg_cfg.EmbeddingDim}, T_draft={mg_cfg.DraftRounds}, "
          f"T_revise={mg_cfg.ReviseRounds}, M={mg_cfg.ReviseRepetitions}, target {mg_cfg.TrainTarget}; "
          f"device {args.device}, {args.threads} thread(s)")
    print(f"- wall time: {time.perf_counter() - began:.0f} s (collection {collected:.0f} s)\n")

    labels = [label for _, label in MODELS]
    rows = [
        ("parameters", lambda r: f"{r['params']:,}"),
        ("train: reconstruction loss (first update)", lambda r: f"{r['train']['first_reconstruction_loss']:.1f}"),
        ("train: reconstruction loss", lambda r: f"{r['train']['reconstruction_loss']:.2f}"),
        ("train: reward loss", lambda r: f"{r['train']['reward_loss']:.4f}"),
        ("train: dynamics KL (objective)", lambda r: f"{r['train']['dynamics_kl']:.3f}"),
        ("train: prior perplexity (objective)", lambda r: f"{r['train']['prior_perplexity']:.3f}"),
        ("train: seconds / update", lambda r: f"{r['train']['seconds_per_update']:.3f}"),
        ("held-out: reconstruction loss", lambda r: f"{r['eval']['reconstruction_loss']:.2f}"),
        ("held-out: reward loss", lambda r: f"{r['eval']['reward_loss']:.4f}"),
        ("held-out: dynamics KL (objective)", lambda r: f"{r['eval']['dynamics_kl']:.3f}"),
        ("held-out: prior perplexity (objective)", lambda r: f"{r['eval']['prior_perplexity']:.3f}"),
        ("held-out: dynamics KL (sampling, all tokens)", lambda r: f"{r['eval']['sampling_kl']:.3f}"),
        ("held-out: perplexity (sampling, all tokens)", lambda r: f"{r['eval']['sampling_perplexity']:.3f}"),
    ]
    print("| figure | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for name, fmt in rows:
        print(f"| {name} | " + " | ".join(fmt(results[label]) for label in labels) + " |")
    skipped = {label: results[label]["train"]["skipped_updates"] for label in labels}
    print(f"\nTraining figures: mean over the last {max(1, args.updates // 10)} updates. Objective KL/perplexity: "
          "MLP over all tokens, MaskGIT over its masked tokens only (not comparable); sampling figures: "
          "all tokens under the distribution prior.sample() draws from (comparable). "
          f"Perplexity is at most C/unimix; uniform = {wm_cfg.ClassDim}. Skipped (non-finite) updates: {skipped}.")


if __name__ == "__main__":
    main()
