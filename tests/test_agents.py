import importlib
import math

import gymnasium as gym
import numpy as np
import pytest
from _support import OtherMasks

import bow_gym  # noqa: F401
from agents import (
    ClickPolicy,
    GreedyDiceClicker,
    GroundTruthClicker,
    RandomClicker,
    run_episode,
)
from agents.common import COUNT, SHARE, ArgumentValueError, Bound, TrainDataArgs, make_envs
from agents.reference import dice_after_clicks, largest_error_click
from bow_gym.agent_registry import make_agent
from bow_gym.datasets.synthetic import SyntheticDataset
from bow_gym.envs.better_worse_seg import EVAL_ONLY_KEY, BetterWorseSegEnv


def test_largest_error_click_known_answers():
    gt = np.zeros((21, 21), bool)
    gt[5:16, 5:16] = True
    assert largest_error_click(np.zeros_like(gt), gt) == (1, 10, 10)
    pred = gt.copy()
    pred[0:3, 0:21] = True  # a thin false positive band
    pred[8:13, 8:13] = False  # a 5x5 hole inside the lesion
    assert largest_error_click(pred, gt) == (1, 10, 10)
    pred[8:13, 8:13] = True
    assert largest_error_click(pred, gt)[0] == 0  # only the band is left
    assert largest_error_click(gt, gt) is None
    excl = np.zeros_like(gt)
    excl[8:13, 8:13] = True
    label, y, x = largest_error_click(np.zeros_like(gt), gt, exclude=excl)
    assert label == 1 and not excl[y, x]


def test_dice_after_clicks_known_answers():
    # 2 x 2 grid of 2 x 2-pixel patches; the lesion fills patch 0 and half of patch 1.
    gt = np.zeros((4, 4), bool)
    gt[0:2, 0:3] = True
    pred = np.zeros_like(gt)
    graph = np.eye(4, dtype=bool)
    graph[0, 1] = graph[1, 0] = True  # patches 0 and 1 propagate to each other
    d = dice_after_clicks(pred, gt, graph, (2, 2))
    assert d.shape == (2, 4)
    np.testing.assert_allclose(d[0], 0.0)  # background clicks on an empty mask
    # patch 0 or 1: 8 pixels with 6 true -> 2*6/(8+6); patch 2 or 3: 4 false pixels -> 0.
    np.testing.assert_allclose(d[1], [12 / 14, 12 / 14, 0.0, 0.0])
    pred[0:2, 0:2] = True  # patch 0 already foreground (Dice 2*4/(4+6))
    pred[3, 3] = True  # and one stray pixel in patch 3: partly filled patches count exactly
    d = dice_after_clicks(pred, gt, graph, (2, 2))
    np.testing.assert_allclose(d[0, 3], 8 / 10)  # removing the stray pixel
    np.testing.assert_allclose(d[0, 0], 0.0)  # clearing patches 0 and 1 leaves only the stray
    np.testing.assert_allclose(d[1, 2], 8 / 15)  # 4 + 4 + 1 pixels predicted, 4 true
    empty = np.zeros_like(gt)
    assert dice_after_clicks(empty, empty, graph, (2, 2))[0, 0] == 1.0  # both empty
    with pytest.raises(ValueError, match="tile"):
        dice_after_clicks(np.zeros((5, 4), bool), np.zeros((5, 4), bool), graph, (2, 2))


def test_dice_after_clicks_agrees_with_the_env():
    env = BetterWorseSegEnv(dataset_kwargs={"n_images": 3, "size": 96}, on_worse="keep",
                            feature_cache=None)
    rng = np.random.default_rng(0)
    for i in range(3):
        obs, _ = env.reset(options={"index": i})
        for _ in range(5):
            expected = dice_after_clicks(obs[3] > 127, env.ground_truth_for_evaluation(),
                                         env.propagation_graph(), env.grid)
            label, patch = int(rng.integers(2)), int(rng.integers(env.n_patches))
            r, c = divmod(patch, env.grid[1])
            y, x = r * env.cell[0] + 1, c * env.cell[1] + 1
            obs, _, _, _, info = env.step(env.encode_action(label, y, x))
            assert info[EVAL_ONLY_KEY]["dice"] == pytest.approx(expected[label, patch])


def test_greedy_dice_clicker_takes_the_best_click_and_beats_the_gt_clicker():
    env = gym.make("BetterWorseSeg-v0", dataset_kwargs={"n_images": 12})
    base = env.unwrapped
    finals = {}
    for policy in (GroundTruthClicker(), GreedyDiceClicker()):
        finals[policy.name] = np.mean([
            run_episode(env, policy, seed=i, options={"index": i}).final_dice for i in range(12)
        ])
    obs, _ = base.reset(options={"index": 0})
    best = dice_after_clicks(obs[3] > 127, base.ground_truth_for_evaluation(),
                             base.propagation_graph(), base.grid).max()
    rec = run_episode(env, GreedyDiceClicker(), options={"index": 0})
    assert rec.dice[0] == pytest.approx(best)
    assert all(b >= a for a, b in zip(rec.dice, rec.dice[1:], strict=False))  # never worse
    assert finals["gt_greedy"] > finals["gt"] + 0.03
    with pytest.raises(ValueError, match="ground_truth"):
        GreedyDiceClicker().act(obs, {}, base, ground_truth=None)


