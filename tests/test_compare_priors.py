"""tools/benchmarks/compare_priors.py: curves along one training run, their JSON and plot."""
import json
import sys
from argparse import Namespace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.benchmarks import compare_priors  # noqa: E402

TINY = ["--games", "Pong", "--steps", "160", "--batch-size", "2", "--batch-length", "8", "--seeds", "0",
        "--variants", "GIT-STORM floor", "--updates", "3"]


def test_eval_at_evaluates_along_the_run_without_changing_it(tmp_path, capsys):
    plain, along, png = tmp_path / "plain.json", tmp_path / "along.json", tmp_path / "curves.png"
    compare_priors.main(TINY + ["--json", str(plain)])
    compare_priors.main(TINY + ["--eval-at", "1,2", "--json", str(along), "--plot", str(png)])
    [end_only] = json.loads(plain.read_text())["runs"]
    [curve_run] = json.loads(along.read_text())["runs"]
    assert [point["updates"] for point in end_only["curve"]] == [3]
    assert [point["updates"] for point in curve_run["curve"]] == [1, 2, 3]
    # evaluating after updates 1 and 2 draws random numbers; it must not shift the training's stream
    assert curve_run["curve"][-1]["Pong"] == end_only["curve"][0]["Pong"]
    assert png.stat().st_size > 1000
    capsys.readouterr()
    compare_priors.main(["--from-json", str(along)])
    table = capsys.readouterr().out
    assert "Pong, held-out sampling KL (all tokens), along training" in table
    assert f"| 3 | {curve_run['curve'][-1]['Pong']['sampling_kl']:.3f} ± 0.000 (n=1) |" in table


def test_prior_learning_rate_scale_gives_the_prior_its_own_learning_rate():
    args = Namespace(preset="cpu", override=[], lr=None, device="cpu", prior_lr_scale=3.0)
    cfg, wm = compare_priors.build("GITSTORM", (), args, seed=0)
    rest, prior = wm.optimizer.param_groups
    assert rest["lr"] == 1.0e-4 and prior["lr"] == pytest.approx(3.0e-4)  # the config's 1e-4, times 3 for the prior
    assert {id(p) for p in prior["params"]} == {id(p) for p in wm.prior.parameters()}
    assert len(rest["params"]) + len(prior["params"]) == len(list(wm.parameters()))
    with pytest.raises(ValueError, match="PriorLearningRateScale=0.0: expected > 0"):
        compare_priors.build("GITSTORM", (), Namespace(**{**vars(args), "prior_lr_scale": 0.0}), seed=0)
