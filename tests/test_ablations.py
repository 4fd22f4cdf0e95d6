"""Appendix E ablations (issue 13): the unmixed and iVideoGPT sequence inputs (KV cache = full
forward), the VQ-VAE posterior (exactly one-hot, straight-through gradient, its losses), every
new key trained end to end with the tiny preset, the launcher configs and a two-job multirun
through hydra/launcher=local (submitit), and the ablation plot tool on synthetic CSVs."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from config import ConfigError  # noqa: E402
from families import compose_config  # noqa: E402
from sub_models.functions_losses import categorical_kl  # noqa: E402
from sub_models.latents import VectorQuantizer  # noqa: E402
from sub_models.state_mixer import MULTI_TOKEN_MIXERS  # noqa: E402
from sub_models.transformer_model import StochasticTransformer  # noqa: E402
from sub_models.world_models import WorldModel  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["+preset=cpu", "JointTrainAgent.BufferWarmUp=32", "JointTrainAgent.BatchSize=2",
        "JointTrainAgent.BatchLength=8", "JointTrainAgent.ImagineBatchSize=8",
        "JointTrainAgent.ImagineContextLength=4", "JointTrainAgent.ImagineBatchLength=4",
        "JointTrainAgent.LogEverySteps=10", "BasicSettings.env_name=gym/tests.pixel_games:PixelSide-v0",
        "JointTrainAgent.SampleMaxSteps=40"]


def random_one_hot(*shape, num_classes, generator=None):
    return F.one_hot(torch.randint(0, num_classes, shape, generator=generator), num_classes).float()


# --------------------------------------------------------------------------- unmixed / iVideoGPT inputs


def make_transformer(mixer, max_length=16, seed=0):
    torch.manual_seed(seed)
    model = StochasticTransformer(num_variables=4, num_classes=3, action_dim=5, dim=32, num_layers=2, num_heads=4,
                                  feedforward_dim=64, max_length=max_length, dropout=0.1, mixer=mixer)
    if mixer == "ivideogpt":   # zero-initialised as in iVideoGPT: give the action an effect to test
        torch.nn.init.normal_(model.mixer.action_linear.weight)
    return model.eval()


def cached_forward(model, z, a, chunks):
    cache = model.start_cache(z.shape[0], z.device)
    out, start = [], 0
    for size in chunks:
        out.append(model(z[:, start:start + size], a[:, start:start + size], cache))
        start += size
    assert cache[0].length == start * model.tokens_per_step   # the cache counts tokens
    return torch.cat(out, 1)


@pytest.mark.parametrize("mixer", sorted(MULTI_TOKEN_MIXERS))
@pytest.mark.parametrize("chunks", [[5] + [1] * 7, [1] * 12, [4, 3, 3, 2], [12]])
def test_multi_token_inputs_kv_cache_matches_full_forward(mixer, chunks):
    model = make_transformer(mixer)
    assert model.tokens_per_step == {"unmixed": 2, "ivideogpt": 4 + 1}[mixer]
    g = torch.Generator().manual_seed(3)
    z, a = random_one_hot(3, 12, 4, num_classes=3, generator=g), random_one_hot(3, 12, num_classes=5, generator=g)
    with torch.no_grad():
        full = model(z, a)
        assert full.shape == (3, 12, 32)
        assert torch.allclose(cached_forward(model, z, a, chunks), full, atol=1e-5)


@pytest.mark.parametrize("mixer", sorted(MULTI_TOKEN_MIXERS))
def test_multi_token_inputs_are_causal_and_see_state_and_action(mixer):
    model = make_transformer(mixer)
    g = torch.Generator().manual_seed(4)
    z, a = random_one_hot(2, 10, 4, num_classes=3, generator=g), random_one_hot(2, 10, num_classes=5, generator=g)
    z2, a2 = z.clone(), a.clone()
    z2[:, 6] = z[:, 6].roll(1, dims=-1)
    a2[:, 6] = a[:, 6].roll(1, dims=-1)
    with torch.no_grad():
        h = model(z, a)
        for zz, aa in ((z2, a), (z, a2)):   # h_6 (read at step 6's last token) sees z_6 and a_6
            other = model(zz, aa)
            assert torch.allclose(h[:, :6], other[:, :6], atol=1e-6)
            assert (h[:, 6:] - other[:, 6:]).abs().amax(-1).min() > 1e-4
    with pytest.raises(ValueError, match="TransformerMaxLength"):
        model(random_one_hot(1, 17, 4, num_classes=3), random_one_hot(1, 17, num_classes=5))


def test_ivideogpt_action_projection_starts_at_zero():
    model = StochasticTransformer(4, 3, 5, 32, 1, 4, 64, 16, 0.0, "ivideogpt").eval()
    assert model.mixer.action_linear.weight.abs().sum() == 0 and model.mixer.action_linear.bias.abs().sum() == 0
    z = random_one_hot(2, 6, 4, num_classes=3)
    with torch.no_grad():   # as in iVideoGPT, an untrained model ignores the action
        assert torch.equal(model(z, random_one_hot(2, 6, num_classes=5)), model(z, random_one_hot(2, 6, num_classes=5)))


def test_new_choices_are_validated():
    for key, value in (("Models.WorldModel.StateMixer", "mixed"), ("Models.WorldModel.Latent", "gumbel")):
        with pytest.raises(ConfigError, match=key):
            compose_config("STORM", [f"{key}={value}"])


# --------------------------------------------------------------------------- VQ-VAE latents


def test_vq_quantiser_is_one_hot_nearest_code_with_straight_through_gradient():
    torch.manual_seed(5)
    vq = VectorQuantizer(num_variables=6, num_classes=8, unimix=0.01)
    features = torch.randn(10, 6, 8, requires_grad=True)
    log_probs, sample = vq(features)
    index = torch.cdist(features.detach().reshape(-1, 8), vq.codebook.detach()).argmin(-1).reshape(10, 6)
    assert torch.equal(sample.detach(), F.one_hot(index, 8).float())        # exactly one-hot, nearest code
    # straight-through: the gradient reaches the encoder features, and not the codebook
    grad, codebook_grad = torch.autograd.grad((sample * torch.randn(8)).sum(), [features, vq.codebook],
                                              allow_unused=True, retain_graph=True)
    assert grad.abs().sum() > 0 and codebook_grad is None
    # the posterior is a point mass: the dynamics KL against a prior is -log p(chosen code)
    prior = torch.log_softmax(torch.randn(10, 6, 8), -1)
    expected = -(prior * sample.detach()).sum(-1)
    assert torch.allclose(categorical_kl(log_probs, prior), expected, atol=1e-5)
    # codebook loss trains the codes only, commitment loss the encoder only
    terms = vq.terms(features, sample)
    quantised = vq.codebook.detach()[index]
    codebook_loss = (features.detach() - quantised).pow(2).sum((-2, -1)).mean()
    assert torch.allclose(terms["world_model/vq_codebook_loss"], codebook_loss)
    assert torch.allclose(terms["loss"], codebook_loss * (1 + VectorQuantizer.BETA))   # commitment = codebook in value
    features.grad = None
    terms["world_model/vq_codebook_loss"].backward(retain_graph=True)
    assert features.grad is None and vq.codebook.grad.abs().sum() > 0
    vq.codebook.grad = None
    terms["world_model/vq_commitment_loss"].backward()
    assert vq.codebook.grad is None and features.grad.abs().sum() > 0
    assert 1.0 <= terms["world_model/code_perplexity"] <= 8.0


def test_code_perplexity_counts_codes_in_use():
    vq = VectorQuantizer(2, 4, 0.0)
    with torch.no_grad():
        vq.codebook.copy_(torch.eye(4) * 10)
    one_code = torch.zeros(3, 2, 4)
    one_code[..., 1] = 10   # every vector sits on code 1
    assert vq.terms(one_code, vq(one_code)[1])["world_model/code_perplexity"] == pytest.approx(1.0)
    spread = (torch.eye(4) * 10).reshape(2, 2, 4)   # each code used once
    assert vq.terms(spread, vq(spread)[1])["world_model/code_perplexity"] == pytest.approx(4.0)


@pytest.mark.parametrize("prior", ["mlp", "maskgit"])
def test_vq_world_model_loss_and_gradients(prior):
    cfg = compose_config("STORM", ["+preset=cpu", f"Models.WorldModel.Prior={prior}", "Models.WorldModel.Latent=vqvae"])
    torch.manual_seed(6)
    wm = WorldModel(cfg.Models, 18, True)
    obs = torch.randint(0, 256, (2, 5, 64, 64, 3), dtype=torch.uint8)
    logits, z = wm.encode(obs)
    assert torch.equal(z.detach(), F.one_hot(z.detach().argmax(-1), 8).float())
    assert torch.equal(logits.exp().argmax(-1), z.detach().argmax(-1))
    (wm.decode(z) - obs.float() / 255).pow(2).sum().backward()   # the only path to the encoder: straight-through
    assert wm.encoder.convs[0].weight.grad.abs().sum() > 0
    wm.zero_grad(set_to_none=True)
    total, metrics = wm.loss(obs, torch.randint(0, 18, (2, 5)), torch.zeros(2, 5), torch.zeros(2, 5))
    assert metrics["world_model/representation_loss"] == 0
    for key in ("vq_codebook_loss", "vq_commitment_loss", "code_perplexity"):
        assert torch.isfinite(metrics[f"world_model/{key}"]), key
    total.backward()
    assert wm.encoder.latent.codebook.grad.abs().sum() > 0 and wm.encoder.to_logits.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- end to end


def event_tags(folder: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return set(accumulator.Tags()["scalars"])


@pytest.mark.parametrize("key", ["Models.WorldModel.StateMixer=unmixed", "Models.WorldModel.StateMixer=ivideogpt",
                                 "Models.WorldModel.Latent=vqvae"])
@pytest.mark.parametrize("prior", ["mlp", "maskgit"])
def test_ablation_key_trains_end_to_end(tmp_path, key, prior):
    from families.storm.trainer import Trainer

    cfg = compose_config("STORM", TINY + [key, f"Models.WorldModel.Prior={prior}", "BasicSettings.n=ablation",
                                          "JointTrainAgent.VideoEverySteps=40",   # imagined rollout + decode
                                          f"BasicSettings.RunsDir={tmp_path}/runs",
                                          f"BasicSettings.CheckpointDir={tmp_path}/saved_models"])
    Trainer(cfg).run()
    assert sorted(p.name for p in (tmp_path / "saved_models" / "ablation").glob("*_40.pt")) == [
        "checkpoint_40.pt", "replay_buffer_40.pt", "weights_40.pt"]
    tags = event_tags(tmp_path / "runs" / "ablation")
    assert {"world_model/total_loss", "agent/policy_loss"} <= tags
    if key.endswith("vqvae"):   # codebook use reaches TensorBoard
        assert {"world_model/code_perplexity", "world_model/vq_commitment_loss"} <= tags
    weights = torch.load(tmp_path / "saved_models" / "ablation" / "weights_40.pt", weights_only=False)
    name, value = key.rsplit("=", 1)
    assert weights["config"]["Models"]["WorldModel"][name.split(".")[-1]] == value


# --------------------------------------------------------------------------- Hydra launchers


def test_launcher_configs_compose():
    from hydra import compose, initialize_config_dir

    from config import CONFIG_DIR
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        slurm = compose("GITSTORM", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                        return_hydra_config=True).hydra.launcher
        local = compose("GITSTORM", ["hydra/launcher=local"], return_hydra_config=True).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and local._target_.endswith("LocalLauncher")
    assert (slurm.gpus_per_node, slurm.tasks_per_node, slurm.partition) == (1, 1, "gpu")
    assert slurm.max_num_timeout > 0 and slurm.timeout_min > 0 and slurm.cpus_per_task > 0


def test_submitit_local_multirun_two_jobs(tmp_path):
    command = [sys.executable, "train.py", "-m", "hydra/launcher=local", *TINY, "BasicSettings.Seed=0,1",
               "JointTrainAgent.VideoEverySteps=0", f"BasicSettings.RunsDir={tmp_path}/runs",
               f"BasicSettings.CheckpointDir={tmp_path}/saved_models", f"hydra.sweep.dir={tmp_path}/multirun"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")   # two jobs on a small CPU
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    logs = "".join(p.read_text() for p in (tmp_path / "multirun" / ".submitit").rglob("*log.*"))
    assert result.returncode == 0, result.stdout + result.stderr + logs
    for seed in (0, 1):
        name = f"PixelSide-v0-STORM-seed_{seed}"
        assert (tmp_path / "saved_models" / name / "checkpoint_40.pt").exists(), logs
        assert (tmp_path / "saved_models" / name / "weights_40.pt").exists()
        events = list((tmp_path / "runs" / name).glob("events.out.tfevents.*"))
        assert events and events[0].stat().st_size > 0
    assert len(list((tmp_path / "multirun" / ".submitit").glob("*/*_result.pkl"))) == 2   # ran by submitit


# --------------------------------------------------------------------------- ablation figures


def write_eval_csv(path: Path, steps, returns):
    pd.DataFrame({"step": steps, "episode_avg_return": returns, "episode_std": 0.0, "episode_min": 0.0,
                  "episode_max": 0.0, "episodes": 20}).to_csv(path, index=False)


def test_ablation_plot_tool_on_synthetic_sweep(tmp_path, capsys):
    from tools.ablations.curves import main

    results = tmp_path / "eval_result"
    results.mkdir()
    steps = [0, 1000, 2000]
    finals = {}
    for task in ("walker_walk", "walker_run"):
        for variant, slope in (("GITSTORM_DMC", 3.0), ("GITSTORM_DMC_unmixed", 1.0), ("GITSTORM_DMC_ivideogpt", 0.0)):
            for seed in range(3):
                if (task, variant, seed) == ("walker_run", "GITSTORM_DMC_unmixed", 2):
                    continue   # the missing seed
                returns = [slope * s / 100 + seed for s in steps]
                write_eval_csv(results / f"{task}-{variant}-seed_{seed}.csv", steps, returns)
                finals.setdefault((task, variant), []).append(returns[-1])
    write_eval_csv(results / "cheetah_run-GITSTORM_DMC-seed_0.csv", steps, [1.0, 2.0, 3.0])   # not in the figure
    out = tmp_path / "out"
    assert main(["--figure", "14", "--results", str(results), "--out", str(out), "--reps", "200",
                 "--games", "walker_walk,walker_run"]) == 0
    err = capsys.readouterr().err
    assert "Walker Run / Unmixed States: missing seed(s) 2" in err
    assert "missing seed(s) 2" in (out / "warnings.txt").read_text() and "missing seed" in (out / "final_scores.md").read_text()
    assert (out / "ablation_curves.png").stat().st_size > 10_000

    final = pd.read_csv(out / "final_scores.csv")
    assert set(final["game"]) == {"Walker Walk", "Walker Run"}   # cheetah_run was not selected
    for (task, variant), values in finals.items():
        row = final[(final["game"] == task.replace("_", " ").title()) & (final["variant"] == variant)].iloc[0]
        assert row["mean"] == pytest.approx(np.mean(values)) and row["n_seeds"] == len(values)
        assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    assert final.set_index(["game", "variant"]).loc[("Walker Run", "GITSTORM_DMC_unmixed"), "seeds"] == "0 1"
    curves = pd.read_csv(out / "curves.csv")
    assert len(curves) == 2 * 3 * len(steps)
    assert list(dict.fromkeys(curves["label"])) == ["GIT-STORM", "GIT-STORM + iVideoGPT action embedder",
                                                     "Unmixed States"]   # the figure's legend order
    # a run directory without any matching CSV is an error, not an empty plot
    assert main(["--results", str(results), "--out", str(out), "--variants", "nothing"]) == 2
