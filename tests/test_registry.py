"""The agent registry: every registered agent is checked here, and a new one is picked up by the
multi-round loop, the CLI and the benchmarks from one ``register_agent`` line."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest
from _support import tiny_units

import bow_gym  # noqa: F401
from agents.common import TrainArgs, make_envs
from bow_gym.agent_registry import (
    AGENT_REGISTRY,
    agent_spec,
    list_agents,
    load_entry_point,
    make_agent,
    register_agent,
)
from bow_gym.envs.better_worse_seg import BetterWorseSegEnv
from bow_gym.policy import BatchedLearner, ClickPolicy, OnlineLearner

SMALL_ENV = {"dataset_kwargs": {"n_images": 4, "size": 64}, "obs_size": 64, "feature_cache": None}


# ------------------------------------------------------------------ every registered agent
@pytest.mark.parametrize("name", list_agents())
def test_every_agent_is_a_click_policy_with_consistent_arguments(name):
    spec = agent_spec(name)
    cls = spec.load()
    assert issubclass(cls, ClickPolicy)
    if spec.trainable:
        args = spec.args_class()
        assert issubclass(args, TrainArgs)
        fields = {f.name for f in dataclasses.fields(args)}
        assert set(spec.kwargs) <= fields, f"{name}: variant sets {set(spec.kwargs) - fields}"
        spec.training_args().validate()  # the variant's arguments pass the trainer's checks
    else:
        assert not spec.kwargs and not spec.needs_training
    # A learner that learns online also clicks in batches or has twins that share what it learns.
    if issubclass(cls, OnlineLearner) and not issubclass(cls, BatchedLearner):
        assert cls.fork is not ClickPolicy.fork


def _slow_if_variant(names: list[str]) -> list:
    """The names, variants (registered with keyword arguments) marked slow: every base agent
    runs in the quick suite, every variant in the full one."""
    return [pytest.param(n, marks=pytest.mark.slow) if AGENT_REGISTRY[n].kwargs else n
            for n in names]


@pytest.mark.parametrize("name", _slow_if_variant(list_agents(buildable=True)))
def test_every_buildable_agent_labels_a_round_in_lockstep(name):
    from bow_gym.rounds import label_round

    env = BetterWorseSegEnv(**SMALL_ENV)
    envs = [env] + [BetterWorseSegEnv(env.dataset, obs_size=64, feature_cache=None)]
    agent = make_agent(name, env, seed=0)
    assert isinstance(agent, ClickPolicy)
    labels = label_round(envs, agent, [3, 1, 0, 2], seed=0, progress=False)
    assert labels.ids == [env.dataset.ids[i] for i in (3, 1, 0, 2)]
    assert labels.rewards.shape == (4, env.clicks_per_episode)
    assert set(np.unique(labels.rewards)) <= {-1, 1}


def _trainers() -> list[str]:
    """One registered name per trainer (its first registration)."""
    first: dict[Any, str] = {}
    for name in list_agents(trainable=True):
        first.setdefault(AGENT_REGISTRY[name].trainer, name)
    return list(first.values())


def _train_tiny(name: str, tmp_path, **kwargs: Any):
    from benchmarks.lib.learners import evaluate, train_learner

    trainer_data = {"env_kwargs": {**SMALL_ENV, "feature_cache": None}, "limit": 4}
    policy, history = train_learner(name, {**trainer_data, **kwargs}, seed=0, answers=16,
                                    out=tmp_path / name, progress=False)
    assert history["clicks"][-1] >= 16 and len(history["reward"]) == len(history["clicks"])
    env = BetterWorseSegEnv(**SMALL_ENV)
    res = evaluate(policy, env, seed=0)
    assert len(res["dice"]) == env.clicks_per_episode and 0 <= res["better_share"] <= 1
    return policy


@pytest.mark.parametrize("name", _trainers())
def test_every_trainer_trains_and_evaluates_through_the_benchmark_path(name, tmp_path):
    _train_tiny(name, tmp_path, tensorboard=False)
    assert (tmp_path / name / "agent.safetensors").is_file()
    args = json.loads((tmp_path / name / "args.json").read_text())
    assert args["total_answers"] == 16 and args["out"] == str(tmp_path / name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in list_agents(trainable=True) if n not in _trainers()])
def test_every_registered_variant_trains(name, tmp_path):
    _train_tiny(name, tmp_path, tensorboard=False)


def test_unknown_and_untrained_agents_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown agent 'nope'; registered: random, gt"):
        make_agent("nope")
    with pytest.raises(ValueError, match="'ppo' is made by training it"):
        make_agent("ppo")
    with pytest.raises(ValueError, match="already registered"):
        register_agent("random", "agents.reference:RandomClicker")
    with pytest.raises(ValueError, match="give both args and trainer"):
        register_agent("half", "agents.reference:RandomClicker", args=TrainArgs)
    with pytest.raises(ValueError, match="not 'module:attr'"):
        load_entry_point("agents.reference.RandomClicker")
    with pytest.raises(ValueError, match=r"\['lr'\] are not arguments of agent 'random'|not trained"):
        agent_spec("random").training_args(lr=1.0)
    with pytest.raises(ValueError, match=r"\['bogus'\] are not arguments of agent 'reinforce'"):
        agent_spec("reinforce").training_args(bogus=1)


def test_renamed_training_budget_is_refused_in_python_and_deprecated_on_the_command_line(
        tmp_path):
    from agents.common import parse_cli
    from agents.reinforce import ReinforceArgs

    with pytest.raises(TypeError, match="'total_clicks' was renamed 'total_answers'"):
        ReinforceArgs(total_clicks=10)
    with pytest.warns(FutureWarning, match="--total-clicks is deprecated: use --total-answers"):
        args = parse_cli(ReinforceArgs, ["--total-clicks", "12"], "prog", None)
    assert args.total_answers == 12
    assert ReinforceArgs().run_folder().as_posix() == "runs/reinforce"


# ------------------------------------------------------------------ a new agent: one line
class ToyAgent(ClickPolicy):
    """Clicks the centre of the image with one label: enough to go through every path."""

    name: ClassVar[str] = "toy"

    def __init__(self, label: int = 1):
        self.label = label

    def act(self, obs, info, env, ground_truth=None) -> int:
        return env.encode_action(self.label, env.obs_size // 2, env.obs_size // 2)


@dataclass
class ToyArgs(TrainArgs):
    """The toy's trainer arguments: the shared ones and its label."""

    default_out: ClassVar[str] = "runs/toy"

    label: int = 1
    """the label it clicks"""


