"""update_steps.py: the loop's updates in each BasicSettings.Compile mode. On CPU the CUDA-graph
mode (reduce-overhead) runs the eager updates through the graph's input and output buffers and
must give the eager numbers exactly; tests/test_cuda.py checks the captured graphs on a GPU."""
from unittest import mock

import pytest
import torch

from agents import ActorCriticAgent
from config import ConfigError
from families import compose_config
from test_world_model import _forbidden, config, tiny_world_model
from update_steps import GraphedUpdate, UpdateSteps, hot_path_mode

pytestmark = pytest.mark.usefixtures("one_torch_thread")
HORIZON = 4


def models(prior):
    world_model = tiny_world_model(prior)
    torch.manual_seed(1)
    agent = ActorCriticAgent(config("STORM", "+preset=cpu").Models.Agent, world_model.latent_dim + 64, 18, True)
    return world_model, agent


def batches(count, batch=2, length=6, seed=2):
    """`count` different world-model batches (obs, actions, rewards, terminations)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 256, (batch, length, 64, 64, 3), dtype=torch.uint8, generator=g),
             torch.randint(0, 18, (batch, length), generator=g), torch.randn(batch, length, generator=g),
             torch.zeros(batch, length)) for _ in range(count)]


def train(steps: UpdateSteps, data) -> list[dict]:
    """One world-model and one agent update per batch; every update's figures, kept to the end
    as the loop keeps them until it logs."""
    kept = []
    torch.manual_seed(3)
    for obs, actions, rewards, terminations in data:
        figures, finite = steps.world_model_update(obs, actions, rewards, terminations)
        agent_figures, agent_finite = steps.agent_update(obs[:, :4], actions[:, :4])
        kept.append({**figures, **agent_figures, "finite": finite & agent_finite})
    return kept


def test_hot_path_mode_follows_basic_settings_compile():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [hot_path_mode(None, cpu), hot_path_mode(None, cuda)] == ["eager", "compiled"]
    assert [hot_path_mode(False, cuda), hot_path_mode(True, cpu)] == ["eager", "compiled"]
    assert hot_path_mode("reduce-overhead", cpu) == "reduce-overhead"
    assert compose_config("STORM", ["BasicSettings.Compile=reduce-overhead"]).BasicSettings.Compile == "reduce-overhead"
    for bad, shown in (("fast", "'fast'"), ("1", "1"), ("max-autotune", "'max-autotune'")):
        with pytest.raises(ConfigError, match=f"BasicSettings.Compile={shown}: expected null, true, false or "
                                              "reduce-overhead"):
            compose_config("STORM", [f"BasicSettings.Compile={bad}"])
    with pytest.raises(ConfigError, match="Compile='reduce-overhead': expected null or false"):
        compose_config("REM", ["+BasicSettings.Compile=reduce-overhead"])   # REM has no graph mode


@pytest.mark.parametrize("prior", ["mlp", "maskgit"])
def test_graph_mode_on_cpu_gives_the_eager_numbers_for_every_kept_update(prior):
    """Five steps of different batches: every figure of every step, kept until the end, and the
    final weights and optimiser moments equal eager's exactly. Without the copy out of the
    output buffer all kept figures would be the last step's; without the copy into the input
    buffers every step would train on the first batch."""
    data = batches(5)
    eager_models, graph_models = models(prior), models(prior)
    eager = train(UpdateSteps(*eager_models, HORIZON, "eager"), data)
    graphed = train(UpdateSteps(*graph_models, HORIZON, "reduce-overhead"), data)
    assert len({float(step["world_model/total_loss"]) for step in eager}) == 5   # the steps differ
    for step, (expected, found) in enumerate(zip(eager, graphed)):
        assert expected.keys() == found.keys()
        for key, value in expected.items():
            assert torch.equal(found[key], value.float()) if key != "finite" else torch.equal(found[key], value), \
                (step, key)
    for eager_module, graph_module in zip(eager_models, graph_models):
        for (name, a), b in zip(eager_module.state_dict().items(), graph_module.state_dict().values()):
            assert torch.equal(a, b), name
        moments = zip(eager_module.optimizer.state.values(), graph_module.optimizer.state.values())
        assert all(torch.equal(a["exp_avg_sq"], b["exp_avg_sq"]) for a, b in moments)


def test_graph_mode_never_syncs_with_the_host_and_refuses_other_shapes():
    steps = UpdateSteps(*models("mlp"), HORIZON, "reduce-overhead")
    (obs, actions, rewards, terminations), = batches(1)
    names = ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__")
    with mock.patch.multiple(torch.Tensor, **{name: _forbidden(name) for name in names}):
        for _ in range(2):
            steps.world_model_update(obs, actions, rewards, terminations)
            steps.agent_update(obs[:, :4], actions[:, :4])
    assert isinstance(steps.world_model_update, GraphedUpdate)
    with pytest.raises(ValueError, match=r"world-model update: input 0 is \(1, 6, 64, 64, 3\) torch.uint8, but the "
                                         r"CUDA graph was built for \(2, 6, 64, 64, 3\) torch.uint8"):
        steps.world_model_update(obs[:1], actions[:1], rewards[:1], terminations[:1])


def test_train_py_in_graph_mode_on_cpu_trains_the_eager_weights(tmp_path):
    """train.py end to end with BasicSettings.Compile=reduce-overhead on CPU (the fallback) and with
    Compile=false: the same seed gives the same weights after 8 updates of each kind."""
    from test_train import run, train_command
    weights = {}
    for setting in ("false", "reduce-overhead"):
        run(train_command(tmp_path / setting, "BasicSettings.Device=cpu", f"BasicSettings.Compile={setting}",
                          "JointTrainAgent.SampleMaxSteps=40", "JointTrainAgent.SaveEverySteps=40",
                          "JointTrainAgent.VideoEverySteps=0", "BasicSettings.n=run"))
        weights[setting] = torch.load(tmp_path / setting / "saved_models" / "run" / "weights_40.pt", weights_only=False)
    for part in ("world_model", "agent"):
        for name, value in weights["false"][part].items():
            assert torch.equal(weights["reduce-overhead"][part][name], value), (part, name)
