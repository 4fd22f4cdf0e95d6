"""The shape of STORM's and GIT-STORM's configs (config_files/STORM.yaml and the files built on
it) and the checks that their sizes fit together. `families.validate` types a config with
`STORMConfigSchema` and then calls `check_config`; unknown keys, wrong types and missing values
are reported before that (config.apply_schema).
"""
from dataclasses import dataclass, field

from omegaconf import MISSING, OmegaConf

from config import BasicSettingsSchema, check_choices, require


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
class STORMConfigSchema:
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
}


def check_config(cfg) -> None:
    """The choices and size checks of a typed STORM / GIT-STORM config; raises config.ConfigError."""
    check_choices(cfg, CHOICES)
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
        require(value >= 1, path, value, "expected a positive integer")
    require(cfg.BasicSettings.ImageSize == 2 ** wm.EncoderStages * 4, "BasicSettings.ImageSize",
            cfg.BasicSettings.ImageSize,
            f"expected 4 * 2**EncoderStages = {2 ** wm.EncoderStages * 4} (the encoder ends at 4x4)")
    max_len = wm.TransformerMaxLength
    for path, length in (("JointTrainAgent.BatchLength", train.BatchLength),
                         ("JointTrainAgent.RealityContextLength", train.RealityContextLength),
                         ("JointTrainAgent.ImagineContextLength+ImagineBatchLength",
                          train.ImagineContextLength + train.ImagineBatchLength)):
        require(length <= max_len, path, length,
                f"expected at most Models.WorldModel.TransformerMaxLength={max_len}")
    require(wm.TransformerHiddenDim % wm.TransformerNumHeads == 0, "Models.WorldModel.TransformerHiddenDim",
            wm.TransformerHiddenDim, f"expected a multiple of TransformerNumHeads={wm.TransformerNumHeads}")
    if wm.Prior == "maskgit":
        require(wm.TransformerHiddenDim % wm.CategoricalDim == 0, "Models.WorldModel.TransformerHiddenDim",
                wm.TransformerHiddenDim,
                f"expected a multiple of CategoricalDim={wm.CategoricalDim}: the MaskGIT prior gives each "
                "of the CategoricalDim tokens an equal slice of h_t")
        require(mg.EmbeddingDim % mg.NumHeads == 0, "Models.MaskGit.EmbeddingDim", mg.EmbeddingDim,
                f"expected a multiple of Models.MaskGit.NumHeads={mg.NumHeads}")
        require(mg.DraftRounds <= wm.CategoricalDim, "Models.MaskGit.DraftRounds", mg.DraftRounds,
                f"expected at most CategoricalDim={wm.CategoricalDim} (one token per draft pass at least)")
        require(mg.ReviseRounds <= wm.CategoricalDim, "Models.MaskGit.ReviseRounds", mg.ReviseRounds,
                f"expected at most CategoricalDim={wm.CategoricalDim}")
    require(train.BufferWarmUp >= train.BatchLength, "JointTrainAgent.BufferWarmUp", train.BufferWarmUp,
            f"expected at least BatchLength={train.BatchLength} so the first batch can be sampled")
    require(train.BufferMaxLength >= train.BufferWarmUp, "JointTrainAgent.BufferMaxLength",
            train.BufferMaxLength, f"expected at least BufferWarmUp={train.BufferWarmUp}")
    require(0.0 <= agent.ReturnNormLowPercentile < agent.ReturnNormHighPercentile <= 100.0,
            "Models.Agent.ReturnNormLowPercentile", agent.ReturnNormLowPercentile,
            f"expected 0 <= low < ReturnNormHighPercentile={agent.ReturnNormHighPercentile} <= 100")
