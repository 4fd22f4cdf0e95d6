"""Evaluate the saved checkpoints of a training run in the real environment (SPEC 7).

    python eval.py -config_path="config_files/STORM.yaml" -env_name="ALE/Boxing-v5" -run_name="Boxing-STORM-seed_0"

Every saved_models/<run_name>/weights_<step>.pt plays `-episodes` (20) episodes to game
over with sampled actions (the acting rule of the run's model family, evaluation.py); each
checkpoint's summary becomes one row of outputs/eval_result/<run_name>.csv (header
step,episode_avg_return,episode_std,episode_min,episode_max,episodes), rewritten
atomically after every checkpoint. Steps
already in the CSV are skipped, so a stopped evaluation continues where it stopped;
`-all` re-evaluates every checkpoint, `-step N` only weights_N.pt.

REM runs (`-config_path config_files/REM.yaml`) act with REM's rule (REM_SPEC 5-6): actions
sampled at REMTrain.EvalTemperature (0.5) without epsilon, the controller's LSTM starting from
zeros in every episode, on the run's Atari protocol (BasicSettings.AtariProtocol).

The models are built from the config stored in each weights file, so a run trained with
overrides (e.g. `+preset=cpu`) needs no retyping of them. If `-config_path` (with any
overrides after the flags) differs from the stored config, the differing keys are printed
as a warning and the stored config is used; a different `-env_name` is an error.
"""
import argparse
import csv
import difflib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from hydra.errors import HydraException
from tqdm import tqdm

from config import CONFIG_DIR, ConfigError, config_differences, config_name_from_path
from env_wrapper import make_vector_env
from evaluation import EVAL_SEED_OFFSET, evaluate_checkpoint
from families import compose_config, family_of, stored_config
from utils import evaluation_bf16, load_checkpoint_file, select_device

CSV_FIELDS = ["step", "episode_avg_return", "episode_std", "episode_min", "episode_max", "episodes"]
class EvalError(Exception):
    """A problem with the command line or the run's files, reported without a traceback."""


# ---------------------------------------------------------------------- run files
def checkpoint_steps(run_dir: Path) -> dict[int, Path]:
    """{step: weights_<step>.pt} of a run folder (half-written .tmp files do not match)."""
    found = {}
    for path in run_dir.glob("weights_*.pt"):
        step = path.stem.removeprefix("weights_")
        if step.isdigit():
            found[int(step)] = path
    return dict(sorted(found.items()))


def find_run(checkpoint_dir: Path, run_name: str) -> Path:
    run_dir = checkpoint_dir / run_name
    if run_dir.is_dir():
        return run_dir
    if not checkpoint_dir.is_dir():
        raise EvalError(f"no run {run_name!r}: the checkpoint folder {checkpoint_dir} does not exist; run from the "
                        "folder train.py ran in or pass -checkpoint_dir")
    runs = [p.name for p in checkpoint_dir.iterdir() if p.is_dir()]
    runs.sort(key=lambda name: -difflib.SequenceMatcher(None, run_name, name).ratio())
    listing = f"runs there, nearest first: {', '.join(runs)}" if runs else "it holds no runs"
    raise EvalError(f"no run {run_name!r}: {run_dir} does not exist; {listing}")


def load_weights(path: Path) -> dict:
    try:
        weights = load_checkpoint_file(path)
    except RuntimeError as error:
        raise EvalError(f"{error} (the file is corrupt or incomplete; move it out of the run folder "
                        "to evaluate the other checkpoints)") from None
    expected = {"step", "config", "action_dim", "discrete"}   # + one entry per model (checked when loaded)
    missing = expected - set(weights if isinstance(weights, dict) else ())
    if missing:
        raise EvalError(f"{path} is not a weights file written by train.py: missing {', '.join(sorted(missing))}")
    return weights


