"""REM (Cohen et al., ICML 2024): the VQ-VAE tokenizer V, the RetNet world model M with parallel
observation prediction, and the latent LSTM controller C. See ../../README.md ("REM") and
REM_SPEC.md sections 3-5."""


def build_rem_models(cfg, action_dim: int, device="cpu"):
    """(Tokenizer, POPWorldModel, Controller) of a validated REM config (config.compose_config("REM", ...))."""
    from config import plain_section
    from sub_models.rem.controller import Controller
    from sub_models.rem.tokenizer import Tokenizer
    from sub_models.rem.world_model import POPWorldModel
    tok_cfg = cfg.Models.Tokenizer
    tokenizer = Tokenizer(tok_cfg).to(device)
    world_model = POPWorldModel(cfg.Models.RetNetWorldModel, tok_cfg.VocabSize, action_dim).to(device)
    grid = cfg.BasicSettings.ImageSize // 2 ** tok_cfg.DownsampleSteps
    controller = Controller(plain_section(cfg.Models.Controller), tok_cfg.EmbedDim, grid, action_dim).to(device)
    return tokenizer, world_model, controller
