"""Loading and validating the run configuration.

The YAML files in config_files/ hold every number; this module holds only their *shape*
(the schema below: which keys exist and their types) and the checks that sizes fit
together. `load_config` is what train.py and eval.py call; it goes through Hydra, so
command-line overrides (`Models.Agent.Gamma=0.99`, `+preset=cpu`, `--config-name
GITSTORM`) work as usual, and it honours `BasicSettings.config_path`, which the
authors' release ignored.
"""
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

CONFIG_DIR = Path(__file__).resolve().parent / "config_files"


class ConfigError(ValueError):
    """A configuration value is missing, unknown, mistyped or inconsistent."""


@dataclass
class BasicSettingsSchema:
    n: Optional[str] = None
    env_name: str = MISSING
    AtariProtocol: str = MISSING
    model: str = MISSING
    config_path: str = MISSING
    Seed: int = MISSING
    ImageSize: int = MISSING
    Device: str = MISSING
    MixedPrecision: str = MISSING
    Compile: Any = None   # null, true, false or reduce-overhead (_check_compile, update_steps.py)
    Deterministic: bool = MISSING
    Resume: str = MISSING
    RunsDir: str = MISSING
    CheckpointDir: str = MISSING


@dataclass
class JointTrainAgentSchema:
    SampleMaxSteps: int = MISSING
    NumEnvs: int = MISSING
    BufferMaxLength: int = MISSING
    BufferWarmUp: int = MISSING
    BufferOnDevice: bool = MISSING
    BatchSize: int = MISSING
    BatchLength: int = MISSING
    ImagineBatchSize: int = MISSING
    ImagineContextLength: int = MISSING
    ImagineBatchLength: int = MISSING
    TrainDynamicsEverySteps: int = MISSING
    TrainAgentEverySteps: int = MISSING
    RealityContextLength: int = MISSING
    SaveEverySteps: int = MISSING
    KeepCheckpoints: int = MISSING
    LogEverySteps: int = MISSING
    VideoEverySteps: int = MISSING
    MaxNonFiniteUpdates: int = MISSING


@dataclass
class WorldModelSchema:
    Prior: str = MISSING
    InChannels: int = MISSING
    EncoderBaseChannels: int = MISSING
    EncoderStages: int = MISSING
    CategoricalDim: int = MISSING
    ClassDim: int = MISSING
    Latent: str = MISSING
    Unimix: float = MISSING
    StateMixer: str = MISSING
    TransformerMaxLength: int = MISSING
    TransformerHiddenDim: int = MISSING
    TransformerNumLayers: int = MISSING
    TransformerNumHeads: int = MISSING
    TransformerFeedForwardDim: int = MISSING
    TransformerNormEps: float = MISSING
    Dropout: float = MISSING
    HeadHiddenDim: int = MISSING
    RewardBins: int = MISSING
    RewardLow: float = MISSING
    RewardHigh: float = MISSING
    ReconstructionWeight: float = MISSING
    RewardWeight: float = MISSING
    TerminationWeight: float = MISSING
    DynamicsWeight: float = MISSING
    RepresentationWeight: float = MISSING
    FreeBits: float = MISSING
    FreeBitsPerStep: bool = MISSING
    LearningRate: float = MISSING
    PriorLearningRateScale: float = MISSING
    AdamEps: float = MISSING
    MaxGradNorm: float = MISSING


@dataclass
class MaskGitSchema:
    Architecture: str = MISSING
    EmbeddingDim: int = MISSING
    NumLayers: int = MISSING
    NumHeads: int = MISSING
    FeedForwardDim: int = MISSING
    Dropout: float = MISSING
    MaskSchedule: str = MISSING
    MinMaskRatio: float = MISSING
    MaskRounding: str = MISSING
    DraftRounds: int = MISSING
    ReviseRounds: int = MISSING
    ReviseRepetitions: int = MISSING
    Temperature: float = MISSING
    TrainTarget: str = MISSING
    DotProductLogits: bool = MISSING
    Conditioning: str = MISSING
    AllMaskProbability: float = MISSING


@dataclass
class AgentSchema:
    HiddenDim: int = MISSING
    NumLayers: int = MISSING
    Gamma: float = MISSING
    Lambda: float = MISSING
    EntropyCoef: float = MISSING
    ContinuousEntropyCoef: float = MISSING
    CriticBins: int = MISSING
    CriticLow: float = MISSING
    CriticHigh: float = MISSING
    SlowCriticDecay: float = MISSING
    SlowCriticRegularizer: float = MISSING
    ReturnNormDecay: float = MISSING
    ReturnNormLowPercentile: float = MISSING
    ReturnNormHighPercentile: float = MISSING
    LearningRate: float = MISSING
    AdamEps: float = MISSING
    MaxGradNorm: float = MISSING
    StormCompat: bool = MISSING


