"""Stopping a run when the cluster asks, without losing a step.

SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 (what SLURM sends at preemption, `scancel` and before a
time limit; submitit's `signal_delay_s`) only set a flag. The training loop looks at it after
every step (REM: every collected step and every update), writes a full checkpoint of that
step and returns; train.py then hands the signal on and exits with REQUEUE_EXIT_STATUS.
A second signal while the checkpoint is written is reported and otherwise ignored, so the
save always completes (its files are written atomically in any case: utils.atomic_torch_save).

Cooperating with submitit (hydra-submitit-launcher runs train.py's task function inside
submitit's job process): before our code runs, submitit.core.submission.process_job calls
JobEnvironment._handle_signals, which binds SIGUSR2 (or $SUBMITIT_PREEMPT_SIGNAL) to
SignalHandler.checkpoint_and_try_requeue (dump the job, `scontrol requeue`, sys.exit(-1):
exit status 255) and SIGTERM / SIGCONT to SignalHandler.bypass (log, carry on). We leave
SIGCONT alone and, for the four signals above, defer the handler found installed: once the
checkpoint is written it is called with the signal, so submitit requeues the job as it would
have, now with a checkpoint of the very step. Where it returns (its bypass, or a rank other
than 0) or there was none, we exit with REQUEUE_EXIT_STATUS. A signal the parent process
ignores (SIG_IGN, e.g. SIGINT of a background job) stays ignored.
"""
import signal
import sys
from typing import NoReturn

# EX_TEMPFAIL of sysexits.h, "temporary failure, the user is invited to retry": the run
# stopped at a checkpoint and re-running the same command continues it.
REQUEUE_EXIT_STATUS = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


class StopSignals:
    """Context manager: while open, the SIGNALS set `received`; calling it says whether one came."""

    def __init__(self):
        self.received: int | None = None
        self.previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        for signum in SIGNALS:
            previous = signal.getsignal(signum)
            if previous is not signal.SIG_IGN:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def __call__(self) -> bool:
        return self.received is not None

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = signum
            print(f"{name} received: finishing this step, then saving a checkpoint and exiting", file=sys.stderr,
                  flush=True)
        else:
            print(f"{name} received while stopping: ignored, the checkpoint is being written", file=sys.stderr,
                  flush=True)

    def hand_over(self) -> NoReturn:
        """After the checkpoint of the stopping step: run the handler that was installed before
        ours (submitit's requeue) with the signal, then exit with REQUEUE_EXIT_STATUS."""
        previous = self.previous.get(self.received)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(self.received, None)
        sys.exit(REQUEUE_EXIT_STATUS)
