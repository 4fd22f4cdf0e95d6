"""The configuration toolkit that every model family shares.

The YAML files in config_files/ hold every number. Each model family (families/) declares
the *shape* of its configs (a schema: which keys exist and their types) and the checks that
its sizes fit together; this module holds what they share: the BasicSettings section, the
typing of a config against a schema with clear errors, the checks of BasicSettings, and the
composition of a config through Hydra, so command-line overrides (`Models.Agent.Gamma=0.99`,
`+preset=cpu`, `--config-name GITSTORM`) work as usual and `BasicSettings.config_path`,
which the authors' release ignored, is honoured. `families.compose_config` /
`families.load_config` compose and validate with the config's family.
"""
import difflib
from dataclasses import dataclass
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
    Family: str = MISSING   # the model family (families/): STORM (STORM and GIT-STORM) or REM
    model: str = MISSING    # the run's label: default run name, ablation labels
    config_path: str = MISSING
    Seed: int = MISSING
    ImageSize: int = MISSING
    Device: str = MISSING
    MixedPrecision: str = MISSING
    Compile: Any = None   # null, true, false or reduce-overhead (check_basic_settings, update_steps.py)
    Deterministic: bool = MISSING
    Resume: str = MISSING
    RunsDir: str = MISSING
    CheckpointDir: str = MISSING


BASIC_CHOICES = {
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


def apply_schema(cfg: DictConfig, schema: type) -> DictConfig:
    """Check keys and types of `cfg` against `schema` (a dataclass of the whole config).

    Returns the config typed by the schema (ints are ints, floats floats) and read-only
    against new keys, so a typo later in code fails instead of silently reading None.
    """
    structured = OmegaConf.structured(schema)
    try:
        typed = OmegaConf.merge(structured, cfg)
    except ConfigKeyError as error:
        bad = error.full_key or str(error)
        nearest = difflib.get_close_matches(bad, _known_keys(structured), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(nearest)}?" if nearest else ""
        raise ConfigError(f"unknown config key {bad!r}{hint}") from None
    except ValidationError as error:
        raise ConfigError(f"config key {error.full_key!r} has value {error.value!r}, "
                          f"which is not of the expected type ({error.msg.splitlines()[0]})") from None
    missing = sorted(OmegaConf.missing_keys(typed))
    if missing:
        raise ConfigError(f"config keys without a value: {', '.join(missing)}")
    OmegaConf.set_struct(typed, True)
    return typed


def require(condition, path, value, expected):
    if not condition:
        raise ConfigError(f"{path}={value!r}: {expected}")


def check_choices(cfg, choices: dict[str, tuple]) -> None:
    """Each dotted key of `choices` holds one of its allowed values."""
    for path, allowed in choices.items():
        value = OmegaConf.select(cfg, path)
        require(value in allowed, path, value, f"expected one of {', '.join(allowed)}")


def check_basic_settings(cfg) -> None:
    """The checks of a typed config's BasicSettings section, shared by every family."""
    check_choices(cfg, BASIC_CHOICES)
    basic = cfg.BasicSettings
    # null: compiled on CUDA, eager on CPU; false: eager; true: torch.compile the hot paths;
    # reduce-overhead: compiled and each update captured as one CUDA graph (update_steps.py)
    require(basic.Compile is None or isinstance(basic.Compile, bool) or basic.Compile == "reduce-overhead",
            "BasicSettings.Compile", basic.Compile, "expected null, true, false or reduce-overhead")
    # the protocol is an Atari preprocessing choice; DMC and gym/ envs have one protocol
    require(basic.AtariProtocol == "storm" or basic.env_name.startswith("ALE/"), "BasicSettings.AtariProtocol",
            basic.AtariProtocol, f"expected 'storm' for BasicSettings.env_name={basic.env_name!r}: the "
            "iris protocol applies to Atari ('ALE/<Game>-v5') envs only")


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


def compose_raw(config_name: str, overrides: list[str]) -> DictConfig:
    """Compose `config_name` with Hydra overrides outside of a @hydra.main app (tests, eval.py),
    re-composed if BasicSettings.config_path names another model config; not yet validated
    (families.compose_config validates it)."""
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
    return cfg


def raw_from_hydra_app(cfg: DictConfig) -> DictConfig:
    """Inside a @hydra.main app: the config Hydra loaded, re-composed if BasicSettings.config_path
    names another model config (same overrides); not yet validated (families.load_config)."""
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


def default_run_name(cfg: DictConfig) -> str:
    """Boxing-STORM-seed_0 for ALE/Boxing-v5, cartpole_balance-GITSTORM_DMC-seed_0 for dmc/cartpole_balance."""
    env = cfg.BasicSettings.env_name
    short = env.split("/", 1)[-1].split(":")[-1]     # gym/<module>:<EnvId> -> <EnvId>
    if env.startswith("ALE/"):
        short = short.rsplit("-v", 1)[0]
    return f"{short}-{cfg.BasicSettings.model}-seed_{cfg.BasicSettings.Seed}"