@dataclass
class ModelsSchema:
    WorldModel: WorldModelSchema = field(default_factory=WorldModelSchema)
    MaskGit: MaskGitSchema = field(default_factory=MaskGitSchema)
    Agent: AgentSchema = field(default_factory=AgentSchema)


@dataclass
class RunConfigSchema:
    BasicSettings: BasicSettingsSchema = field(default_factory=BasicSettingsSchema)
    JointTrainAgent: JointTrainAgentSchema = field(default_factory=JointTrainAgentSchema)
    Models: ModelsSchema = field(default_factory=ModelsSchema)


CHOICES = {
    "Models.WorldModel.Prior": ("mlp", "maskgit"),
    "Models.WorldModel.StateMixer": ("concat", "concat_attn", "cross_attn", "unmixed", "ivideogpt"),
    "Models.WorldModel.Latent": ("categorical", "vqvae"),
    "Models.MaskGit.Architecture": ("standard", "authors"),
    "Models.MaskGit.MaskSchedule": ("cosine", "linear"),
    "Models.MaskGit.MaskRounding": ("floor", "ceil"),
    "Models.MaskGit.TrainTarget": ("current", "next"),
    "Models.MaskGit.Conditioning": ("slice", "full"),
    "BasicSettings.MixedPrecision": ("auto", "bf16", "fp32"),
    "BasicSettings.Resume": ("auto", "fresh"),
    "BasicSettings.AtariProtocol": ("storm", "iris"),
}


def _known_keys(node, prefix=""):
    keys = []
    for key in node.keys():
        path = f"{prefix}{key}"
        keys.append(path)
        value = node._get_node(key)
        if isinstance(value, DictConfig):
            keys += _known_keys(value, path + ".")
    return keys


def validate(cfg: DictConfig) -> DictConfig:
    """Check keys and types against the schema, then that the sizes fit together.

    Returns the config typed by the schema (ints are ints, floats floats) and read-only
    against new keys, so a typo later in code fails instead of silently reading None.
    """
    rem = OmegaConf.select(cfg, "BasicSettings.model", default=None) == "REM"
    if rem:  # REM (sub_models/rem/) has its own schema and size checks
        from sub_models.rem.schema import REMConfigSchema
    schema = OmegaConf.structured(REMConfigSchema if rem else RunConfigSchema)
    try:
        typed = OmegaConf.merge(schema, cfg)
    except ConfigKeyError as error:
        bad = error.full_key or str(error)
        nearest = difflib.get_close_matches(bad, _known_keys(schema), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(nearest)}?" if nearest else ""
        raise ConfigError(f"unknown config key {bad!r}{hint}") from None
    except ValidationError as error:
        raise ConfigError(f"config key {error.full_key!r} has value {error.value!r}, "
                          f"which is not of the expected type ({error.msg.splitlines()[0]})") from None
    missing = sorted(OmegaConf.missing_keys(typed))
    if missing:
        raise ConfigError(f"config keys without a value: {', '.join(missing)}")
    OmegaConf.set_struct(typed, True)
    if rem:
        from sub_models.rem.schema import check_rem
        check_rem(typed, _require)
    else:
        _check_choices(typed)
        _check_sizes(typed)
    _check_compile(typed.BasicSettings)
    _check_atari_protocol(typed.BasicSettings)
    return typed


def _check_choices(cfg):
    for path, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, path)
        if value not in allowed:
            raise ConfigError(f"{path}={value!r}: expected one of {', '.join(allowed)}")


def _check_compile(basic):
    """null: compiled on CUDA, eager on CPU; false: eager; true: torch.compile the hot paths;
    reduce-overhead: compiled and each update captured as one CUDA graph (update_steps.py)."""
    value = basic.Compile
    _require(value is None or isinstance(value, bool) or value == "reduce-overhead", "BasicSettings.Compile",
             value, "expected null, true, false or reduce-overhead")


