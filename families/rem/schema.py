"""The shape of config_files/REM.yaml and the checks that its sizes fit together.

`families.validate` types a REM config with `REMConfigSchema` and then calls `check_config`;
unknown keys, wrong types and missing values are reported the same way as for every family.
"""
from dataclasses import dataclass, field

from omegaconf import MISSING, OmegaConf

from config import BasicSettingsSchema, require   # the BasicSettings section is every family's


@dataclass
class REMTrainSchema:
    Epochs: int = MISSING
    CollectStopAfterEpochs: int = MISSING
    CollectStepsPerEpoch: int = MISSING
    NumEnvs: int = MISSING
    CollectTemperature: float = MISSING
    CollectEpsilon: float = MISSING
    BurnIn: int = MISSING
    TokenizerStartAfterEpochs: int = MISSING
    TokenizerStepsPerEpoch: int = MISSING
    TokenizerBatchSize: int = MISSING
    WorldModelStartAfterEpochs: int = MISSING
    WorldModelStepsPerEpoch: int = MISSING
    WorldModelBatchSize: int = MISSING
    WorldModelBatchLength: int = MISSING
    ControllerStartAfterEpochs: int = MISSING
    ControllerStepsPerEpoch: int = MISSING
    ControllerBatchSize: int = MISSING
    ControllerBatchLength: int = MISSING
    ImagineHorizon: int = MISSING
    EvalEveryEpochs: int = MISSING
    EvalEpisodes: int = MISSING
    EvalNumEnvs: int = MISSING
    EvalTemperature: float = MISSING
    FinalEvalEpisodes: int = MISSING
    SaveEveryEpochs: int = MISSING
    KeepCheckpoints: int = MISSING
    BufferOnDevice: bool = MISSING
    MaxNonFiniteUpdates: int = MISSING


@dataclass
class TokenizerSchema:
    InChannels: int = MISSING
    BaseChannels: int = MISSING
    DownsampleSteps: int = MISSING
    NormGroups: int = MISSING
    NormEps: float = MISSING
    VocabSize: int = MISSING
    EmbedDim: int = MISSING
    CommitmentBeta: float = MISSING
    PerceptualWeight: float = MISSING
    LearningRate: float = MISSING
    WeightDecay: float = MISSING
    MaxGradNorm: float = MISSING


@dataclass
class RetNetWorldModelSchema:
    NumLayers: int = MISSING
    EmbedDim: int = MISSING
    NumHeads: int = MISSING
    FeedForwardDim: int = MISSING
    Dropout: float = MISSING
    LayerNormEps: float = MISSING
    GroupNormEps: float = MISSING
    DecayWindowMin: float = MISSING
    DecayWindowMax: float = MISSING
    ThetaBase: float = MISSING
    TokensPerBlock: int = MISSING
    MaxBlocks: int = MISSING
    BlocksPerChunk: int = MISSING
    ContextLength: int = MISSING
    SharedEmbeddings: bool = MISSING
    SharedPredictionToken: bool = MISSING
    LearningRate: float = MISSING
    WeightDecay: float = MISSING
    MaxGradNorm: float = MISSING


@dataclass
class ControllerSchema:
    ConvChannels: list[int] = MISSING
    HiddenDim: int = MISSING
    IncludeActionInputs: bool = MISSING
    BurnInFeedsActions: bool = MISSING
    Gamma: float = MISSING
    Lambda: float = MISSING
    EntropyWeight: float = MISSING
    TrainTemperature: float = MISSING
    LearningRate: float = MISSING
    WeightDecay: float = MISSING
    MaxGradNorm: float = MISSING


@dataclass
class REMModelsSchema:
    Tokenizer: TokenizerSchema = field(default_factory=TokenizerSchema)
    RetNetWorldModel: RetNetWorldModelSchema = field(default_factory=RetNetWorldModelSchema)
    Controller: ControllerSchema = field(default_factory=ControllerSchema)


@dataclass
class REMConfigSchema:
    BasicSettings: BasicSettingsSchema = field(default_factory=BasicSettingsSchema)
    REMTrain: REMTrainSchema = field(default_factory=REMTrainSchema)
    Models: REMModelsSchema = field(default_factory=REMModelsSchema)


POSITIVE = (
    "REMTrain.Epochs", "REMTrain.CollectStepsPerEpoch", "REMTrain.NumEnvs", "REMTrain.TokenizerBatchSize",
    "REMTrain.WorldModelBatchSize", "REMTrain.WorldModelBatchLength", "REMTrain.ControllerBatchSize",
    "REMTrain.ControllerBatchLength", "REMTrain.ImagineHorizon", "REMTrain.EvalEpisodes", "REMTrain.EvalNumEnvs",
    "REMTrain.FinalEvalEpisodes", "REMTrain.SaveEveryEpochs", "REMTrain.KeepCheckpoints",
    "REMTrain.MaxNonFiniteUpdates",
    "Models.Tokenizer.InChannels", "Models.Tokenizer.BaseChannels", "Models.Tokenizer.DownsampleSteps",
    "Models.Tokenizer.NormGroups", "Models.Tokenizer.VocabSize", "Models.Tokenizer.EmbedDim",
    "Models.RetNetWorldModel.NumLayers", "Models.RetNetWorldModel.EmbedDim", "Models.RetNetWorldModel.NumHeads",
    "Models.RetNetWorldModel.FeedForwardDim", "Models.RetNetWorldModel.MaxBlocks",
    "Models.RetNetWorldModel.BlocksPerChunk", "Models.Controller.HiddenDim",
)


