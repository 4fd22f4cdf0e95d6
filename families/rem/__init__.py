"""REM (Cohen et al., ICML 2024): the VQ-VAE tokenizer V, the RetNet world model M with parallel
observation prediction and the latent LSTM controller C (models: sub_models/rem/), trained by
the epoch loop in trainer.py. See docs/rem.md and REM_SPEC.md."""
from families.family import ModelFamily
from families.rem.acting import make_actor
from families.rem.schema import REMConfigSchema, check_config
from families.rem.trainer import REMTrainer
from sub_models.rem import build_rem_models

FAMILY = ModelFamily(name="REM", schema=REMConfigSchema, check_config=check_config, build_models=build_rem_models,
                     make_actor=make_actor, trainer=REMTrainer, acting_keys=("REMTrain.EvalTemperature",))
