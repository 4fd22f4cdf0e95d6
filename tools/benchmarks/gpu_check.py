"""The device check: one command that, on a machine with one CUDA GPU and the project installed,
writes within 8 minutes a report of what this project does there (docs/speed.md, "The device check").

    python tools/benchmarks/gpu_check.py --out gpu_report             # one CUDA GPU
    python tools/benchmarks/gpu_check.py --dry-run --out /tmp/check   # CPU, tiny preset: every part, ~1-2 min

Parts, in this order, each in a process of its own with a time budget of its own; a part that
fails or runs out of time is recorded in the report and the next one runs:
  environment  device, driver, torch / CUDA / cuDNN versions, the bf16 and TF32 settings in force
  cuda_tests   `pytest -m cuda`: the CUDA-only tests (tests/test_cuda.py and every test marked cuda)
  phases       per model (STORM, GIT-STORM) and update mode (eager, compiled, reduce-overhead; see
               update_steps.py): ms per world-model update, imagination + agent update and acting
               step at paper size (bf16 where the GPU has it), peak GPU memory, and the kernel and
               CUDA-graph launches per env step counted by torch.profiler
  loop         train.py's loop (Trainer.run) on ALE/Boxing-v5 at paper size, GIT-STORM: as many env
               steps after the warm-up as fit in --loop-seconds (180), env steps/s, the phase split
               and the projected time of a 102k-step run
The folder gets report.md (tables), report.json (every figure) and parts.log (each part's output),
rewritten after every part. Missing packages are named before anything runs, with the command
that installs them from the wheel kit. --dry-run compiles with torch.compile's "eager" backend
(traced whole, no code generated), where CUDA graphs fall back to the eager updates.
"""
import argparse
import importlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

# module -> the package that provides it (gymnasium, ale-py and hydra are what the wheel kit brings)
REQUIRED = {"torch": "torch", "numpy": "numpy", "gymnasium": "gymnasium", "ale_py": "ale-py",
            "hydra": "hydra-core", "omegaconf": "omegaconf", "antlr4": "antlr4-python3-runtime",
            "tensorboard": "tensorboard", "cv2": "opencv-python-headless", "tqdm": "tqdm", "PIL": "pillow",
            "pytest": "pytest"}
WHEEL_KIT = ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
             "--target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH")
MODELS = ("STORM", "GITSTORM")
# eager first (no compilation), then GIT-STORM, whose compiled graphs the loop reuses from the cache
PHASE_RUNS = [("STORM", "eager"), ("GITSTORM", "eager"), ("GITSTORM", "reduce-overhead"), ("GITSTORM", "compiled"),
              ("STORM", "reduce-overhead"), ("STORM", "compiled")]
DRY_PHASE_RUNS = [("STORM", "compiled"), ("GITSTORM", "reduce-overhead")]   # every mode has run by then
# the tests' tiny sizes (tests/test_train.py TINY) for the dry run
DRY_SIZES = ["+preset=cpu", "JointTrainAgent.BufferWarmUp=32", "JointTrainAgent.BatchSize=2",
            "JointTrainAgent.BatchLength=8", "JointTrainAgent.ImagineBatchSize=8",
            "JointTrainAgent.ImagineContextLength=4", "JointTrainAgent.ImagineBatchLength=4"]


def missing_packages() -> list[str]:
    missing = []
    for module, package in REQUIRED.items():
        try:
            importlib.import_module(module)
        except Exception as error:   # a broken install counts as missing, with its reason
            missing.append(f"{package} ({type(error).__name__}: {error})")
    return missing


# ---------------------------------------------------------------------------------------------- workers
# Each runs in a child process (`--worker NAME`) and writes one JSON object to --result.

def environment_worker(args) -> dict:
    import torch
    from utils import select_device, use_bf16
    device = select_device("cpu" if args.dry_run else "cuda")
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
            "device": str(device), "cpu_cores": os.cpu_count(),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "project_precision_auto": "bf16" if use_bf16("auto", device) else "fp32"}
    for name, read in (("tf32_matmul", lambda: torch.backends.cuda.matmul.allow_tf32),
                       ("tf32_cudnn", lambda: torch.backends.cudnn.allow_tf32)):
        try:   # newer torch refuses the legacy flags once its fp32_precision API has been used
            info[name] = read()
        except RuntimeError as error:
            info[name] = f"unreadable: {error}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2 ** 30, 1), cudnn=torch.backends.cudnn.version(),
                    bf16_supported=torch.cuda.is_bf16_supported())
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name,clocks.max.sm",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as error:
            info["nvidia_smi"] = f"not available: {error}"
    return info


