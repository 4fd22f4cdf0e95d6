"""The registry of model families (one package each under families/) and the configs they
validate.

A config names its family in `BasicSettings.Family`; `family_of` looks it up, and
`compose_config` / `load_config` / `stored_config` give configs typed and checked by their
family's schema. Adding a family: a package with its ModelFamily (families/family.py), a config
in config_files/, and one entry in FAMILIES below.
"""
from omegaconf import DictConfig, OmegaConf

from config import ConfigError, apply_schema, check_basic_settings, compose_raw, raw_from_hydra_app
from families import rem, storm
from families.family import ModelFamily

FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (storm.FAMILY, rem.FAMILY)}


def family_of(cfg: DictConfig) -> ModelFamily:
    """The family of a config, validated or not."""
    name = OmegaConf.select(cfg, "BasicSettings.Family", default=None)
    if name not in FAMILIES:
        raise ConfigError(f"BasicSettings.Family={name!r}: expected one of {', '.join(FAMILIES)} "
                          "(the model family; config_files/STORM.yaml and REM.yaml set it)")
    return FAMILIES[name]


def validate(cfg: DictConfig) -> DictConfig:
    """Check keys and types against the family's schema, then the sizes (config.apply_schema)."""
    family = family_of(cfg)
    typed = apply_schema(cfg, family.schema)
    check_basic_settings(typed)
    family.check_config(typed)
    return typed


def compose_config(config_name: str, overrides: list[str]) -> DictConfig:
    """Compose `config_name` with Hydra overrides outside of a @hydra.main app (tests, eval.py), validated."""
    return validate(compose_raw(config_name, overrides))


def load_config(cfg: DictConfig) -> DictConfig:
    """Inside a @hydra.main app: the loaded config (re-composed if BasicSettings.config_path names
    another model config than the one Hydra loaded), validated."""
    return validate(raw_from_hydra_app(cfg))


def stored_config(saved: dict, current: DictConfig) -> DictConfig:
    """The validated config a checkpoint was written with (its `config` entry); keys added to
    the schema after it was written take their values from `current`."""
    merged = OmegaConf.merge(OmegaConf.to_container(current, resolve=True), saved)
    return validate(merged)
