"""How the training loop runs its two updates per env step (BasicSettings.Compile).

    world-model update:          batch (obs, actions, rewards, terminations) -> (figures, finite)
    imagination + agent update:  context (obs, actions) -> imagined rollout -> (figures, finite)

`eager` runs them as written. `compiled` (Compile=true, and null on CUDA) torch.compiles the
world-model loss, the imagination rollout and the agent loss (their `compile_hot_paths`).
`reduce-overhead` compiles them too and captures each update whole (forward, backward, gradient
clipping, optimiser step, slow critic and return scale) as one CUDA graph that every later step
replays: one launch per update instead of one per kernel (GraphedUpdate). CUDA graphs need CUDA:
on CPU the mode runs the eager updates through the same buffers, with the eager numbers.
"""
from typing import Callable

import torch

MODES = ("eager", "compiled", "reduce-overhead")


def hot_path_mode(setting, device: torch.device) -> str:
    """BasicSettings.Compile -> one of MODES; null is `compiled` on CUDA (where launch overhead
    dominates) and `eager` on CPU."""
    if setting is None:
        return "compiled" if device.type == "cuda" else "eager"
    if setting is True:
        return "compiled"
    return "eager" if setting is False else setting


class GraphedUpdate:
    """`update(*inputs) -> (figures, finite)` captured once as a CUDA graph and replayed at every call.

    A replay runs the captured kernels on the captured memory, hence:
      * the inputs are copied into tensors the graph reads (`static_inputs`; shapes fixed by the
        first call);
      * the figures the graph writes are overwritten by the next replay, while the loop keeps them
        until it logs: the graph packs them into one tensor and every call returns views of one
        copy of it (one copy kernel);
      * the first WARMUP_CALLS calls run eagerly on a side stream (they are real updates): they
        create what a first call makes lazily (optimiser state, cuBLAS workspaces, compiled
        kernels), which must not happen during a capture;
      * the optimiser step is captured as well: fused Adam keeps its step count on the device and
        reads the non-finite flag there; `capturable` only lifts its guard against capture;
      * nothing global changes between the warm-up and the capture: a change of global state that
        torch.compile guards on (autocast's weight cache, say) would recompile inside the capture.
        Autocast's cache needs no switching off: every autocast region opens and closes within
        the update (and is traced into the compiled code), so no cached cast outlives a capture.
    Random draws (dropout, sampling) come from the default CUDA generator as in eager code: each
    replay advances it by what one eager call would use. Without CUDA every call runs the update
    eagerly through the same input and output buffers.
    """
    WARMUP_CALLS = 3

    def __init__(self, update: Callable, optimizers: list[torch.optim.Optimizer], name: str):
        self.update, self.optimizers, self.name = update, optimizers, name
        self.static_inputs: tuple[torch.Tensor, ...] | None = None
        self.keys: list[str] | None = None
        self.packed: torch.Tensor | None = None   # (figures..., finite) as float32, in the graph's memory
        self.graph: torch.cuda.CUDAGraph | None = None
        self.side_stream: torch.cuda.Stream | None = None
        self.calls = 0

    def __call__(self, *inputs: torch.Tensor) -> tuple[dict, torch.Tensor]:
        self.load(inputs)
        if self.static_inputs[0].device.type != "cuda":
            self.store(self.run())
        elif self.calls < self.WARMUP_CALLS:
            self.side_stream = self.side_stream or torch.cuda.Stream()
            self.side_stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side_stream):
                self.store(self.run())
            torch.cuda.current_stream().wait_stream(self.side_stream)
        else:
            if self.graph is None:
                self.capture()
            self.graph.replay()
        self.calls += 1
        kept = self.packed.clone()
        return dict(zip(self.keys, kept[:-1].unbind())), kept[-1] > 0

    def load(self, inputs: tuple[torch.Tensor, ...]) -> None:
        if self.static_inputs is None:
            self.static_inputs = tuple(x.clone() for x in inputs)
            return
        for i, (static, x) in enumerate(zip(self.static_inputs, inputs)):
            if static.shape != x.shape or static.dtype != x.dtype:
                raise ValueError(f"{self.name}: input {i} is {tuple(x.shape)} {x.dtype}, but the CUDA graph was "
                                 f"built for {tuple(static.shape)} {static.dtype}")
            static.copy_(x)

    def run(self) -> torch.Tensor:
        figures, finite = self.update(*self.static_inputs)
        self.keys = list(figures)
        return torch.stack([*(value.float() for value in figures.values()), finite.float()])

    def store(self, packed: torch.Tensor) -> None:
        if self.packed is None:
            self.packed = packed
        else:
            self.packed.copy_(packed)

    def capture(self) -> None:
        for optimizer in self.optimizers:   # after any checkpoint restore, which resets param_groups
            for group in optimizer.param_groups:
                group["capturable"] = True
        self.graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.packed = self.run()
        except RuntimeError as error:
            raise RuntimeError(f"capturing the {self.name} as a CUDA graph failed: {error}\n"
                               "BasicSettings.Compile=true runs it compiled without graphs") from error


class UpdateSteps:
    """The loop's two updates in the chosen mode: `world_model_update(obs, actions, rewards,
    terminations)` and `agent_update(context_obs, context_actions)` (imagination + agent update),
    each returning (figures, finite). `backend` is torch.compile's (a cheap one, e.g. "eager",
    checks the compiled paths trace whole without generating code)."""

    def __init__(self, world_model, agent, horizon: int, mode: str, backend: str = "inductor"):
        if mode not in MODES:
            raise ValueError(f"update mode {mode!r}: expected one of {', '.join(MODES)}")
        self.world_model, self.agent, self.horizon, self.mode = world_model, agent, horizon, mode
        on_cuda = world_model.device.type == "cuda"
        if mode == "compiled" or (mode == "reduce-overhead" and on_cuda):
            world_model.compile_hot_paths(backend)
            agent.compile_hot_paths(backend)
        self.world_model_update = world_model.update
        self.agent_update = self.imagine_and_update
        if mode == "reduce-overhead":
            self.world_model_update = GraphedUpdate(world_model.update, [world_model.optimizer], "world-model update")
            self.agent_update = GraphedUpdate(self.imagine_and_update, [agent.optimizer],
                                              "imagination + agent update")

    def imagine_and_update(self, context_obs: torch.Tensor, context_actions: torch.Tensor) -> tuple[dict, torch.Tensor]:
        rollout = self.world_model.imagine(context_obs, context_actions, self.agent.policy, self.horizon)
        return self.agent.update(rollout)