def _check_atari_protocol(basic):
    """The protocol is an Atari preprocessing choice; DMC and gym/ envs have one protocol."""
    _require(basic.AtariProtocol == "storm" or basic.env_name.startswith("ALE/"), "BasicSettings.AtariProtocol",
             basic.AtariProtocol, f"expected 'storm' for BasicSettings.env_name={basic.env_name!r}: the "
             "iris protocol applies to Atari ('ALE/<Game>-v5') envs only")


def _require(condition, path, value, expected):
    if not condition:
        raise ConfigError(f"{path}={value!r}: {expected}")


def _check_sizes(cfg):
    train, wm, mg, agent = cfg.JointTrainAgent, cfg.Models.WorldModel, cfg.Models.MaskGit, cfg.Models.Agent
    for path in ("JointTrainAgent.SampleMaxSteps", "JointTrainAgent.NumEnvs", "JointTrainAgent.BatchSize",
                 "JointTrainAgent.BatchLength", "JointTrainAgent.ImagineBatchSize",
                 "JointTrainAgent.ImagineContextLength", "JointTrainAgent.ImagineBatchLength",
                 "JointTrainAgent.RealityContextLength", "JointTrainAgent.SaveEverySteps",
                 "JointTrainAgent.KeepCheckpoints", "JointTrainAgent.LogEverySteps",
                 "JointTrainAgent.TrainDynamicsEverySteps", "JointTrainAgent.TrainAgentEverySteps",
                 "Models.WorldModel.CategoricalDim", "Models.WorldModel.ClassDim",
                 "Models.WorldModel.TransformerHiddenDim", "Models.WorldModel.TransformerNumLayers",
                 "Models.WorldModel.TransformerNumHeads", "Models.MaskGit.NumLayers",
                 "Models.MaskGit.DraftRounds", "Models.MaskGit.ReviseRounds", "Models.Agent.HiddenDim"):
        value = OmegaConf.select(cfg, path)
        _require(value >= 1, path, value, "expected a positive integer")
    _require(cfg.BasicSettings.ImageSize == 2 ** wm.EncoderStages * 4, "BasicSettings.ImageSize",
             cfg.BasicSettings.ImageSize,
             f"expected 4 * 2**EncoderStages = {2 ** wm.EncoderStages * 4} (the encoder ends at 4x4)")
    max_len = wm.TransformerMaxLength
    for path, length in (("JointTrainAgent.BatchLength", train.BatchLength),
                         ("JointTrainAgent.RealityContextLength", train.RealityContextLength),
                         ("JointTrainAgent.ImagineContextLength+ImagineBatchLength",
                          train.ImagineContextLength + train.ImagineBatchLength)):
        _require(length <= max_len, path, length,
                 f"expected at most Models.WorldModel.TransformerMaxLength={max_len}")
    _require(wm.TransformerHiddenDim % wm.TransformerNumHeads == 0, "Models.WorldModel.TransformerHiddenDim",
             wm.TransformerHiddenDim, f"expected a multiple of TransformerNumHeads={wm.TransformerNumHeads}")
    if wm.Prior == "maskgit":
        _require(wm.TransformerHiddenDim % wm.CategoricalDim == 0, "Models.WorldModel.TransformerHiddenDim",
                 wm.TransformerHiddenDim,
                 f"expected a multiple of CategoricalDim={wm.CategoricalDim}: the MaskGIT prior gives each "
                 "of the CategoricalDim tokens an equal slice of h_t")
        _require(mg.EmbeddingDim % mg.NumHeads == 0, "Models.MaskGit.EmbeddingDim", mg.EmbeddingDim,
                 f"expected a multiple of Models.MaskGit.NumHeads={mg.NumHeads}")
        _require(mg.DraftRounds <= wm.CategoricalDim, "Models.MaskGit.DraftRounds", mg.DraftRounds,
                 f"expected at most CategoricalDim={wm.CategoricalDim} (one token per draft pass at least)")
        _require(mg.ReviseRounds <= wm.CategoricalDim, "Models.MaskGit.ReviseRounds", mg.ReviseRounds,
                 f"expected at most CategoricalDim={wm.CategoricalDim}")
    _require(train.BufferWarmUp >= train.BatchLength, "JointTrainAgent.BufferWarmUp", train.BufferWarmUp,
             f"expected at least BatchLength={train.BatchLength} so the first batch can be sampled")
    _require(train.BufferMaxLength >= train.BufferWarmUp, "JointTrainAgent.BufferMaxLength",
             train.BufferMaxLength, f"expected at least BufferWarmUp={train.BufferWarmUp}")
    _require(0.0 <= agent.ReturnNormLowPercentile < agent.ReturnNormHighPercentile <= 100.0,
             "Models.Agent.ReturnNormLowPercentile", agent.ReturnNormLowPercentile,
             f"expected 0 <= low < ReturnNormHighPercentile={agent.ReturnNormHighPercentile} <= 100")


