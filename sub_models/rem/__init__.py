"""REM (Cohen et al., ICML 2024), part 1: the VQ-VAE tokenizer V and the RetNet world model M with
parallel observation prediction. See ../../README.md ("REM") and REM_SPEC.md sections 3-4."""


def build_rem_models(cfg, action_dim: int, device="cpu"):
    """(Tokenizer, POPWorldModel) of a validated REM config (config.compose_config("REM", ...))."""
    from sub_models.rem.tokenizer import Tokenizer
    from sub_models.rem.world_model import POPWorldModel
    tokenizer = Tokenizer(cfg.Models.Tokenizer).to(device)
    world_model = POPWorldModel(cfg.Models.RetNetWorldModel, cfg.Models.Tokenizer.VocabSize, action_dim).to(device)
    return tokenizer, world_model
