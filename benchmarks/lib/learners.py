"""The benchmarks' learners: any trainable agent of :mod:`bow_gym.agent_registry`, trained on a
budget of expert answers and evaluated greedily.

A learner is named as on the command line: a registered name, optionally followed by
``:field=value`` overrides of its argument dataclass (``answer_model:updates_per_step=4``;
values are Python literals, anything else is a string), so an ablation is a list of names.
"""

from __future__ import annotations

import argparse
import ast
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from bow_gym.agent_registry import AGENT_REGISTRY, AgentSpec, list_agents
from bow_gym.cli import add_renamed_flag

#: Dice levels of NoC (clicks until Dice first reaches the level).
LEVELS = (0.80, 0.85, 0.90)


def learner_spec(spec: str) -> tuple[AgentSpec, dict[str, Any]]:
    """The registered agent of a learner spec and its trainer arguments: the variant's, then the
    ``:field=value`` overrides.

    Raises:
        SystemExit: naming the spec, on an unknown or untrainable agent, a malformed override,
            a field its trainer does not have, or a value its trainer would refuse (before any
            run starts, rather than inside a worker mid-run).
    """
    name, *overrides = spec.split(":")
    learners = list_agents(trainable=True)
    if name not in learners:
        raise SystemExit(f"--agents: unknown learner {name!r} in {spec!r}; choose from "
                         f"{', '.join(learners)}")
    agent = AGENT_REGISTRY[name]
    kwargs = dict(agent.kwargs)
    for item in overrides:
        key, eq, text = item.partition("=")
        if not eq or not key.isidentifier():
            raise SystemExit(f"--agents: {item!r} in {spec!r} is not field=value")
        try:
            kwargs[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            kwargs[key] = text
    cls = agent.args_class()
    fields = set(cls.__dataclass_fields__)
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise SystemExit(f"--agents: {spec!r} sets {unknown}, not arguments of {cls.__name__}; "
                         f"its arguments: {', '.join(sorted(fields))}")
    from agents.common import ArgumentValueError

    try:
        cls(**kwargs).validate()
    except ArgumentValueError as e:
        raise SystemExit(f"--agents: {spec!r}: {e}") from None
    return agent, kwargs


def learner_specs(text: str) -> list[str]:
    """The comma-separated ``--agents`` value as a list of checked specs (duplicates dropped)."""
    specs = list(dict.fromkeys(a for a in text.split(",") if a))
    for spec in specs:
        learner_spec(spec)
    return specs


def learners_help(default: str) -> str:
    """``--agents`` help: the default and every registered learner with its variant."""
    return (f"comma-separated learners (default {default}), each NAME or NAME:field=value:... "
            "(overrides of its arguments):\n" + "\n".join(
                f"  {name}: {AGENT_REGISTRY[name].args} {dict(AGENT_REGISTRY[name].kwargs)}"
                for name in list_agents(trainable=True)))


def is_reference(spec: str) -> bool:
    """Whether a learner spec trains on a reward that reads the ground truth (``reward=dice_gain``):
    a reference for diagnosing, never counted as the best learned agent."""
    return learner_spec(spec)[1].get("reward", "answer") != "answer"


def run_name(spec: str) -> str:
    """A folder name for a learner spec (``answer_model:width=32`` -> ``answer_model_width-32``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.replace("=", "-"))


def train_learner(spec: str, trainer_data: dict[str, Any], seed: int, answers: int, out: Path,
                  progress: bool):
    """A trained learner in evaluation mode (greedy, no online learning) and its learning curve.

    Args:
        spec: The learner spec.
        trainer_data: The data fields of its arguments (``data_configs(...)[name]["trainer"]``).
        seed: Training seed.
        answers: Training budget (``total_answers``).
        out: Its run folder.
        progress: Show its progress bar.
    """
    agent, kwargs = learner_spec(spec)
    policy, history = agent.train(total_answers=answers, seed=seed, out=str(out),
                                  progress=progress, **trainer_data, **kwargs)
    return policy.evaluation_mode(), history


def evaluate(policy, env, seed: int) -> dict[str, Any]:
    """Greedy evaluation on every image of ``env``'s data set, each from an empty mask: mean
    Dice after each click, share of "better" answers, NoC and the share reaching each level."""
    from bow_gym.policy import run_episode

    n = len(env.unwrapped.dataset)
    dice, better = [], []
    for i in range(n):
        rec = run_episode(env, policy, seed=seed * 100003 + i, options={"index": i})
        dice.append(rec.dice)
        better.extend(r > 0 for r in rec.rewards)
    d = np.asarray(dice)
    res: dict[str, Any] = {"dice": d.mean(0).tolist(), "better_share": float(np.mean(better))}
    for level in LEVELS:
        reached = d >= level
        first = np.where(reached.any(1), reached.argmax(1) + 1, d.shape[1] + 1)
        res[f"noc@{level:.2f}"] = float(first.mean())
        res[f"reached@{level:.2f}"] = float(reached.any(1).mean())
    return res


def clicks_to_90(clicks: list[int], reward: list[float], window: int = 10) -> float:
    """First click count where the smoothed reward covers 90% of its rise (nan if it never rises)."""
    r = np.convolve(reward, np.ones(window) / window, mode="valid")
    if len(r) < 2:
        return math.nan
    start = float(r[0])
    final = float(np.mean(reward[-max(1, len(reward) // 10):]))
    if final <= start:
        return math.nan
    hit = np.nonzero(r >= start + 0.9 * (final - start))[0]
    return float(clicks[int(hit[0]) + window - 1]) if hit.size else math.nan


def add_answers_argument(parser: argparse.ArgumentParser, default: int = 2000) -> None:
    """``--answers N``, the training budget in expert answers (``--clicks``: deprecated)."""
    parser.add_argument("--answers", type=int, default=default,
                        help=f"training budget of each learner: expert answers, one per click "
                             f"(default {default})")
    add_renamed_flag(parser, "--clicks", "--answers", "answers", type=int)