def check_config(cfg) -> None:
    """The size checks of a typed REM config; raises config.ConfigError."""
    for path in POSITIVE:
        value = OmegaConf.select(cfg, path)
        require(value >= 1, path, value, "expected a positive integer")
    basic = cfg.BasicSettings
    require(basic.MixedPrecision == "fp32", "BasicSettings.MixedPrecision", basic.MixedPrecision,
            "expected fp32: REM trains in fp32 (bf16 autocast is built for STORM / GIT-STORM only)")
    require(basic.Compile is None or basic.Compile is False, "BasicSettings.Compile", basic.Compile,
            "expected null or false: torch.compile is built for STORM / GIT-STORM's hot paths only")
    train, tok, wm = cfg.REMTrain, cfg.Models.Tokenizer, cfg.Models.RetNetWorldModel
    size, steps = cfg.BasicSettings.ImageSize, tok.DownsampleSteps
    require(size % 2 ** steps == 0, "BasicSettings.ImageSize", size,
            f"expected a multiple of 2**DownsampleSteps = {2 ** steps}")
    grid = size // 2 ** steps
    require(wm.TokensPerBlock == grid * grid + 1, "Models.RetNetWorldModel.TokensPerBlock", wm.TokensPerBlock,
            f"expected (ImageSize / 2**DownsampleSteps)^2 + 1 = {grid * grid + 1} "
            "(the tokenizer's tokens per frame plus one action token)")
    for channels in [tok.BaseChannels * 2 ** i for i in range(steps + 1)]:
        require(channels % tok.NormGroups == 0, "Models.Tokenizer.NormGroups", tok.NormGroups,
                f"expected a divisor of every encoder/decoder width ({channels} is not a multiple)")
    require(tok.PerceptualWeight == 0.0, "Models.Tokenizer.PerceptualWeight", tok.PerceptualWeight,
            "expected 0.0: LPIPS needs VGG16 ImageNet weights that no installable package ships "
            "(docs/deviations.md)")
    if wm.SharedEmbeddings:
        require(wm.EmbedDim == tok.EmbedDim, "Models.RetNetWorldModel.EmbedDim", wm.EmbedDim,
                f"expected Models.Tokenizer.EmbedDim={tok.EmbedDim}: with SharedEmbeddings the "
                "codebook vectors are M's observation embeddings")
    require(wm.EmbedDim % wm.NumHeads == 0 and (wm.EmbedDim // wm.NumHeads) % 2 == 0,
            "Models.RetNetWorldModel.EmbedDim", wm.EmbedDim,
            f"expected a multiple of NumHeads={wm.NumHeads} with an even head size (rotary pairs)")
    require(0.0 <= wm.Dropout < 1.0, "Models.RetNetWorldModel.Dropout", wm.Dropout, "expected 0 <= p < 1")
    require(1.0 < wm.DecayWindowMin <= wm.DecayWindowMax, "Models.RetNetWorldModel.DecayWindowMin",
            wm.DecayWindowMin, f"expected 1 < DecayWindowMin <= DecayWindowMax={wm.DecayWindowMax}")
    require(0 <= wm.ContextLength < train.WorldModelBatchLength, "Models.RetNetWorldModel.ContextLength",
            wm.ContextLength, f"expected 0 <= ContextLength < REMTrain.WorldModelBatchLength="
            f"{train.WorldModelBatchLength} (some block must carry a loss)")
    require(train.WorldModelBatchLength <= wm.MaxBlocks, "REMTrain.WorldModelBatchLength",
            train.WorldModelBatchLength, f"expected at most Models.RetNetWorldModel.MaxBlocks={wm.MaxBlocks}")
    imagined_blocks = train.ImagineHorizon - 1       # context (ContextLength frames) + steps = horizon + 1 frames
    require(train.ImagineHorizon > wm.ContextLength and imagined_blocks <= wm.MaxBlocks,
            "REMTrain.ImagineHorizon", train.ImagineHorizon,
            f"expected ContextLength={wm.ContextLength} < ImagineHorizon <= MaxBlocks + 1 = {wm.MaxBlocks + 1}")
    require(train.ControllerBatchLength > train.BurnIn, "REMTrain.ControllerBatchLength",
            train.ControllerBatchLength, f"expected more than REMTrain.BurnIn={train.BurnIn}")
    ctrl = cfg.Models.Controller
    require(len(ctrl.ConvChannels) >= 1 and min(ctrl.ConvChannels) >= 1, "Models.Controller.ConvChannels",
            list(ctrl.ConvChannels), "expected a non-empty list of positive widths")
    require(ctrl.TrainTemperature > 0.0, "Models.Controller.TrainTemperature", ctrl.TrainTemperature,
            "expected > 0 (actions are sampled from softmax(logits / T))")
    require(train.EvalEveryEpochs >= 0, "REMTrain.EvalEveryEpochs", train.EvalEveryEpochs,
            "expected a number of epochs, or 0 for no evaluation during training")
    require(0.0 <= train.CollectEpsilon <= 1.0, "REMTrain.CollectEpsilon", train.CollectEpsilon,
            "expected a probability in [0, 1]")
