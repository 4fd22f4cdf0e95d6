"""The video-prediction protocol of the paper (section 4, appendix K), step by step.

1. `collect_episodes`: play whole episodes in the real environment with the trained agent
   (EnvActor in families/storm/acting.py, the acting rule of training and eval.py), recording
   for every step the frame o_t the action was taken on and the action a_t.
2. `cut_clips`: cut clips of `context + horizon` consecutive steps inside one episode. Each
   episode is tiled into disjoint windows from a random offset; `videos` windows are drawn
   uniformly without replacement from all episodes' windows. Clips never overlap and never
   cross an episode boundary.
3. `open_loop_rollout`: encode the `context` real frames (posterior samples), run the
   transformer over them and their real actions; then for each of the `horizon` steps the
   prior samples the next latent, which is decoded to a frame and fed back with the clip's
   real action (open loop: no real frame after the context).
4. Perplexity (appendix K): exp of the mean negative log-likelihood of the posterior sample
   of each real future frame's K tokens under the distribution the prior drew that step's
   prediction from, over all K tokens of all `horizon` steps of all clips.
"""
from typing import Callable, NamedTuple

import numpy as np
import torch

from families.storm.acting import EnvActor
from env_wrapper import make_vector_env
from sub_models.world_models import autocast_for


class ProtocolError(ValueError):
    """Input the protocol cannot work with (e.g. episodes shorter than a clip)."""


class Episode(NamedTuple):
    obs: np.ndarray       # (L, H, W, 3) uint8, o_t: the frame a_t was taken on
    actions: np.ndarray   # (L,) int or (L, A) float


# ---------------------------------------------------------------------- 1. episodes
@torch.no_grad()
def collect_episodes(world_model, agent, env_name: str, num_envs: int, seed: int, context_length: int,
                     image_size: int, clip_length: int, videos: int, max_episodes: int,
                     max_steps: int | None = None, on_step: Callable[[int, int], None] | None = None) -> list[Episode]:
    """Whole episodes played by the agent until they hold `videos` disjoint clips of
    `clip_length` steps. Envs i are seeded seed + i (pass an evaluation seed). An episode
    is cut after `max_steps` agent steps if given (it then counts as ended there).
    on_step(clips so far, episodes so far) is called after every vector step.

    ProtocolError if `max_episodes` episodes do not hold enough clips, or if the first ten
    episodes are all shorter than one clip (the clip length cannot work for this env)."""
    world_model.eval()
    agent.eval()
    envs = make_vector_env(env_name, num_envs, seed, training=False, image_size=image_size)
    episodes: list[Episode] = []
    try:
        actor = EnvActor(world_model, agent, envs.single_action_space, num_envs, context_length)
        current_obs = [[] for _ in range(num_envs)]
        current_actions = [[] for _ in range(num_envs)]
        clips = 0
        obs, _ = envs.reset()
        while clips < videos:
            actions = actor.act(obs)
            for i in range(num_envs):
                current_obs[i].append(np.array(obs[i]))   # a copy: the vector env may reuse its buffer
                current_actions[i].append(actions[i])
            obs, _, terminated, truncated, _ = envs.step(actions)
            lengths = np.array([len(o) for o in current_obs])
            capped = ~(terminated | truncated) & (lengths >= (max_steps or np.inf))
            for i in np.flatnonzero(terminated | truncated | capped):
                episodes.append(Episode(np.stack(current_obs[i]), np.stack(current_actions[i])))
                current_obs[i], current_actions[i] = [], []
                clips += len(episodes[-1].obs) // clip_length
            if capped.any():   # SAME_STEP autoreset restarts finished envs; cut ones are restarted here
                obs, _ = envs.reset(options={"reset_mask": capped})
            if on_step is not None:
                on_step(min(clips, videos), len(episodes))
            longest = max((len(e.obs) for e in episodes), default=0)
            if len(episodes) >= 10 and clips == 0:
                raise ProtocolError(f"the first {len(episodes)} episodes of {env_name} are at most {longest} steps "
                                    f"long; a clip needs {clip_length} steps (-context + -horizon): shorten the clip")
            if clips < videos and len(episodes) >= max_episodes:
                raise ProtocolError(f"{len(episodes)} episodes (-max_episodes) of {env_name}, at most {longest} steps "
                                    f"long, hold only {clips} disjoint clips of {clip_length} steps, fewer than "
                                    f"-videos={videos}: lower -videos or the clip length, or raise -max_episodes")
    finally:
        envs.close()
    return episodes