def train_toy(args: ToyArgs) -> tuple[ToyAgent, dict[str, list[float]]]:
    """"Trains" by clicking ``total_answers`` times and recording the answers."""
    args.validate()
    env = make_envs(args, 1)[0]
    agent = ToyAgent(args.label)
    history: dict[str, list[float]] = {"clicks": [], "reward": [], "better_share": []}
    obs, info = env.reset(seed=args.seed)
    for n in range(1, args.total_answers + 1):
        obs, r, term, trunc, info = env.step(agent.act(obs, info, env.unwrapped))
        history["clicks"].append(n)
        history["reward"].append(float(r))
        history["better_share"].append(float(r > 0))
        if term or trunc:
            obs, info = env.reset()
    return agent, history


@pytest.fixture
def toy():
    register_agent("toy", ToyAgent, args=ToyArgs, trainer=train_toy, kwargs={"label": 1})
    yield
    del AGENT_REGISTRY["toy"]


def test_a_registered_toy_agent_runs_through_benchmarks_rounds_and_cli(toy, tmp_path, capsys):
    from benchmarks.compare_policies import run_units
    from benchmarks.lib.learners import learner_spec
    from bow_gym.cli import build_parser
    from bow_gym.cli import main as cli
    from bow_gym.rounds import RoundsConfig, run_rounds

    # The benchmarks: a learner by name, with overrides, trained and evaluated beside the others.
    assert learner_spec("toy:label=0")[1] == {"label": 0}
    units = tiny_units(1)
    (rows, histories), = run_units(units, ["toy", "toy:label=0"], 12, tmp_path / "bench",
                                   {"agents": "toy"}, progress=False)
    assert [r["policy"] for r in rows] == ["random", "gt", "toy", "toy:label=0"]
    assert len(histories["toy"]["reward"]) == 12
    # The multi-round loop: built for the env from the registry (a reference agent: no weights).
    cfg = RoundsConfig(dataset="synthetic", dataset_kwargs={"n_images": 8, "size": 64},
                       rounds=1, clicks_per_image=2, agent="toy", label_envs=2,
                       segmenter_kwargs={"epochs": 1, "size": 64}, feature_cache=None,
                       progress=False, tensorboard=False, device="cpu", examples=2)
    rows = run_rounds(cfg, tmp_path / "rounds")
    assert {r["target"] for r in rows} >= {"pseudo", "prediction"}
    assert not (tmp_path / "rounds" / "round_01" / "agent.safetensors").exists()
    # The CLI offers it.
    assert "toy" in build_parser().parse_args(["rounds", "--agent", "toy"]).agent
    assert cli(["list"]) == 0
    assert "toy" in capsys.readouterr().out