def phase_worker(args) -> dict:
    """One model in one update mode: the three phases timed, peak memory, launches per env step."""
    import torch
    from families import compose_config
    from tools.benchmarks.throughput import Phases, launch_counts, profiler_activities, timed
    from update_steps import GraphedUpdate
    from utils import select_device
    device = select_device("cpu" if args.dry_run else "cuda")
    cfg = compose_config(args.model, (DRY_SIZES if args.dry_run else []) + [f"BasicSettings.Device={device}"])
    train = cfg.JointTrainAgent
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    phases = Phases(cfg, device, mode=args.mode, backend="eager" if args.dry_run else "inductor")
    calls = {"world_model_update": phases.world_model_update, "imagination_and_agent_update": phases.imagine_and_update,
             "acting": phases.act}
    start = time.perf_counter()
    for _ in range(GraphedUpdate.WARMUP_CALLS + 1 if args.mode == "reduce-overhead" else 1):   # compile, capture
        phases.world_model_update()
        phases.imagine_and_update()
    sync()
    first_calls_s = time.perf_counter() - start
    repeats = 1 if args.dry_run else 10
    ms = {name: 1e3 * timed(call, repeats, device) for name, call in calls.items()}
    launches = {}
    for name, call in calls.items():
        with torch.profiler.profile(activities=profiler_activities(device)) as profiler:
            call()
            sync()
        events = profiler.key_averages()
        on_gpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        launches[name] = {**launch_counts(events), "gpu_ops": sum(e.count for e in on_gpu),
                          "gpu_kernel_ms": 1e-3 * sum(e.self_device_time_total for e in on_gpu)}
    every = {"world_model_update": train.TrainDynamicsEverySteps, "imagination_and_agent_update": train.TrainAgentEverySteps,
             "acting": 1}
    per_env_step = {key: sum(launches[name][key] / every[name] for name in calls)
                    for key in ("aten_ops", "kernel_launches", "graph_launches", "gpu_ops", "gpu_kernel_ms")}
    step_ms = sum(ms[name] / every[name] for name in calls)
    return {"model": args.model, "mode": args.mode, "device": str(device), "bf16": phases.bf16,
            "sizes": {"batch": f"{train.BatchSize}x{train.BatchLength}",
                      "imagination": f"{train.ImagineBatchSize}x({train.ImagineContextLength}+{train.ImagineBatchLength})"},
            "first_calls_s": first_calls_s, "ms": ms, "env_steps_per_s": train.NumEnvs * 1e3 / step_ms,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None,
            "per_call": launches, "per_env_step": per_env_step}


def loop_worker(args) -> dict:
    from families import compose_config
    from tools.benchmarks.throughput import run_loop
    device = "cpu" if args.dry_run else "cuda"
    overrides = (DRY_SIZES if args.dry_run else []) + [
        "BasicSettings.env_name=ALE/Boxing-v5", f"BasicSettings.Device={device}",
        *([f"BasicSettings.Compile={args.loop_compile}"] if args.loop_compile else [])]
    cfg = compose_config(args.loop_config, overrides)
    return run_loop(cfg, seconds=args.loop_seconds, profile_steps=2 if args.dry_run else 5, stop_by=args.stop_by)


WORKERS = {"environment": environment_worker, "phase": phase_worker, "loop": loop_worker}


# ---------------------------------------------------------------------------------------------- parent