def config_name_from_path(config_path: str) -> str:
    """'config_files/GITSTORM.yaml' -> 'GITSTORM' (the file must live in config_files/)."""
    path = Path(config_path)
    if path.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"BasicSettings.config_path={config_path!r}: expected a .yaml file in {CONFIG_DIR}")
    resolved = path if path.is_absolute() else Path.cwd() / path
    if not resolved.exists() and not (CONFIG_DIR / path.name).exists():
        available = sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"BasicSettings.config_path={config_path!r}: no such file; "
                          f"available in config_files/: {', '.join(available)}")
    if resolved.exists() and resolved.resolve().parent != CONFIG_DIR:
        raise ConfigError(f"BasicSettings.config_path={config_path!r}: model configs must live in {CONFIG_DIR} "
                          "(copy it there, or pass --config-dir to add its folder and --config-name to pick it)")
    return path.stem


def compose_config(config_name: str, overrides: list[str]) -> DictConfig:
    """Compose `config_name` with Hydra overrides outside of a @hydra.main app (tests, eval.py)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return _select_model_config(compose(config_name=config_name, overrides=overrides), config_name, overrides)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return _select_model_config(compose(config_name=config_name, overrides=overrides), config_name, overrides)


def _select_model_config(cfg, config_name, overrides):
    wanted = config_name_from_path(cfg.BasicSettings.config_path)
    if wanted != config_name:
        from hydra import compose
        cfg = compose(config_name=wanted, overrides=overrides)
    return validate(cfg)


def load_config(cfg: DictConfig) -> DictConfig:
    """Inside a @hydra.main app: re-compose if BasicSettings.config_path names another model
    config than the one Hydra loaded (same overrides), then validate."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    return _select_model_config(cfg, hydra_cfg.job.config_name, list(hydra_cfg.overrides.task))


def config_differences(saved: dict, cfg: DictConfig,
                       keys: tuple[str, ...] = ("BasicSettings.env_name", "BasicSettings.AtariProtocol")) -> list[str]:
    """How `cfg` differs from a checkpoint's stored config, over everything that shapes the
    model (the whole Models section) and the extra dotted `keys`: one line per key. A key
    the checkpoint lacks is no difference (see `_diff`)."""
    current = OmegaConf.to_container(cfg, resolve=True)
    differences = _diff(saved.get("Models", "<missing>"), current["Models"], "Models")
    for key in keys:
        section, name = key.split(".", 1)
        if name in saved.get(section, {}):
            differences += _diff(saved[section][name], current[section][name], key)
    return differences


def _diff(saved, current, prefix: str) -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        # a key the checkpoint lacks was added to the configs after it was written: the
        # checkpoint ran with the behaviour that key's default keeps, so it is no difference
        for key in sorted(saved):
            out += _diff(saved[key], current.get(key, "<missing>"), f"{prefix}.{key}")
        return out
    return [] if saved == current else [f"{prefix}: checkpoint {saved!r}, given {current!r}"]


def plain_section(section):
    """A config section as a plain namespace of Python values: what models keep, so that the
    compiled hot paths (torch.compile) read ints and floats instead of tracing OmegaConf."""
    if isinstance(section, DictConfig):
        return SimpleNamespace(**OmegaConf.to_container(section, resolve=True))
    return section


def stored_config(saved: dict, current: DictConfig) -> DictConfig:
    """The validated config a checkpoint was written with (its `config` entry); keys added to
    the schema after it was written take their values from `current`."""
    merged = OmegaConf.merge(OmegaConf.to_container(current, resolve=True), saved)
    return validate(merged)


def default_run_name(cfg: DictConfig) -> str:
    """Boxing-STORM-seed_0 for ALE/Boxing-v5, cartpole_balance-GITSTORM_DMC-seed_0 for dmc/cartpole_balance."""
    env = cfg.BasicSettings.env_name
    short = env.split("/", 1)[-1].split(":")[-1]     # gym/<module>:<EnvId> -> <EnvId>
    if env.startswith("ALE/"):
        short = short.rsplit("-v", 1)[0]
    return f"{short}-{cfg.BasicSettings.model}-seed_{cfg.BasicSettings.Seed}"