# ---------------------------------------------------------------------- results CSV
def read_results(path: Path, fields: list[str] = CSV_FIELDS) -> dict[int, dict[str, str]]:
    """Rows of an existing results CSV by step, kept as text so rewriting leaves them unchanged."""
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != fields:
            raise EvalError(f"{path} has columns {reader.fieldnames}, expected {fields}; "
                            "move it aside to start a new table")
        rows = {}
        for row in reader:
            if None in row or None in row.values() or not row["step"].isdigit():
                raise EvalError(f"{path} line {reader.line_num} is malformed: {row}; fix or move the file aside")
            rows[int(row["step"])] = row
    return rows


def write_results(path: Path, rows: dict[int, dict[str, str]], fields: list[str] = CSV_FIELDS) -> None:
    """Write to a temporary file beside `path`, then rename over it: a killed evaluation
    leaves the previous complete table, never a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.DictWriter(f, fields, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows[step] for step in sorted(rows))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)   # mkstemp creates it private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def summary_row(step: int, returns: np.ndarray) -> dict[str, str]:
    stats = (returns.mean(), returns.std(), returns.min(), returns.max())   # std over episodes (ddof=0)
    return dict(zip(CSV_FIELDS, [str(step), *(str(float(x)) for x in stats), str(len(returns))]))


# ---------------------------------------------------------------------- command line
def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("-config_path", required=True,
                        help="model config: config_files/STORM.yaml, config_files/GITSTORM.yaml, ... or just "
                             "its name (STORM)")
    parser.add_argument("-env_name", required=True, help="ALE/<Game>-v5 or dmc/<domain>_<task>")
    parser.add_argument("-run_name", required=True, help="folder of the run in -checkpoint_dir")
    parser.add_argument("-checkpoint_dir", type=Path, default=Path("saved_models"))
    parser.add_argument("-output_dir", type=Path, default=Path("outputs/eval_result"))
    parser.add_argument("-episodes", type=positive_int, default=20, help="episodes per checkpoint")
    parser.add_argument("-num_envs", type=positive_int, default=None,
                        help="parallel envs (default: -episodes, one episode each)")
    parser.add_argument("-seed", type=int, default=0,
                        help=f"evaluation seed; envs get seed + {EVAL_SEED_OFFSET:,} + i")
    parser.add_argument("-device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("-max_steps", type=positive_int, default=None,
                        help="cap on an episode's agent steps (default: the env's own time limit only)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("-all", action="store_true", help="re-evaluate checkpoints already in the CSV")
    which.add_argument("-step", type=int, default=None,
                       help="evaluate only weights_<STEP>.pt (again, if it is already in the CSV)")
    parser.add_argument("overrides", nargs="*",
                        help="config overrides the run was trained with, e.g. +preset=cpu Models.Agent.Gamma=0.99")
    args = parser.parse_intermixed_args(argv)
    if args.num_envs is None:
        args.num_envs = args.episodes
    if args.num_envs > args.episodes:
        parser.error(f"-num_envs={args.num_envs} is more than -episodes={args.episodes}; "
                     "an env without an episode to play would only waste time")
    if args.seed < 0:
        parser.error(f"-seed={args.seed}: expected a non-negative integer")
    return args


def load_eval_config(config_path: str, env_name: str, overrides: list[str]):
    # A bare name (STORM, as evals.sh passes) means config_files/<name>.yaml.
    if Path(config_path).suffix not in (".yaml", ".yml"):
        config_path = str(CONFIG_DIR / f"{config_path}.yaml")
    try:
        return compose_config(config_name_from_path(config_path), [f"BasicSettings.env_name={env_name}", *overrides])
    except (ConfigError, HydraException) as error:
        raise EvalError(f"config: {error}") from None


def steps_to_evaluate(available: dict[int, Path], done: dict[int, dict], args, csv_path: Path) -> list[int]:
    if args.step is not None:
        if args.step not in available:
            raise EvalError(f"-step={args.step}: no weights_{args.step}.pt in {args.checkpoint_dir / args.run_name}; "
                            f"available steps: {', '.join(map(str, available))}")
        return [args.step]
    if args.all:
        return list(available)
    skipped = [step for step in available if step in done]
    if skipped:
        print(f"{args.run_name}: skipping steps {', '.join(map(str, skipped))}, already in {csv_path} "
              "(-all re-evaluates them)")
    return [step for step in available if step not in done]


def model_config(weights: dict, given, path: Path, env_name: str):
    """The config to evaluate `weights` with: the one it was trained with (stored in the file).
    Keys where -config_path and the overrides differ from it are printed as a warning."""
    try:
        cfg = stored_config(weights["config"], given)
    except (ConfigError, ValueError) as error:
        raise EvalError(f"{path}: its stored config cannot be read: {error}") from None
    if cfg.BasicSettings.env_name != env_name:
        raise EvalError(f"{path} was trained on {cfg.BasicSettings.env_name!r}, not -env_name={env_name!r}")
    differences = config_differences(weights["config"], given, family_of(cfg).acting_keys)
    if differences:
        print(f"warning: {path} was trained with another configuration than the one given; evaluating with "
              "the stored one:\n  " + "\n  ".join(differences), file=sys.stderr)
    return cfg


def run(args: argparse.Namespace) -> None:
    given = load_eval_config(args.config_path, args.env_name, args.overrides)
    try:   # one env: an unknown env name fails here, before anything is loaded (the protocol is the stored config's)
        make_vector_env(args.env_name, 1, 0, training=False, image_size=given.BasicSettings.ImageSize).close()
    except ValueError as error:
        raise EvalError(f"-env_name: {error}") from None

    run_dir = find_run(args.checkpoint_dir, args.run_name)
    available = checkpoint_steps(run_dir)
    if not available:
        raise EvalError(f"{run_dir} holds no weights_<step>.pt files: train.py writes one every "
                        "JointTrainAgent.SaveEverySteps steps")
    csv_path = args.output_dir / f"{args.run_name}.csv"
    results = read_results(csv_path)
    steps = steps_to_evaluate(available, results, args, csv_path)
    if not steps:
        print(f"{args.run_name}: every checkpoint is already evaluated in {csv_path}; nothing to do")
        return

    try:
        device = select_device(args.device)
    except (ValueError, RuntimeError) as error:
        raise EvalError(f"-device={args.device}: {error}") from None
    print(f"{args.run_name}: evaluating steps {', '.join(map(str, steps))} on {args.env_name}, {args.episodes} "
          f"episodes each on {args.num_envs} envs, device {device}", flush=True)
    built_for, models = None, None
    for step in steps:
        path = available[step]
        weights = load_weights(path)
        if weights["config"] != built_for:   # every checkpoint of a run shares one config: built once
            cfg = model_config(weights, given, path, args.env_name)
            bf16 = evaluation_bf16(cfg.BasicSettings.MixedPrecision, device)
            family = family_of(cfg)
            models = family.build_models(cfg, weights["action_dim"], weights["discrete"], device, bf16)
            built_for = weights["config"]
        missing = [name for name in models if name not in weights]
        if missing:
            raise EvalError(f"{path} holds no {', '.join(missing)} weights: not a weights file of a "
                            f"{cfg.BasicSettings.model} run written by train.py")
        try:
            for name, module in models.items():
                module.load_state_dict(weights[name])
        except RuntimeError as error:
            raise EvalError(f"{path}: weights do not fit the model built from its stored config: {error}") from None

        with tqdm(total=args.episodes, desc=f"{args.run_name} step {step}", unit="episode", dynamic_ncols=True,
                  disable=None) as bar:
            returns = evaluate_checkpoint(models, cfg, family.make_actor, args.env_name, args.episodes,
                                          args.num_envs, args.seed + EVAL_SEED_OFFSET, args.max_steps,
                                          on_episode_end=lambda _: bar.update())
        results[step] = summary_row(step, returns)
        write_results(csv_path, results)
        tqdm.write(f"{args.run_name} step {step}: return {returns.mean():.2f} +- {returns.std():.2f} "
                   f"(min {returns.min():g}, max {returns.max():g}) over {len(returns)} episodes -> {csv_path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except EvalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the CSV holds every checkpoint finished so far", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
