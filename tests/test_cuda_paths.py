"""What a CUDA run meets that a CPU run does not: the suite pinned to the CPU, precision chosen
for the run's own GPU, and (marked `cuda`, run with `pytest -m cuda` on a GPU machine) the paths
only a GPU can show: no host syncs in the hot loop, TF32 where it is allowed, the phase timer."""
import os
import subprocess
import sys

import pytest
import torch

from utils import describe_precision, select_device, use_bf16


def test_tests_run_cpu_only_unless_marked_cuda():
    """conftest.cpu_only: on a GPU machine too, `Device=auto` is the CPU in the tests and in the
    entry points they start, so the suite gives the verdicts it gives on a CPU machine."""
    assert select_device("auto") == torch.device("cpu")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    child = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True, timeout=120)
    assert child.stdout.strip() == "False", child.stderr


def test_auto_precision_is_fp32_on_the_selected_gpu_without_native_bf16(monkeypatch):
    """A machine whose cuda:0 is an A100 (8.0) and cuda:1 a V100 (7.0): a run on cuda:1 computes
    in fp32 under `auto`, is refused bf16, and says why; the capability asked is cuda:1's."""
    capabilities = {0: (8, 0), 1: (7, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capabilities[torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: ["A100", "Tesla V100"][torch.device(device).index])
    a100, v100 = torch.device("cuda:0"), torch.device("cuda:1")
    assert use_bf16("auto", a100) and use_bf16("bf16", a100)
    assert not use_bf16("auto", v100) and not use_bf16("fp32", a100)
    with pytest.raises(ValueError, match=r"native bf16 .*device is cuda:1 \(Tesla V100, compute capability 7\.0\)"):
        use_bf16("bf16", v100)
    assert describe_precision("auto", v100, False) == "fp32 (MixedPrecision=auto and this GPU has no native bf16)"
    assert describe_precision("auto", a100, True) == "bf16 autocast"
