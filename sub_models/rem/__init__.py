"""REM (Cohen et al., ICML 2024): the VQ-VAE tokenizer V, the RetNet world model M with parallel
observation prediction, and the latent LSTM controller C. Their loop, acting rule and config
schema: families/rem/. See REM_SPEC.md sections 3-5."""
from config import plain_section
from sub_models.rem.controller import Controller
from sub_models.rem.tokenizer import Tokenizer
from sub_models.rem.world_model import POPWorldModel


def build_rem_models(cfg, action_dim: int, discrete: bool, device="cpu", bf16: bool = False) -> dict:
    """{tokenizer, world_model, controller} of a validated REM config (families.compose_config("REM", ...)).
    REM trains in fp32 (its schema refuses bf16), so `bf16` is always False."""
    if not discrete:
        raise ValueError(f"{cfg.BasicSettings.env_name}: REM acts in discrete action spaces only (Atari); "
                         "this env's actions are continuous")
    tok_cfg = cfg.Models.Tokenizer
    tokenizer = Tokenizer(tok_cfg).to(device)
    world_model = POPWorldModel(cfg.Models.RetNetWorldModel, tok_cfg.VocabSize, action_dim).to(device)
    grid = cfg.BasicSettings.ImageSize // 2 ** tok_cfg.DownsampleSteps
    controller = Controller(plain_section(cfg.Models.Controller), tok_cfg.EmbedDim, grid, action_dim).to(device)
    return {"tokenizer": tokenizer, "world_model": world_model, "controller": controller}