def test_gt_clicker_beats_random_clearly_on_synthetic():
    env = gym.make("BetterWorseSeg-v0", dataset_kwargs={"n_images": 12})
    finals = {}
    for policy in (RandomClicker(), GroundTruthClicker()):
        finals[policy.name] = np.mean([
            run_episode(env, policy, seed=i, options={"index": i}).final_dice for i in range(12)
        ])
    assert finals["gt"] > 0.6
    assert finals["gt"] > finals["random"] + 0.3


def test_random_clicker_is_seeded():
    env = gym.make("BetterWorseSeg-v0", dataset_kwargs={"n_images": 3})
    a = run_episode(env, RandomClicker(), seed=5).actions
    b = run_episode(env, RandomClicker(), seed=5).actions
    c = run_episode(env, RandomClicker(), seed=6).actions
    assert a == b and a != c


class _Spy(ClickPolicy):
    name = "spy"

    def __init__(self):
        self.seen = []

    def act(self, obs, info, env, ground_truth=None):
        self.seen.append((ground_truth, set(info)))
        return 0


def test_runner_hides_ground_truth_from_non_reference_policies():
    env = gym.make("BetterWorseSeg-v0", dataset_kwargs={"n_images": 2})
    spy = _Spy()
    run_episode(env, spy, seed=0)
    assert len(spy.seen) == 5
    assert all(gt is None and EVAL_ONLY_KEY not in keys for gt, keys in spy.seen)
    with pytest.raises(ValueError, match="ground_truth"):
        GroundTruthClicker().act(env.reset()[0], {}, env.unwrapped, ground_truth=None)




def test_random_policy_actions_do_not_depend_on_ground_truth():
    ds = SyntheticDataset(n_images=3, size=96)
    runs = []
    for data in (ds, OtherMasks(ds, 9, 0)):
        env = BetterWorseSegEnv(data, on_worse="keep", feature_cache=None)
        runs.append([run_episode(env, RandomClicker(), seed=s).actions for s in range(3)])
    assert runs[0] == runs[1]


def test_make_agent_builds_reference_policies_by_name():
    assert isinstance(make_agent("random", seed=1), RandomClicker)
    assert make_agent("gt").reads_ground_truth
    assert isinstance(make_agent("gt_greedy"), GreedyDiceClicker)
    assert GreedyDiceClicker.reads_ground_truth
    assert not RandomClicker.reads_ground_truth
    with pytest.raises(ValueError, match="unknown agent"):
        make_agent("oracle-peeker")


def test_render_frames_recorded():
    env = gym.make("BetterWorseSeg-v0", dataset_kwargs={"n_images": 2}, render_mode="rgb_array")
    rec = run_episode(env, GroundTruthClicker(), seed=0, render=True)
    assert len(rec.frames) == 6 and len(rec.dice) == 5
    assert rec.final_dice == rec.dice[-1] >= rec.initial_dice


# ------------------------------------------------------------------ argument validation
AGENT_CLIS = ("reinforce", "sb3", "answer_model")


def _run_cli(name: str, extra: list[str], out) -> None:
    """Run an agent's CLI on a tiny, fast setup, then ``extra`` (a later flag overrides an
    earlier one), so a value that is wrongly accepted trains briefly instead of for minutes."""
    argv = ["--total-answers", "8", "--num-envs", "2", "--limit", "2", "--width", "8",
            "--no-tensorboard", "--no-progress", "--out", str(out), *extra]
    importlib.import_module(f"agents.{name}").main(argv)


