"""Config loading and validation: the paper's defaults, model selection, and clear errors."""
import pytest
from omegaconf import OmegaConf

from config import ConfigError, config_differences, default_run_name
from families import compose_config, stored_config


def test_paper_defaults():
    cfg = compose_config("STORM", [])
    wm, agent, train = cfg.Models.WorldModel, cfg.Models.Agent, cfg.JointTrainAgent
    assert wm.Prior == "mlp"
    assert (wm.TransformerHiddenDim, wm.TransformerNumLayers, wm.TransformerNumHeads, wm.Dropout) == (512, 2, 8, 0.1)
    assert (wm.CategoricalDim, wm.ClassDim, wm.Unimix) == (32, 32, 0.01)
    assert (wm.DynamicsWeight, wm.RepresentationWeight, wm.FreeBits) == (0.5, 0.1, 1.0)
    assert (wm.LearningRate, wm.MaxGradNorm) == (1e-4, 1000.0)
    assert (agent.Gamma, agent.Lambda, agent.EntropyCoef, agent.SlowCriticDecay) == (0.985, 0.95, 3e-4, 0.98)
    assert (agent.LearningRate, agent.AdamEps, agent.MaxGradNorm) == (3e-5, 1e-5, 100.0)
    assert (train.BatchSize, train.BatchLength, train.ImagineBatchSize) == (16, 64, 1024)
    assert (train.ImagineContextLength, train.ImagineBatchLength, train.BufferWarmUp) == (8, 16, 1024)
    assert (train.SampleMaxSteps, train.BufferMaxLength, train.SaveEverySteps) == (102000, 100000, 2500)
    mg = cfg.Models.MaskGit
    assert (mg.EmbeddingDim, mg.NumLayers, mg.NumHeads, mg.Dropout) == (128, 4, 8, 0.0)
    assert (mg.DraftRounds, mg.ReviseRounds, mg.ReviseRepetitions, mg.TrainTarget) == (1, 1, 1, "current")


@pytest.mark.parametrize("overrides", [["BasicSettings.config_path=config_files/GITSTORM.yaml"], []])
def test_config_path_and_config_name_select_gitstorm(overrides):
    name = "STORM" if overrides else "GITSTORM"
    cfg = compose_config(name, overrides)
    assert cfg.Models.WorldModel.Prior == "maskgit"
    assert cfg.JointTrainAgent.SaveEverySteps == 5000
    assert cfg.BasicSettings.config_path == "config_files/GITSTORM.yaml"


def test_cpu_preset_wins_over_model_file_and_cli_wins_over_preset():
    cfg = compose_config("GITSTORM", ["+preset=cpu", "JointTrainAgent.BatchSize=3"])
    assert cfg.Models.WorldModel.TransformerHiddenDim == 64
    assert cfg.JointTrainAgent.SaveEverySteps == 1000     # preset applied after GITSTORM.yaml
    assert cfg.JointTrainAgent.BatchSize == 3


def test_dmc_configs():
    cfg = compose_config("GITSTORM_DMC", [])
    assert cfg.BasicSettings.env_name.startswith("dmc/")
    assert (cfg.JointTrainAgent.SampleMaxSteps, cfg.JointTrainAgent.NumEnvs) == (500000, 16)
    assert cfg.Models.WorldModel.Prior == "maskgit"


def test_default_run_name():
    cfg = compose_config("GITSTORM", ["BasicSettings.env_name=ALE/MsPacman-v5", "BasicSettings.Seed=2"])
    assert default_run_name(cfg) == "MsPacman-GITSTORM-seed_2"


@pytest.mark.parametrize("overrides, message", [
    (["+Models.WorldModel.TransformerHiddenDm=3"], "Models.WorldModel.TransformerHiddenDm"),
    (["Models.WorldModel.TransformerHiddenDim=abc"], "Models.WorldModel.TransformerHiddenDim"),
    (["Models.WorldModel.Prior=gru"], "Models.WorldModel.Prior='gru': expected one of mlp, maskgit"),
    (["JointTrainAgent.BatchLength=100"], "JointTrainAgent.BatchLength=100: expected at most Models.WorldModel.TransformerMaxLength=64"),
    (["Models.WorldModel.TransformerHiddenDim=520", "Models.WorldModel.Prior=maskgit"], "multiple of CategoricalDim=32"),
    (["JointTrainAgent.BatchSize=0"], "JointTrainAgent.BatchSize=0"),
    (["BasicSettings.config_path=config_files/NOPE.yaml"], "available in config_files/"),
    (["Models.MaskGit.TrainTarget=previous"], "Models.MaskGit.TrainTarget='previous'"),
    (["Models.MaskGit.Conditioning=all"], "Models.MaskGit.Conditioning='all': expected one of slice, full"),
    (["Models.MaskGit.Architecture=paper"], "Models.MaskGit.Architecture='paper': expected one of standard, authors"),
    (["BasicSettings.AtariProtocol=sticky"], "BasicSettings.AtariProtocol='sticky': expected one of storm, iris"),
    (["BasicSettings.env_name=dmc/walker_walk", "BasicSettings.AtariProtocol=iris"],
     "BasicSettings.AtariProtocol='iris': expected 'storm' for BasicSettings.env_name='dmc/walker_walk'"),
])
def test_validation_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=None) as error:
        compose_config("STORM", overrides)
    assert message in str(error.value)


def test_typo_suggests_the_nearest_key():
    with pytest.raises(ConfigError) as error:
        compose_config("STORM", ["+Models.WorldModel.TransformerHiddenDm=3"])
    assert "did you mean Models.WorldModel.TransformerHiddenDim" in str(error.value)


def test_atari_protocol_defaults_and_rem_checks():
    assert compose_config("STORM", []).BasicSettings.AtariProtocol == "storm"
    assert compose_config("GITSTORM_DMC", []).BasicSettings.AtariProtocol == "storm"
    assert compose_config("REM", []).BasicSettings.AtariProtocol == "iris"
    # REM's schema has its own checks; the protocol is checked for it too.
    with pytest.raises(ConfigError, match="BasicSettings.AtariProtocol='iris': expected 'storm'"):
        compose_config("REM", ["BasicSettings.env_name=dmc/walker_walk"])
    with pytest.raises(ConfigError, match="BasicSettings.AtariProtocol='sticky': expected one of storm, iris"):
        compose_config("REM", ["BasicSettings.AtariProtocol=sticky"])


def test_checkpoint_written_before_atari_protocol_still_loads():
    given = compose_config("STORM", [])
    saved = OmegaConf.to_container(given, resolve=True)
    del saved["BasicSettings"]["AtariProtocol"]
    # Such a checkpoint ran with storm, the only protocol then and the STORM configs' value.
    assert stored_config(saved, given).BasicSettings.AtariProtocol == "storm"
    assert config_differences(saved, given) == []
    # A checkpoint that names its protocol must be resumed with the same one.
    saved["BasicSettings"]["AtariProtocol"] = "iris"
    assert config_differences(saved, given) == ["BasicSettings.AtariProtocol: checkpoint 'iris', given 'storm'"]
