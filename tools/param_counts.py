"""Parameter counts of the Atari-size STORM and GIT-STORM world models and of the agent.

    python tools/param_counts.py [--actions 18] [--preset cpu]

Builds the models from config_files/STORM.yaml and GITSTORM.yaml (optionally with a preset)
for a game with --actions discrete actions (18 = the full Atari action set) and prints the
counts per part as a Markdown table, plus the MaskGIT / MLP prior size ratio.
It then prints REM's tokenizer and POP world model (config_files/REM.yaml; with --preset P,
preset rem_P).
"""
import argparse
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from agents import ActorCriticAgent  # noqa: E402
from families import compose_config  # noqa: E402
from sub_models.world_models import WorldModel  # noqa: E402

PARTS = (("encoder", "encoder"), ("decoder", "decoder"), ("sequence model (mixer + transformer)", "sequence_model"),
         ("prior", "prior"), ("reward head", "reward_head"), ("termination head", "termination_head"))


def count(module, trainable_only=False):
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def world_model_counts(config_name, action_dim, overrides):
    cfg = compose_config(config_name, list(overrides))
    wm = WorldModel(cfg.Models, action_dim, discrete_actions=True)
    counts = {label: count(getattr(wm, attr)) for label, attr in PARTS}
    counts["total"] = count(wm)
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    return cfg, wm, counts


ABLATIONS = (("GIT-STORM (concat mixer, categorical)", []),
             ("concat + attention mixer (E.4.1)", ["Models.WorldModel.StateMixer=concat_attn"]),
             ("cross-attention mixer (E.4.1)", ["Models.WorldModel.StateMixer=cross_attn"]),
             ("unmixed states (E.4.2)", ["Models.WorldModel.StateMixer=unmixed"]),
             ("iVideoGPT action embedding (E.4.2)", ["Models.WorldModel.StateMixer=ivideogpt"]),
             ("VQ-VAE latents (E.3)", ["Models.WorldModel.Latent=vqvae"]),
             ("w/o MaskGIT dot product (E.1)", ["Models.MaskGit.DotProductLogits=false"]))


def variant_counts(action_dim, overrides):
    """--variants: the GIT-STORM world model with each appendix-E ablation key."""
    print(f"GIT-STORM ablation variants, {'paper' if not overrides else overrides[0]} sizes, {action_dim} actions\n")
    print("| variant | override | encoder | sequence model | prior | world model | vs GIT-STORM |")
    print("|---|---|---:|---:|---:|---:|---:|")
    base = None
    for label, extra in ABLATIONS:
        _, _, c = world_model_counts("GITSTORM", action_dim, list(overrides) + extra)
        base = base or c["total"]
        print(f"| {label} | {' '.join(f'`{e}`' for e in extra) or '—'} | {c['encoder']:,} | "
              f"{c['sequence model (mixer + transformer)']:,} | {c['prior']:,} | {c['total']:,} | "
              f"{c['total'] - base:+,} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--actions", type=int, default=18, help="number of discrete actions (default 18)")
    parser.add_argument("--preset", default=None, help="config preset, e.g. cpu (default: the paper's sizes)")
    parser.add_argument("--variants", action="store_true", help="GIT-STORM with each ablation key of appendix E")
    args = parser.parse_args(argv)
    overrides = [f"+preset={args.preset}"] if args.preset else []
    if args.variants:
        return variant_counts(args.actions, overrides)

    storm_cfg, storm, storm_counts = world_model_counts("STORM", args.actions, overrides)
    _, gitstorm, gitstorm_counts = world_model_counts("GITSTORM", args.actions, overrides)

    size = "paper (Atari)" if not args.preset else f"preset {args.preset}"
    print(f"World model parameters, {size} sizes, {args.actions} actions\n")
    print("| part | STORM | GIT-STORM |")
    print("|---|---:|---:|")
    for label in [label for label, _ in PARTS] + ["total"]:
        print(f"| {label} | {storm_counts[label]:,} | {gitstorm_counts[label]:,} |")
    prior_name = {"STORM": type(storm.prior).__name__, "GIT-STORM": type(gitstorm.prior).__name__}
    ratio = gitstorm_counts["prior"] / storm_counts["prior"]
    print(f"\nprior: {prior_name['GIT-STORM']} / {prior_name['STORM']} = "
          f"{gitstorm_counts['prior']:,} / {storm_counts['prior']:,} = {ratio:.3f}x")
    total_ratio = gitstorm_counts["total"] / storm_counts["total"]
    print(f"world model: GIT-STORM / STORM = {total_ratio:.3f}x "
          f"(+{gitstorm_counts['total'] - storm_counts['total']:,})")

    wm_cfg = storm_cfg.Models.WorldModel
    state_dim = wm_cfg.CategoricalDim * wm_cfg.ClassDim + wm_cfg.TransformerHiddenDim
    agent = ActorCriticAgent(storm_cfg.Models.Agent, state_dim, args.actions, discrete_actions=True)
    print(f"\nAgent (same for both), state [z, h] = {state_dim}, {args.actions} actions\n")
    print("| part | parameters |")
    print("|---|---:|")
    for label, module in (("actor", agent.actor), ("critic", agent.critic), ("slow critic (EMA, not trained)",
                                                                           agent.slow_critic)):
        print(f"| {label} | {count(module):,} |")
    print(f"| total (trained) | {count(agent, trainable_only=True):,} |")
    print(f"| total (incl. slow critic) | {count(agent):,} |")
    rem_counts(args.actions, [f"+preset=rem_{args.preset}"] if args.preset else [])


def rem_counts(action_dim, overrides):
    """REM's tokenizer (without LPIPS), POP world model and controller (config_files/REM.yaml)."""
    from sub_models.rem import build_rem_models
    cfg = compose_config("REM", list(overrides))
    tok, wm, controller = build_rem_models(cfg, action_dim, True).values()
    codebook_convs = count(tok.pre_quant_conv) + count(tok.post_quant_conv)
    heads = count(wm.head_observations) + count(wm.head_rewards) + count(wm.head_ends)
    print(f"\nREM, {'paper' if not overrides else overrides[0]} sizes, {action_dim} actions\n")
    print("| part | parameters |")
    print("|---|---:|")
    for label, n in (("tokenizer encoder", count(tok.encoder)), ("tokenizer decoder", count(tok.decoder)),
                     ("tokenizer codebook + 1x1 convs", count(tok.embedding) + codebook_convs),
                     ("tokenizer (no LPIPS)", count(tok)),
                     (f"RetNet ({len(wm.retnet.layers)} layers)", count(wm.retnet)),
                     ("token + prediction-token embeddings", count(wm.token_embedding) + count(wm.prediction_tokens)),
                     ("observation, reward, termination heads", heads), ("world model", count(wm)),
                     ("tokenizer + world model", count(tok) + count(wm)),
                     ("controller: convs + Linear", count(controller.convs) + count(controller.dense)),
                     ("controller: LSTMCell", count(controller.lstm)),
                     ("controller: actor, critic, action embedding", count(controller.actor) + count(controller.critic)
                      + (count(controller.action_embedding) if controller.action_embedding is not None else 0)),
                     ("controller", count(controller)), ("REM (V + M + C)", count(tok) + count(wm) + count(controller))):
        print(f"| {label} | {n:,} |")


if __name__ == "__main__":
    main()