# ---------------------------------------------------------------------- 2. clips
def clip_windows(episodes: list[Episode], clip_length: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """(episode index, start step) of the disjoint windows tiling each episode from a random
    offset in [0, L mod clip_length]."""
    windows = []
    for index, episode in enumerate(episodes):
        count = len(episode.obs) // clip_length
        if count == 0:
            continue
        offset = int(rng.integers(0, len(episode.obs) - count * clip_length + 1))
        windows += [(index, offset + k * clip_length) for k in range(count)]
    return windows


def cut_clips(episodes: list[Episode], clip_length: int, videos: int,
              rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """`videos` clips drawn uniformly without replacement from the windows of `clip_windows`,
    in episode order: (obs (N, clip_length, H, W, 3) uint8, actions (N, clip_length[, A]),
    [(episode, start)] of each)."""
    windows = clip_windows(episodes, clip_length, rng)
    if len(windows) < videos:
        longest = max((len(e.obs) for e in episodes), default=0)
        raise ProtocolError(f"{len(episodes)} episodes (at most {longest} steps long) hold {len(windows)} disjoint "
                            f"clips of {clip_length} steps; {videos} are needed")
    chosen = sorted(rng.choice(len(windows), size=videos, replace=False).tolist())
    picked = [windows[k] for k in chosen]
    obs = np.stack([episodes[e].obs[s:s + clip_length] for e, s in picked])
    actions = np.stack([episodes[e].actions[s:s + clip_length] for e, s in picked])
    return torch.from_numpy(obs), torch.from_numpy(actions), picked


# ---------------------------------------------------------------------- 3-4. rollout, perplexity
class Rollout(NamedTuple):
    frames: torch.Tensor       # (B, H, 64, 64, 3) uint8, predicted frames of steps context .. context+H-1
    token_nll: torch.Tensor    # (B, H, K) -log p_prior(posterior token of the real frame)
    tokens: torch.Tensor       # (B, H, K) long, the prior's sampled tokens


@torch.no_grad()
def open_loop_rollout(world_model, obs: torch.Tensor, actions: torch.Tensor, context: int,
                      window: int | None = None) -> Rollout:
    """obs (B, T, H, W, 3) uint8 and actions (B, T[, A]) of real clips; the first `context`
    steps condition, the other H = T - context are predicted open loop with the real actions.

    The transformer is fed incrementally with its key/value cache. It has seen at most
    `window` steps at once in training (min of TransformerMaxLength and BatchLength): when
    the history outgrows it, the cache is rebuilt from the last `window` steps (positions
    restart at 0, as for any training sequence), so long horizons work with any config.
    """
    wm = world_model
    wm.eval()
    device = wm.device
    obs, actions = obs.to(device), actions.to(device)
    batch, length = obs.shape[:2]
    horizon = length - context
    if context < 1 or horizon < 1:
        raise ValueError(f"need context >= 1 and at least one step to predict, got context={context} of {length}")
    window = window or wm.sequence_model.max_length
    if window < context:
        raise ValueError(f"context={context} is longer than the {window} steps the transformer attends to")
    bf16 = wm.use_bf16 and device.type == "cuda"
    dtype = torch.bfloat16 if bf16 else torch.float32
    with autocast_for(device, wm.use_bf16):
        z_context = wm.encode_sample(obs[:, :context])                 # (B, C, K, V) one-hot posterior
        z_real = wm.encode_sample(obs[:, context:])                    # (B, H, K, V) targets of the perplexity
        history_z = list(z_context.unbind(1))                           # one (B, K, V) per step fed
        cache = wm.sequence_model.start_cache(batch, device, dtype, steps=window)
        h = wm.sequence_model(z_context, wm.action_input(actions[:, :context]), cache)[:, -1]   # (B, D)
        predicted, nll, tokens = [], [], []
        for step in range(horizon):
            z, log_probs = wm.prior.sample(h)                          # (B, K, V) each
            log_probs = torch.log_softmax(log_probs.float(), -1)       # already log-probs; renormalise defensively
            nll.append(-(log_probs * z_real[:, step].float()).sum(-1))             # (B, K)
            tokens.append(z.argmax(-1))
            predicted.append(wm.decode(z).float().clamp(0, 1))         # (B, H, W, 3)
            if step == horizon - 1:
                break
            history_z.append(z.float())
            t = context + step                                          # the step z predicts, fed with a_t
            if wm.sequence_model.cached_steps(cache) + 1 > window:
                cache = wm.sequence_model.start_cache(batch, device, dtype, steps=window)
                z_window = torch.stack(history_z[-window:], 1)
                h = wm.sequence_model(z_window, wm.action_input(actions[:, t + 1 - window:t + 1]), cache)[:, -1]
            else:
                h = wm.sequence_model(z[:, None].float(), wm.action_input(actions[:, t:t + 1]), cache)[:, 0]
    frames = (torch.stack(predicted, 1) * 255.0).round().to(torch.uint8)
    return Rollout(frames.cpu(), torch.stack(nll, 1).float().cpu(), torch.stack(tokens, 1).cpu())


def perplexity(token_nll: torch.Tensor) -> float:
    """exp(mean NLL) over every token, step and clip (appendix K). C = uniform prior; lower is
    a better prediction; above C the prior is confidently wrong more than it is right."""
    return float(torch.exp(token_nll.double().mean()))


def token_usage_perplexity(tokens: torch.Tensor, num_classes: int) -> float:
    """exp of the entropy of how often each of the C classes is sampled over all predicted
    tokens (all clips, steps and K positions): C = all classes used equally, 1 = one class.
    Not the paper's perplexity: a measure of how many tokens the prior uses."""
    counts = torch.bincount(tokens.flatten(), minlength=num_classes).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float(torch.exp(entropy))
