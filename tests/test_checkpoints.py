"""Checkpoints that do not fit are errors checked up front, naming the file, the field and what
was expected: another agent's file, overrides that change the network, damaged tensors, a network
sized for another env's observations (every registered agent), a segmenter file that does not
fit its own metadata."""

from __future__ import annotations

import pytest
import torch

import bow_gym  # noqa: F401
from agents.answer_model import AnswerModelAgent
from agents.reinforce import ReinforceAgent
from bow_gym.agent_registry import (
    agent_spec,
    checkpoint_kinds,
    list_agents,
    load_agent_checkpoint,
    make_agent,
)
from bow_gym.envs.better_worse_seg import BetterWorseSegEnv
from bow_gym.io_utils import load_tensors, save_tensors
from bow_gym.policy import OnlineLearner, run_episode

SMALL = {"dataset_kwargs": {"n_images": 3, "size": 64}, "obs_size": 64, "feature_cache": None}


def _env(**kwargs) -> BetterWorseSegEnv:
    return BetterWorseSegEnv(**{**SMALL, **kwargs})


@pytest.fixture(scope="module")
def dinov2_env() -> BetterWorseSegEnv:
    """Another backbone: random-initialised DINOv2 ViT-S, a 4 x 4 grid of 384-dim features."""
    from bow_gym.backbones import create_backbone

    bb = create_backbone("dinov2_vits14", pretrained=False, input_size=56, seed=0, device="cpu")
    return _env(backbone=bb)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A REINFORCE U-Net (4 channels), an answer model and an SB3 PPO policy, saved."""
    from agents.sb3 import SB3ClickPolicy, build_policy

    out = tmp_path_factory.mktemp("ckpt")
    env = _env()
    ReinforceAgent(4, seed=0).save(out / "reinforce.safetensors")
    am = AnswerModelAgent.for_env(env)
    run_episode(env, am, seed=0)  # sizes the lazy input layer
    am.save(out / "answer_model.safetensors")
    spec = {"obs_shape": [4, 64, 64], "n_actions": 2 * env.n_patches, "grid": list(env.grid),
            "width": 8, "channels": 2, "head": "patch", "obs": "pixels"}
    SB3ClickPolicy(build_policy("ppo", spec), "ppo", spec).save(out / "sb3.safetensors")
    return out


# ------------------------------------------------------------------ which agent wrote it
def test_every_checkpoint_kind_names_one_class():
    kinds = checkpoint_kinds()
    assert {"reinforce", "answer_model", "sb3"} <= set(kinds)
    for name in list_agents():
        kind = getattr(agent_spec(name).load(), "checkpoint_kind", None)
        assert kind is None or kind in kinds


@pytest.mark.parametrize("loader", ["reinforce", "answer_model", "sb3"])
@pytest.mark.parametrize("writer", ["reinforce", "answer_model", "sb3"])
def test_a_file_of_another_agent_is_refused_naming_its_writer(files, loader, writer):
    cls = checkpoint_kinds()[loader]
    path = files / f"{writer}.safetensors"
    if loader == writer:
        assert type(cls.load(path)) is cls
        return
    # Before: ReinforceAgent.load on an answer model's file raised TypeError ... 'grid'; the
    # SB3 loader said only "'algo'".
    writer_cls = checkpoint_kinds()[writer].__name__
    with pytest.raises(ValueError, match=rf"{writer}\.safetensors is not a bow-gym .* written "
                                         rf"by {writer_cls}.*{writer_cls}\.load"):
        cls.load(path)


def test_the_registry_loads_any_agent_checkpoint_by_its_kind(files, tmp_path):
    assert type(load_agent_checkpoint(files / "answer_model.safetensors")) is AnswerModelAgent
    assert load_agent_checkpoint(files / "reinforce.safetensors", greedy=True).greedy
    from bow_gym.segmenters import build_segmenter, preset, save_segmenter

    cfg = preset("light", size=32, pretrained=False)
    save_segmenter(build_segmenter(cfg), tmp_path / "seg.safetensors", cfg)
    with pytest.raises(ValueError, match=r"seg\.safetensors is not .*segmenter checkpoint.*"
                                         "load_segmenter"):
        load_agent_checkpoint(tmp_path / "seg.safetensors")
    from bow_gym.segmenters import load_segmenter

    with pytest.raises(ValueError, match=r"reinforce\.safetensors.*not a bow_gym segmenter.*"
                                         "'reinforce' agent checkpoint"):
        load_segmenter(files / "reinforce.safetensors")


# ------------------------------------------------------------------ overrides and shapes
@pytest.mark.parametrize("overrides, field", [
    ({"width": 32}, r"width=32 \(the file has 16\)"),
    ({"in_channels": 5}, r"in_channels=5 \(the file has 4\)"),
    ({"policy": "patches"}, r"policy='patches' \(the file has 'unet'\)"),
])
def test_reinforce_overrides_that_change_the_network(files, overrides, field):
    # Before: torch's raw "size mismatch for down.0.0.weight" RuntimeError, without the file.
    with pytest.raises(ValueError, match=rf"reinforce\.safetensors does not fit .*tensor.*"
                                         rf"Cause: the overrides {field} change the network"):
        ReinforceAgent.load(files / "reinforce.safetensors", **overrides)
    # acting options are overrides that keep the network
    agent = ReinforceAgent.load(files / "reinforce.safetensors", greedy=True, temperature=0.5)
    assert agent.greedy and agent.checkpoint == str(files / "reinforce.safetensors")


def test_answer_model_overrides_that_change_the_network(files):
    with pytest.raises(ValueError, match=r"answer_model\.safetensors does not fit .*width=8 "
                                         r"\(the file has 16\)"):
        AnswerModelAgent.load(files / "answer_model.safetensors", width=8)
    with pytest.raises(ValueError, match=r"belief='image' \(the file has 'features'\)"):
        AnswerModelAgent.load(files / "answer_model.safetensors", belief="image")
    with pytest.raises(TypeError, match=r"\['bogus'\] are not arguments of AnswerModelAgent"):
        AnswerModelAgent.load(files / "answer_model.safetensors", bogus=1)


def test_tensors_that_do_not_fit_the_files_own_hyperparameters(files, tmp_path):
    state, meta = load_tensors(files / "reinforce.safetensors", "x")
    state["head.weight"] = torch.zeros(2, 8, 1, 1)
    save_tensors(tmp_path / "altered.safetensors", state, meta)
    with pytest.raises(ValueError, match=r"altered\.safetensors does not fit .*'head\.weight' is "
                                         r"\(2, 8, 1, 1\) in the file, the network expects "
                                         r"\(2, 16, 1, 1\).*own hyper-parameters"):
        ReinforceAgent.load(tmp_path / "altered.safetensors")
    from agents.sb3 import SB3ClickPolicy

    state, meta = load_tensors(files / "sb3.safetensors", "x")
    del state[next(iter(state))]
    save_tensors(tmp_path / "sb3_altered.safetensors", state, meta)
    with pytest.raises(ValueError, match=r"sb3_altered\.safetensors does not fit .*1 tensors of "
                                         "the network are not in the file"):
        SB3ClickPolicy.load(tmp_path / "sb3_altered.safetensors")


def test_a_segmenter_file_that_does_not_fit_its_metadata(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from bow_gym.segmenters import build_segmenter, load_segmenter, preset, save_segmenter

    cfg = preset("light", size=32, pretrained=False)
    save_segmenter(build_segmenter(cfg), tmp_path / "seg.safetensors", cfg)
    with safe_open(str(tmp_path / "seg.safetensors"), "pt") as f:
        meta = dict(f.metadata())
        state = {k: f.get_tensor(k) for k in f.keys()}
    kwargs = json.loads(meta["model_kwargs"])
    wide = {k: v * 2 if isinstance(v, int) and not isinstance(v, bool) and v > 2 else v
            for k, v in kwargs.items()}
    assert wide != kwargs
    save_file(state, str(tmp_path / "wide.safetensors"),
              metadata={**meta, "model_kwargs": json.dumps(wide)})
    with pytest.raises(ValueError, match=r"wide\.safetensors' does not fit the .* architecture "
                                         r"its metadata describes \(model_kwargs=.*tensor '"):
        load_segmenter(tmp_path / "wide.safetensors")


# ------------------------------------------------------------------ fitting the env
def test_a_network_sized_for_other_observations_is_refused_before_acting(files):
    env5 = _env(include_clicks=True)
    agent = ReinforceAgent.load(files / "reinforce.safetensors")
    # Before: RuntimeError "Given groups=1, weight of size [16, 6, 3, 3] ... 7 channels" at the
    # first click.
    with pytest.raises(ValueError, match=r"reinforce agent loaded from .*reinforce\.safetensors "
                                         r"does not fit the env: .*in_channels\) 4, the env "
                                         r"gives 5 \(include_clicks=True"):
        run_episode(env5, agent, seed=0)
    from agents.sb3 import SB3ClickPolicy

    with pytest.raises(ValueError, match=r"sb3\.safetensors does not fit the env: .*pixels "
                                         r"observations of shape \(4, 64, 64\), the env gives "
                                         r"\(5, 64, 64\)"):
        run_episode(env5, SB3ClickPolicy.load(files / "sb3.safetensors"), seed=0)


def _online_learners() -> list[str]:
    return [n for n in list_agents(buildable=True) if agent_spec(n).learns_online()]


@pytest.mark.parametrize("name", _online_learners())
def test_check_env_passes_exactly_when_the_agent_can_act(name, tmp_path, monkeypatch,
                                                         dinov2_env):
    """For every registered learner, trained (sized) on one env and loaded back: ``check_env``
    refuses an env (another backbone: grid and feature size; the clicks channel) exactly when
    acting there would fail, so its input-size rules match what the agent really reads."""
    spec = agent_spec(name)
    env = _env()
    agent = make_agent(name, env, seed=0)
    run_episode(env, agent, seed=0)  # sizes lazy layers
    agent.check_env(env)
    assert isinstance(agent, OnlineLearner)
    agent.save(tmp_path / "a.safetensors")
    loaded = load_agent_checkpoint(tmp_path / "a.safetensors", **spec.kwargs)
    loaded.check_env(env)
    clicks_env = _env(include_clicks=True)
    for other in (dinov2_env, clicks_env):
        obs, info = other.reset(seed=0)
        try:
            loaded.check_env(other)
        except ValueError as e:
            assert "a.safetensors does not fit the env" in str(e)
            with monkeypatch.context() as m:  # without the check: the network's own error
                m.setattr(loaded, "check_env", lambda env: None)
                with pytest.raises((RuntimeError, ValueError, IndexError)):
                    loaded.act(obs, info, other)
        else:
            assert len(run_episode(other, loaded, seed=0).actions) == other.clicks_per_episode
    if name == "reinforce":  # the U-Net reads pixels only: any backbone fits, 5 channels do not
        loaded.check_env(dinov2_env)
        with pytest.raises(ValueError):
            loaded.check_env(clicks_env)
    else:  # the patch policies and every belief read the backbone's patches
        with pytest.raises(ValueError):
            loaded.check_env(dinov2_env)
