"""Train a model of any family (families/): STORM or GIT-STORM (collect real steps, and after
the warm-up, per env step one world-model update and one agent update in imagination; paper
table 8), or REM (epochs of collection, then tokenizer, world-model and controller updates).

    python train.py BasicSettings.env_name=ALE/Boxing-v5                                   # STORM
    python train.py BasicSettings.config_path=config_files/GITSTORM.yaml BasicSettings.env_name=ALE/Boxing-v5
    python train.py --config-name GITSTORM +preset=cpu                                     # quick CPU run
    python train.py --config-name REM BasicSettings.env_name=ALE/Boxing-v5                 # REM

Outputs: TensorBoard events in runs/<n>/, checkpoints in saved_models/<n>/. Re-running the
same command resumes from the latest checkpoint (BasicSettings.Resume=fresh starts over).
SIGTERM, SIGINT, SIGUSR1 or SIGUSR2 stop the run after the step in progress with a checkpoint
of that step, and the exit status 75 asks for a requeue (preemption.py; docs/resuming.md).
The loops are the families' (families/<family>/trainer.py); what they share is run_trainer.py.
"""
import signal
import sys

import hydra
from omegaconf import DictConfig

from config import ConfigError, default_run_name
from families import family_of, load_config
from preemption import StopSignals
from run_trainer import CheckpointError, SaveError


@hydra.main(config_path="config_files", config_name="STORM", version_base=None)
def main(raw_cfg: DictConfig) -> None:
    try:
        cfg = load_config(raw_cfg)
    except ConfigError as error:   # one clear line, no traceback (Hydra would print one and a hint)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if cfg.BasicSettings.n is None:
        cfg.BasicSettings.n = default_run_name(cfg)
    trainer = family_of(cfg).trainer(cfg)
    latest = trainer.dirs.latest_checkpoint()
    if latest is not None and cfg.BasicSettings.Resume == "fresh":
        trainer.dirs.move_aside()
    elif latest is not None:
        try:
            trainer.restore(latest)
        except CheckpointError as error:
            trainer.envs.close()
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)
        print(f"Resuming run {cfg.BasicSettings.n} from step {trainer.step} ({latest}): {trainer.start_message()}; "
              "pass BasicSettings.Resume=fresh to start over", flush=True)
    else:
        print(f"Starting run {cfg.BasicSettings.n} ({cfg.BasicSettings.model}): {trainer.start_message()}; "
              f"TensorBoard: {trainer.dirs.logs}", flush=True)
    finished = trainer.finished_message()
    if finished is not None:
        trainer.envs.close()
        print(f"Run {cfg.BasicSettings.n} {finished}; nothing to do.")
        return
    warning = trainer.free_space_warning()
    if warning is not None:
        print(warning, file=sys.stderr, flush=True)
    with StopSignals() as stop:
        try:
            trainer.run(should_stop=stop)
        except SaveError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)
        if stop() and trainer.finished_message() is None:   # a signal after the last step: the run is done
            print(f"Stopped run {cfg.BasicSettings.n} at step {trainer.step} ({signal.Signals(stop.received).name}) "
                  f"with a checkpoint in {trainer.dirs.checkpoints}; the same command continues it", flush=True)
            stop.hand_over()


if __name__ == "__main__":
    main()
