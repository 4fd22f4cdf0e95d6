"""STORM and GIT-STORM: one family, whose dynamics prior is the config key Models.WorldModel.Prior
(mlp: STORM, maskgit: GIT-STORM). Models: agents.py and sub_models/; loop: trainer.py."""
from agents import build_models as build_world_model_and_agent
from families.family import ModelFamily
from families.storm.acting import make_actor
from families.storm.schema import STORMConfigSchema, check_config
from families.storm.trainer import Trainer


def build_models(cfg, action_dim: int, discrete: bool, device, bf16: bool) -> dict:
    world_model, agent = build_world_model_and_agent(cfg, action_dim, discrete, device, bf16)
    return {"world_model": world_model, "agent": agent}


FAMILY = ModelFamily(name="STORM", schema=STORMConfigSchema, check_config=check_config, build_models=build_models,
                     make_actor=make_actor, trainer=Trainer, acting_keys=("JointTrainAgent.RealityContextLength",),
                     video_prediction=True)
