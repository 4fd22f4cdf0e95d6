"""The paper's appendix E ablations: which games, which variants, and how their runs are named.

A variant is the METHOD part of a run name `<game>-<METHOD>-seed_<N>`, i.e. the
`BasicSettings.model` label of its training run. The baselines are the ordinary GIT-STORM runs
(`GITSTORM` on Atari, `GITSTORM_DMC` on DMC), so the benchmark sweep's runs serve every figure;
each ablation sweep trains only its variants, labelled by an override such as
`'BasicSettings.model=GITSTORM_DMC_${Models.WorldModel.StateMixer}'` (Hydra resolves the
interpolation per job).

The paper names the games of figure 12 and table 7 only; for figures 13-15 the text says
"three environments" / "DMC environments", so the presets use figure 12's games (our choice).
"""

from __future__ import annotations

from dataclasses import dataclass

ATARI_GAMES = ("Hero", "Freeway", "Boxing")         # figure 12's Atari games
DMC_TASKS = ("walker_walk", "walker_run", "quadruped_run")   # figure 12's DMC tasks
SEEDS = (0, 1, 2)                                   # "averaged across three random seeds"


@dataclass(frozen=True)
class Figure:
    title: str
    games: tuple[str, ...]
    variants: dict[str, str]   # run METHOD -> legend label (several methods may share a label)
    sweeps: tuple[str, ...]    # the train.py overrides of each sweep of variants (beside the baseline)


def _atari(envs=ATARI_GAMES) -> str:
    return "BasicSettings.env_name=" + ",".join(f"ALE/{g}-v5" for g in envs)


def _dmc(tasks=DMC_TASKS) -> str:
    return "BasicSettings.env_name=" + ",".join(f"dmc/{t}" for t in tasks)


FIGURES: dict[str, Figure] = {
    "12": Figure(
        "Figure 12: GIT-STORM without the MaskGIT head (MG) or its dot-product logits (MGDP)",
        ATARI_GAMES + DMC_TASKS,
        {"GITSTORM": "GIT-STORM", "GITSTORM_DMC": "GIT-STORM",
         "GITSTORM_noMG": "GIT-STORM w/o MG", "GITSTORM_DMC_noMG": "GIT-STORM w/o MG",
         "GITSTORM_noMGDP": "GIT-STORM w/o MGDP", "GITSTORM_DMC_noMGDP": "GIT-STORM w/o MGDP"},
        (f"--config-name GITSTORM {_atari()} Models.WorldModel.Prior=mlp BasicSettings.model=GITSTORM_noMG",
         f"--config-name GITSTORM {_atari()} Models.MaskGit.DotProductLogits=false BasicSettings.model=GITSTORM_noMGDP",
         f"--config-name GITSTORM_DMC {_dmc()} Models.WorldModel.Prior=mlp BasicSettings.model=GITSTORM_DMC_noMG",
         f"--config-name GITSTORM_DMC {_dmc()} Models.MaskGit.DotProductLogits=false "
         "BasicSettings.model=GITSTORM_DMC_noMGDP"),
    ),
    "13": Figure(
        "Figure 13: MaskGIT embedding size",
        ATARI_GAMES,
        {"GITSTORM_emb32": "E = 32", "GITSTORM_emb64": "E = 64", "GITSTORM": "E = 128 (GIT-STORM)",
         "GITSTORM_emb256": "E = 256"},
        (f"--config-name GITSTORM {_atari()} Models.MaskGit.EmbeddingDim=32,64,256 "
         "'BasicSettings.model=GITSTORM_emb${Models.MaskGit.EmbeddingDim}'",),
    ),
    "14": Figure(
        "Figure 14: action embedding (state mixer, iVideoGPT, unmixed states)",
        DMC_TASKS,
        {"GITSTORM_DMC": "GIT-STORM", "GITSTORM_DMC_ivideogpt": "GIT-STORM + iVideoGPT action embedder",
         "GITSTORM_DMC_unmixed": "Unmixed States"},
        (f"--config-name GITSTORM_DMC {_dmc()} Models.WorldModel.StateMixer=unmixed,ivideogpt "
         "'BasicSettings.model=GITSTORM_DMC_${Models.WorldModel.StateMixer}'",),
    ),
    "15": Figure(
        "Figure 15: state mixer (concatenation, concatenation + attention, cross attention)",
        DMC_TASKS,
        {"GITSTORM_DMC": "concatenation", "GITSTORM_DMC_concat_attn": "concatenation + attention",
         "GITSTORM_DMC_cross_attn": "cross attention"},
        (f"--config-name GITSTORM_DMC {_dmc()} Models.WorldModel.StateMixer=concat_attn,cross_attn "
         "'BasicSettings.model=GITSTORM_DMC_${Models.WorldModel.StateMixer}'",),
    ),
    "table7": Figure(
        "Table 7: VQ-VAE vs one-hot categorical latents",
        ("Boxing", "Hero", "MsPacman"),
        {"GITSTORM_vqvae": "VQ-VAE", "GITSTORM": "One Hot Categorical"},
        (f"--config-name GITSTORM {_atari(('Boxing', 'Hero', 'MsPacman'))} Models.WorldModel.Latent=vqvae "
         "BasicSettings.model=GITSTORM_vqvae",),
    ),
}


def sweep_commands(name: str, launcher: str = "slurm") -> list[str]:
    """The `python train.py -m ...` commands that train a figure's variants (three seeds)."""
    seeds = "BasicSettings.Seed=" + ",".join(map(str, SEEDS))
    return [f"python train.py -m hydra/launcher={launcher} {sweep} {seeds}" for sweep in FIGURES[name].sweeps]