class Check:
    """Runs the parts as child processes under one deadline and keeps the report up to date."""

    def __init__(self, args):
        self.args, self.out = args, args.out
        self.deadline = time.time() + args.total_seconds
        self.report = {"command": " ".join(sys.argv), "dry_run": args.dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "parts": {}}
        self.scratch = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "parts.log").write_text("")

    def child(self, name: str, command: list[str], budget: float, result_file: Path | None = None
              ) -> tuple[dict, dict | None]:
        """Run `command`, killed (with its whole process group) after `budget` seconds or at the
        deadline; returns (the part's status, the JSON it wrote to `result_file` or None)."""
        timeout = max(1.0, min(budget, self.deadline - time.time()))
        start = time.perf_counter()
        with open(self.out / "parts.log", "a") as log:
            log.write(f"\n===== {name}: {' '.join(command)} (budget {timeout:.0f} s)\n")
            log.flush()
            process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                code = None
        seconds = time.perf_counter() - start
        status = {"seconds": round(seconds, 1), "budget_s": round(timeout)}
        if code is None:
            status.update(status="timed out", error=f"killed after {timeout:.0f} s (its budget)")
        elif code != 0 or (result_file is not None and not result_file.exists()):
            status.update(status="failed", error=f"exit code {code}: " + self.log_tail(name))
        else:
            status["status"] = "ok"
        found = result_file is not None and result_file.exists()
        return status, (json.loads(result_file.read_text()) if found else None)

    def log_tail(self, name: str, lines: int = 25) -> str:
        text = (self.out / "parts.log").read_text()
        return "\n".join(text[text.rindex(f"===== {name}:"):].splitlines()[-lines:])

    def worker(self, part: str, name: str, budget: float, *extra: str) -> tuple[dict, dict | None]:
        """Run worker `name` as the child process of `part`."""
        result_file = self.scratch / f"{part.replace(' ', '_')}.json"
        command = [sys.executable, __file__, "--worker", name, "--result", str(result_file),
                   *(["--dry-run"] if self.args.dry_run else []), *extra]
        return self.child(part, command, budget, result_file)

    def run(self) -> None:
        parts = self.args.parts.split(",")
        if "environment" in parts:
            self.record("environment", *self.worker("environment", "environment", 60))
        if "cuda_tests" in parts:
            self.cuda_tests()
        if "phases" in parts:
            self.phases()
        if "loop" in parts:
            compile_setting = ["--loop-compile", self.args.loop_compile] if self.args.loop_compile else []
            self.record("loop", *self.worker("loop", "loop", self.deadline - time.time(), "--loop-config",
                                             self.args.loop_config, "--loop-seconds", str(self.args.loop_seconds),
                                             "--stop-by", str(self.deadline - 15), *compile_setting))

    def cuda_tests(self) -> None:
        xml = self.scratch / "cuda_tests.xml"
        # the dry run collects one test file: on CPU every cuda test is skipped anyway
        command = [sys.executable, "-m", "pytest", "-m", "cuda", "-v", "-rA", "-p", "no:cacheprovider",
                   f"--junitxml={xml}", *(["tests/test_cuda.py"] if self.args.dry_run else [])]
        status, _ = self.child("cuda_tests", command, self.args.test_seconds)
        self.record("cuda_tests", status, {"tests": junit_results(xml) if xml.exists() else
                                           verbose_results(self.log_tail("cuda_tests", lines=10 ** 6))})

    def phases(self) -> None:
        runs, spent_by = [], time.time() + self.args.phase_seconds
        for model, mode in DRY_PHASE_RUNS if self.args.dry_run else PHASE_RUNS:
            name = f"phase {model} {mode}"
            left = spent_by - time.time()
            if left < 5:
                runs.append({"model": model, "mode": mode, "status": "not run", "error": "the phases' budget was spent"})
                continue
            status, result = self.worker(name, "phase", left, "--model", model, "--mode", mode)
            runs.append({"model": model, "mode": mode, **status, **(result or {})})
            self.record("phases", {"status": "running"}, {"runs": runs})
        failed = [r for r in runs if r["status"] != "ok"]
        self.record("phases", {"status": "ok" if not failed else f"{len(failed)} of {len(runs)} not ok",
                               "seconds": round(sum(r.get("seconds", 0) for r in runs), 1)}, {"runs": runs})

    def record(self, part: str, status: dict, result: dict | None) -> None:
        self.report["parts"][part] = {**status, **(result or {})}
        self.report["wall_s"] = round(time.time() - (self.deadline - self.args.total_seconds), 1)
        (self.out / "report.json").write_text(json.dumps(self.report, indent=1, default=str))
        (self.out / "report.md").write_text(markdown(self.report))


def junit_results(xml: Path) -> list[dict]:
    tests = []
    for case in ElementTree.parse(xml).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            found = case.find(tag)
            if found is not None:
                outcome, message = name, (found.get("message") or "").split("\n")[0][:300]
        tests.append({"test": f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}", "outcome": outcome,
                      "seconds": round(float(case.get("time", 0)), 1), "message": message})
    return tests


def verbose_results(log: str) -> list[dict]:
    """The outcomes `pytest -v` printed, when it was stopped before writing its XML report."""
    tests = []
    for line in log.splitlines():
        found = re.match(r"(tests/\S+?)\.py::(\S+) (PASSED|FAILED|SKIPPED|ERROR)", line)
        if found:
            tests.append({"test": f"{Path(found[1]).name}::{found[2]}", "outcome": found[3].lower(), "seconds": "",
                          "message": "(read from the log: pytest was stopped before its report)"})
    return tests


