"""tools/benchmarks/gpu_check.py, the device check, on CPU: its dry run exercises every part
(so the command cannot rot before a GPU is at hand), a failing part is recorded while the others
run, and missing packages are named with the command that installs them."""
import json
import os
import subprocess
import sys
from pathlib import Path


from tools.benchmarks import gpu_check

REPO = Path(__file__).resolve().parents[1]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def check(*args):
    return subprocess.run([sys.executable, "tools/benchmarks/gpu_check.py", "--dry-run", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=400, env=ONE_THREAD)


def test_dry_run_reports_every_part(tmp_path):
    result = check("--out", tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    parts = report["parts"]
    assert list(parts) == ["environment", "cuda_tests", "phases", "loop"]
    assert all(part["status"] == "ok" for part in parts.values()), {k: v.get("error") for k, v in parts.items()}
    assert parts["environment"]["device"] == "cpu" and parts["environment"]["torch"]
    tests = parts["cuda_tests"]["tests"]
    assert len(tests) >= 7 and {t["outcome"] for t in tests} == {"skipped"}   # no GPU here
    runs = {(r["model"], r["mode"]): r for r in parts["phases"]["runs"]}
    assert set(runs) == set(gpu_check.DRY_PHASE_RUNS)
    for run in runs.values():
        assert all(ms > 0 for ms in run["ms"].values()) and run["per_env_step"]["aten_ops"] > 1000
    loop = parts["loop"]
    assert loop["timed_steps"] > 0 and loop["env_steps_per_s"] > 0 and loop["hours_for_102k_steps"] > 0
    assert set(loop["ms_per_env_step"]) == {"acting", "env", "world_model_update", "imagination_and_agent_update"}
    text = (tmp_path / "report.md").read_text()
    for heading in ("## Environment", "## CUDA-only tests", "## Phases", "## The real loop"):
        assert heading in text


def test_a_failing_part_is_recorded_and_the_next_part_runs(tmp_path):
    result = check("--out", tmp_path, "--parts", "loop,environment", "--loop-config", "NOSUCH")
    assert result.returncode == 0
    parts = json.loads((tmp_path / "report.json").read_text())["parts"]
    assert parts["loop"]["status"] == "failed" and "NOSUCH" in parts["loop"]["error"]
    assert parts["environment"]["status"] == "ok"
    assert "| loop | failed |" in (tmp_path / "report.md").read_text()


def test_missing_packages_are_named_with_the_wheel_kit_command(monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "REQUIRED", {"json": "json", "no_such_module_xyz": "no-such-package"})
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--out", "unused"])
    assert gpu_check.main() == 2
    err = capsys.readouterr().err
    assert "missing Python packages:\n  no-such-package (ModuleNotFoundError" in err
    assert "bash ../shared/device/wheels.sh" in err and gpu_check.WHEEL_KIT in err and "json" not in err.split("\n")[1]