@pytest.mark.parametrize("name", AGENT_CLIS)
@pytest.mark.parametrize("flag, value, expected, shown", [
    ("--total-answers", "0", "must be an integer >= 1", "0"),
    ("--total-answers", "-5", "must be an integer >= 1", "-5"),
    ("--num-envs", "0", "must be an integer >= 1", "0"),
    ("--limit", "0", "must be an integer >= 1 or unset (all images of the split)", "0"),
    ("--lr", "0", "must be > 0", "0.0"),  # sb3 adds: or unset (the algorithm's default)
    ("--seed", "-1", "must be an integer >= 0", "-1"),
    ("--expert-margin", "-0.1", "must be >= 0", "-0.1"),
    ("--device", "gpu", "must be auto, cpu, cuda", "'gpu'"),
])
def test_agent_clis_refuse_bad_shared_arguments_before_writing(name, flag, value, expected, shown,
                                                               tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        _run_cli(name, [flag, value], out)
    assert exc.value.code == 2  # a usage error, not a crash
    err = capsys.readouterr().err
    assert f"usage: python -m agents.{name} " in err
    assert f"error: argument {flag}: {expected}" in err
    assert err.rstrip().endswith(f", got {shown}")
    assert "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("name, extra, expected", [
    ("reinforce", ["--temperature", "0"], "argument --temperature: must be > 0, got 0.0"),
    ("reinforce", ["--ema-decay", "1.5"], "argument --ema-decay: must be in [0, 1], got 1.5"),
    ("reinforce", ["--gamma", "nan"], "argument --gamma: must be in [0, 1], got nan"),
    ("reinforce", ["--aux-steps", "0"], "argument --aux-steps: must be an integer >= 1, got 0"),
    ("reinforce", ["--aux-coef", "1"], "argument --aux-coef: needs policy='belief'"),
    ("answer_model", ["--epsilon", "1.5"], "argument --epsilon: must be in [0, 1], got 1.5"),
    ("answer_model", ["--updates-per-step", "0"], "argument --updates-per-step: must be an "
                                                  "integer >= 1, got 0"),
    ("answer_model", ["--batch-size", "0"], "argument --batch-size: must be an integer >= 1"),
    ("answer_model", ["--buffer-size", "4"], "argument --buffer-size: must be >= batch_size (32)"),
    ("answer_model", ["--prior-weight", "0"], "argument --prior-weight: must be > 0, got 0.0"),
    ("answer_model", ["--posterior-steps", "-1"], "argument --posterior-steps: must be an "
                                                  "integer >= 0, got -1"),
    ("sb3", ["--exploration-final-eps", "1.5"], "argument --exploration-final-eps: must be in "
                                                "[0, 1], got 1.5"),
    ("sb3", ["--n-epochs", "0"], "argument --n-epochs: must be an integer >= 1, got 0"),
    ("sb3", ["--batch-size", "1"], "argument --batch-size: must be >= 2 for ppo"),
    ("sb3", ["--num-envs", "1", "--n-steps", "1"], "argument --n-steps: must be >= 2 for ppo"),
    ("sb3", ["--channels", "1"], "argument --channels: must be an integer >= 2, got 1"),
    ("sb3", ["--algo", "dqn", "--buffer-size", "0"], "argument --buffer-size: must be an "
                                                     "integer >= 1, got 0"),
    ("sb3", ["--algo", "dqn", "--obs", "belief"], "argument --obs: 'belief' needs algo 'ppo'"),
])
def test_agent_clis_refuse_nonsense_hyperparameters_before_writing(name, extra, expected,
                                                                   tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        _run_cli(name, extra, out)
    assert exc.value.code == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()


def _trainer(name: str):
    """The argument dataclass and training function of an agent."""
    if name == "reinforce":
        from agents.reinforce import ReinforceArgs, train

        return ReinforceArgs, train
    if name == "sb3":
        from agents.sb3 import SB3Args, train_sb3

        return SB3Args, train_sb3
    from agents.answer_model import AnswerModelArgs, train

    return AnswerModelArgs, train


@pytest.mark.parametrize("name", AGENT_CLIS)
@pytest.mark.parametrize("field, value, message", [
    ("total_answers", 0, "total_answers must be an integer >= 1, got 0"),
    ("num_envs", 0, "num_envs must be an integer >= 1, got 0"),
    ("limit", 0, "limit must be an integer >= 1 or unset"),
    ("total_answers", 2.5, "total_answers must be an integer >= 1, got 2.5"),
])
def test_trainers_refuse_bad_arguments_before_writing(name, field, value, message, tmp_path):
    args_cls, train = _trainer(name)
    out = tmp_path / "run"
    args = args_cls(out=str(out), progress=False, tensorboard=False, **{field: value})
    with pytest.raises(ArgumentValueError, match=message) as exc:
        train(args)
    assert exc.value.name == field and exc.value.flag == "--" + field.replace("_", "-")
    assert not out.exists()


def test_make_envs_refuses_fewer_than_one_env():
    # It used to build one env for any n < 1.
    for n in (0, -3):
        with pytest.raises(ArgumentValueError, match=f"num_envs must be an integer >= 1, got {n}"):
            make_envs(TrainDataArgs(), n)


def test_bound_admits_and_describes_its_values():
    assert COUNT.admits(1) and COUNT.admits(np.int64(3))
    assert not any(COUNT.admits(v) for v in (0, -1, 2.0, True, None, "3"))
    assert SHARE.admits(0) and SHARE.admits(1.0) and SHARE.admits(0.5)
    assert not any(SHARE.admits(v) for v in (-0.01, 1.01, math.nan, None))
    assert COUNT.expected() == "an integer >= 1" and SHARE.expected() == "in [0, 1]"
    lr = Bound(0, low_open=True, unset="the default")
    assert lr.admits(None) and lr.admits(1e-9) and not lr.admits(0.0) and not lr.admits(math.nan)
    assert lr.expected() == "> 0 or unset (the default)"
    assert Bound(0, 1, low_open=True).expected() == "in (0, 1]"


@pytest.mark.parametrize("name", AGENT_CLIS)
def test_agent_cli_help_names_the_module_and_each_default_once(name, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "400")  # one help entry per line, so duplicates share a line
    with pytest.raises(SystemExit) as exc:
        importlib.import_module(f"agents.{name}").main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: python -m agents.{name} [-h] [OPTIONS]")
    assert "(unset: the env's synthetic data) (default: None)" in text
    assert not [line for line in text.splitlines() if line.count("(default") > 1]