def markdown(report: dict) -> str:
    parts = report["parts"]
    lines = [f"# Device check{' (dry run, CPU)' if report['dry_run'] else ''}", "",
             f"`{report['command']}`, started {report['started']}, {report.get('wall_s', 0):.0f} s so far.", ""]
    lines += ["| part | status | seconds | note |", "|---|---|---:|---|"]
    for name, part in parts.items():
        lines.append(f"| {name} | {part.get('status')} | {part.get('seconds', '')} | "
                     f"{(part.get('error') or '').splitlines()[0][:150] if part.get('error') else ''} |")
    if "environment" in parts:
        env = {k: v for k, v in parts["environment"].items() if k not in ("status", "seconds", "budget_s")}
        lines += ["", "## Environment", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in env.items()]
    if "cuda_tests" in parts:
        tests = parts["cuda_tests"].get("tests", [])
        counts = {o: sum(t["outcome"] == o for t in tests) for o in ("passed", "failed", "error", "skipped")}
        lines += ["", "## CUDA-only tests (`pytest -m cuda`)", "",
                  ", ".join(f"{n} {o}" for o, n in counts.items() if n) or "no results", "",
                  "| test | outcome | s | message |", "|---|---|---:|---|"]
        lines += [f"| {t['test']} | {t['outcome']} | {t['seconds']} | {t['message'].replace('|', '/')} |" for t in tests]
    if "phases" in parts:
        lines += ["", "## Phases (ms per call; launches per env step)", "",
                  "| model | mode | status | world-model update | imagination + agent | acting | env steps/s | "
                  "peak GiB | kernel launches | graph launches | GPU kernel ms | aten ops | first calls s |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in parts["phases"].get("runs", []):
            if r.get("status") != "ok":
                lines.append(f"| {r['model']} | {r['mode']} | {r['status']}: {(r.get('error') or '').splitlines()[-1][:80]} |"
                             + " |" * 10)
                continue
            ms, per = r["ms"], r["per_env_step"]
            peak = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
            lines.append(f"| {r['model']} | {r['mode']}{' bf16' if r['bf16'] else ''} | ok | "
                         f"{ms['world_model_update']:.1f} | {ms['imagination_and_agent_update']:.1f} | {ms['acting']:.1f} | "
                         f"{r['env_steps_per_s']:.1f} | {peak} | {per['kernel_launches']:,.0f} | "
                         f"{per['graph_launches']:,.0f} | {per['gpu_kernel_ms']:.1f} | {per['aten_ops']:,.0f} | "
                         f"{r['first_calls_s']:.0f} |")
    loop = parts.get("loop")
    if loop and loop.get("status") == "ok":
        split = ", ".join(f"{phase} {ms:.1f} ms" for phase, ms in loop["ms_per_env_step"].items())
        per = loop["per_env_step"]
        lines += ["", "## The real loop (train.py)", "",
                  f"{loop['config']} on {loop['env']}, {loop['device']}{' bf16' if loop['bf16'] else ''}, updates "
                  f"{loop['mode']}: warm-up {loop['warm_up_steps']} steps in {loop['warm_up_s']:.0f} s, then "
                  f"{loop['timed_steps']} env steps in {loop['timed_s']:.0f} s = **{loop['env_steps_per_s']:.2f} env "
                  f"steps/s**; per env step: {split}; {per['kernel_launches']:,.0f} kernel launches, "
                  f"{per['graph_launches']:,.0f} graph launches, {per['aten_ops']:,.0f} aten ops. "
                  f"A 102k-step run would take **{loop['hours_for_102k_steps']:.1f} h**."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="report folder (report.md, report.json, parts.log)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny preset, cheap compile backend")
    parser.add_argument("--parts", default="environment,cuda_tests,phases,loop")
    parser.add_argument("--total-seconds", type=float, default=None, help="wall-clock limit of the whole check "
                        "(default 465; dry run 240, for a loaded CPU)")
    parser.add_argument("--test-seconds", type=float, default=None, help="budget of pytest -m cuda (120; dry 60)")
    parser.add_argument("--phase-seconds", type=float, default=None, help="budget of all phase runs (110; dry 60)")
    parser.add_argument("--loop-seconds", type=float, default=None, help="timed loop after its warm-up (180; dry 3)")
    parser.add_argument("--loop-config", default="GITSTORM")
    parser.add_argument("--loop-compile", default=None, help="BasicSettings.Compile of the loop (default: the config's)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--stop-by", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    dry = args.dry_run
    for key, full, quick in (("total_seconds", 465, 240), ("test_seconds", 120, 60), ("phase_seconds", 110, 60),
                             ("loop_seconds", 180, 3)):
        if getattr(args, key) is None:
            setattr(args, key, quick if dry else full)

    if args.worker:
        args.result.write_text(json.dumps(WORKERS[args.worker](args), default=str))
        return 0
    if args.out is None:
        parser.error("--out DIR is required")
    missing = missing_packages()
    if missing:
        print("gpu_check: missing Python packages:\n  " + "\n  ".join(missing) + "\nInstall them from the wheel kit "
              "(fill .whl/ on a machine with a package registry: bash ../shared/device/wheels.sh; then, here, "
              f"in the repository root):\n  {WHEEL_KIT}", file=sys.stderr)
        return 2
    import torch
    if not dry and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible to torch (torch.cuda.is_available() is False); "
              "--dry-run checks the command on CPU", file=sys.stderr)
        return 2
    check = Check(args)
    check.run()
    print(f"report: {args.out / 'report.md'} ({time.time() - (check.deadline - args.total_seconds):.0f} s)")
    print((args.out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
