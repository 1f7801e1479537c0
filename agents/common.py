"""What every learning agent shares: its arguments (the data it trains on, the training budget
and the run), how its envs are built, its training log and its checkpoints."""

from __future__ import annotations

import contextlib
import json
import numbers
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

from bow_gym.io_utils import (
    load_tensors,
    read_tensor_metadata,
    save_tensors,
    state_mismatches,
    write_json,
)


class ArgumentValueError(ValueError):
    """An agent argument whose value cannot work, refused before anything is built or written.

    The message names the field as Python does (``total_answers must be >= 1, got 0``);
    :attr:`usage_message` names it as the command line does (``--total-answers``).

    Args:
        name: The argument's field name.
        reason: What is wrong with it, to follow the name (``"must be >= 1, got 0"``).
    """

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name} {reason}")
        self.name, self.reason = name, reason

    @property
    def flag(self) -> str:
        """The argument's command-line flag (tyro spells ``total_answers`` ``--total-answers``)."""
        return "--" + self.name.replace("_", "-")

    @property
    def usage_message(self) -> str:
        """The error as a command-line usage error, in argparse's form."""
        return f"argument {self.flag}: {self.reason}"


@dataclass(frozen=True)
class Bound:
    """The values a numeric argument may take.

    Args:
        low: Smallest value allowed (``None``: no lower bound).
        high: Largest value allowed (``None``: no upper bound).
        low_open: ``low`` itself is refused (``> low`` rather than ``>= low``).
        integer: Only whole numbers.
        unset: What ``None`` means for this argument (``None``: it is refused).
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    integer: bool = False
    unset: str | None = None

    def admits(self, value: Any) -> bool:
        """Whether ``value`` is allowed (NaN never is)."""
        if value is None:
            return self.unset is not None
        kind = numbers.Integral if self.integer else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind):
            return False
        # Written so that NaN, for which every comparison is False, fails them.
        if self.low is not None and not (value > self.low if self.low_open else value >= self.low):
            return False
        return self.high is None or value <= self.high

    def expected(self) -> str:
        """What the argument may be, for an error message (``an integer >= 1``)."""
        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {self.low:g}"
        elif self.high is not None:
            text = f"<= {self.high:g}"
        else:
            text = "a number"
        if self.integer:
            text = "an integer" if text == "a number" else f"an integer {text}"
        if self.unset is not None:
            text += f" or unset ({self.unset})"
        return text


#: At least one (answers, envs, steps, batch sizes).
COUNT = Bound(1, integer=True)
#: Zero or more (0 usually turns something off).
NON_NEGATIVE_COUNT = Bound(0, integer=True)
#: Strictly positive (learning rates, temperatures, prior weights).
POSITIVE = Bound(0, low_open=True)
#: Zero or more (weights of loss terms, margins).
NON_NEGATIVE = Bound(0)
#: A share or probability in [0, 1] (discounts, epsilons, decays).
SHARE = Bound(0, 1)


#: Argument fields that were renamed: old name -> new name. The old name is refused in Python
#: (naming the new one) and deprecated on the command line (:func:`parse_cli`).
RENAMED_FIELDS: dict[str, str] = {"total_clicks": "total_answers"}


@dataclass
class TrainDataArgs:
    """Training data of an agent (the first fields of every agent's argument dataclass).

    :meth:`validate` checks every field named in :attr:`bounds`; the agents' argument dataclasses
    add their own fields to it and their cross-field checks to :meth:`validate`.
    """

    def __new__(cls, *args: Any, **kwargs: Any):
        # Before the dataclass's __init__, which would only say "unexpected keyword argument".
        for old, new in RENAMED_FIELDS.items():
            if old in kwargs:
                raise TypeError(f"{cls.__name__}: {old!r} was renamed {new!r} (the training "
                                "budget counts the expert's answers)")
        return super().__new__(cls)

    #: Allowed values of numeric fields, by name. Fields of the same name mean the same in every
    #: agent, so one entry covers all the agents that have the field.
    bounds: ClassVar[dict[str, Bound]] = {
        "limit": Bound(1, integer=True, unset="all images of the split"),
        "expert_margin": NON_NEGATIVE,
        "total_answers": COUNT,
        "num_envs": COUNT,
        "lr": POSITIVE,
        "gamma": SHARE,
        "width": COUNT,
        "batch_size": COUNT,
        "buffer_size": COUNT,
        "posterior_steps": NON_NEGATIVE_COUNT,
        "aux_coef": NON_NEGATIVE,
        "aux_steps": COUNT,
        "seed": NON_NEGATIVE_COUNT,  # numpy and gymnasium refuse negative seeds
    }

    env_id: str = "BetterWorseSeg-v0"
    """registered env id"""
    dataset: str | None = None
    """data set name (unset: the env's synthetic data)"""
    root: str | None = None
    """data set folder, for file-based data sets"""
    split: str = "train"
    """which part of a seeded 80/20 split to train on: train, test or all (fit and val: the train
    part split 80/20 again, for model selection away from the test part)"""
    limit: int | None = None
    """use only the first N images of that part (unset: all of them)"""
    backbone: str | None = None
    """backbone name (unset: the env's lab_texture)"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """extra gym.make keyword arguments"""
    expert_margin: float = 0.0
    """the training expert answers "better" only for a Dice gain above this (0: the method's Dice
    oracle; > 0: :class:`~bow_gym.oracles.MarginOracle`, a stricter expert); evaluation is not
    affected"""
    reward: str = "answer"
    """answer (the expert's +1/-1: the method) or dice_gain (5 x the Dice gain of the step,
    :class:`~bow_gym.wrappers.DiceGainReward`; reads the ground truth: a reference for
    diagnosing an agent's learning, never a result of the method)"""

    def validate(self) -> None:
        """Refuse argument values that cannot work, before anything is built or written.

        Raises:
            ArgumentValueError: For the first bad field: its name, its value and what it may be.
        """
        for f in fields(self):
            bound = self.bounds.get(f.name)
            value = getattr(self, f.name)
            if bound is not None and not bound.admits(value):
                raise ArgumentValueError(f.name, f"must be {bound.expected()}, got {value!r}")
        if self.reward not in ("answer", "dice_gain"):
            raise ArgumentValueError("reward", f"must be 'answer' or 'dice_gain', got "
                                               f"{self.reward!r}")
        if self.expert_margin > 0 and "oracle" in self.env_kwargs:
            raise ArgumentValueError("expert_margin", "sets the training oracle: do not also pass "
                                     f"env_kwargs['oracle'] ({self.env_kwargs['oracle']!r})")
        device = getattr(self, "device", "auto")
        if device != "auto":
            try:
                torch.device(device)
            except (RuntimeError, TypeError, ValueError):
                raise ArgumentValueError("device", "must be auto, cpu, cuda or another torch "
                                                   f"device such as cuda:1, got {device!r}") from None


@dataclass
class TrainArgs(TrainDataArgs):
    """What every trainer shares: the training data, the budget and the run.

    The agents' argument dataclasses (``ReinforceArgs``, ``AnswerModelArgs``, ``SB3Args``)
    subclass it and add only their own fields, CleanRL style. The benchmarks set these fields
    alike for every registered trainer (:mod:`bow_gym.agent_registry`).
    """

    #: Run folder when :attr:`out` is unset (:meth:`run_folder`).
    default_out: ClassVar[str] = "runs/agent"

    total_answers: int = 2000
    """training budget: expert answers (one per click, i.e. env step), over all envs"""
    num_envs: int = 8
    """envs stepped in lockstep, one click each per step"""
    seed: int = 0
    """seed of torch, numpy, the envs and the agent's own randomness"""
    device: str = "auto"
    """auto, cpu or cuda"""
    out: str | None = None
    """run folder: checkpoint, arguments, learning curve, TensorBoard logs (unset: runs/<agent>)"""
    tensorboard: bool = True
    """write TensorBoard logs to <out>/tb"""
    progress: bool = True
    """show a progress bar"""
    vector_env: str = "native"
    """how the num_envs envs are stepped: native (the env's batched vector env) or sync
    (Gymnasium's SyncVectorEnv of single envs); both give the same training under a seed"""

    #: Values :attr:`vector_env` may take.
    vector_kinds: ClassVar[tuple[str, ...]] = ("native", "sync")

    def run_folder(self) -> Path:
        """Where the run is written: :attr:`out`, or the agent's default folder."""
        return Path(self.out if self.out is not None else self.default_out)

    def validate(self) -> None:
        """:meth:`TrainDataArgs.validate` and the choice of :attr:`vector_env`.

        Raises:
            ArgumentValueError: For the first bad field.
        """
        super().validate()
        if self.vector_env not in self.vector_kinds:
            raise ArgumentValueError("vector_env", f"must be one of {list(self.vector_kinds)}, "
                                                   f"got {self.vector_env!r}")


ArgsT = TypeVar("ArgsT", bound=TrainDataArgs)
T = TypeVar("T")


def parse_cli(cls: type[ArgsT], argv: Sequence[str] | None, prog: str,
              description: str | None) -> ArgsT:
    """An agent's arguments from its command line, validated.

    Args:
        cls: The agent's argument dataclass.
        argv: The arguments (``None``: ``sys.argv[1:]``).
        prog: How the command is run, for the usage line (``python -m agents.reinforce``).
        description: The help text above the options.

    Returns:
        The parsed arguments, which passed :meth:`TrainDataArgs.validate`.

    Raises:
        SystemExit: With status 2 and a usage error naming the flag, for a refused value (as
            for a value tyro cannot parse), before anything is written.
    """
    import argparse
    import sys

    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    for i, item in enumerate(argv):
        for old, new in RENAMED_FIELDS.items():
            flag, new_flag = "--" + old.replace("_", "-"), "--" + new.replace("_", "-")
            if item == flag or item.startswith(flag + "="):
                warnings.warn(f"{flag} is deprecated: use {new_flag}", FutureWarning,
                              stacklevel=2)
                argv[i] = new_flag + item[len(flag):]
    args = tyro.cli(cls, args=argv, prog=prog, description=description)
    try:
        args.validate()
    except ArgumentValueError as e:
        # argparse's own usage-error form and exit status 2: a refused value is a mistake in the
        # command line, not a crash, so it gets no traceback.
        argparse.ArgumentParser(prog=prog, usage="%(prog)s [-h] [OPTIONS]",
                                add_help=False).error(e.usage_message)
    return args


def make_envs(args: TrainDataArgs, n: int) -> list:
    """``n`` envs on the training data, without ground truth in their ``info``.

    The envs share one data set, backbone and feature cache, so each image is featurised once.

    Raises:
        ArgumentValueError: If ``args`` fails :meth:`TrainDataArgs.validate` or ``n < 1``.
    """
    import gymnasium as gym

    from bow_gym.wrappers import DiceGainReward, StripEvalInfo

    kwargs = training_env_kwargs(args, n)
    first = gym.make(args.env_id, **kwargs)
    base = first.unwrapped
    shared = {**kwargs, "dataset": base.dataset, "backbone": base.backbone, "root": None,
              "dataset_kwargs": None, "backbone_kwargs": None}
    envs = [first] + [gym.make(args.env_id, **shared) for _ in range(n - 1)]
    if args.reward == "dice_gain":
        return [StripEvalInfo(DiceGainReward(e)) for e in envs]
    return [StripEvalInfo(e) for e in envs]


def make_vector_env(args: TrainArgs, n: int) -> tuple[Any, list]:
    """``n`` envs on the training data as one vector env with same-step autoreset (a finished
    episode's step returns the next episode's first observation), without ground truth in its
    ``info`` (observations are fresh arrays each step, ``copy=True``: agents keep them); and one
    read-only view per sub-env of what agents read of a single env (its
    geometry, current features and propagation graph).

    Args:
        args: The data, env and reward arguments (as :func:`make_envs`) and ``vector_env``:
            ``native``, the batched :class:`~bow_gym.envs.vector.BetterWorseSegVectorEnv` (the
            spec's ``vector_entry_point``; views are its :meth:`sub_env`), or ``sync``,
            Gymnasium's ``SyncVectorEnv`` over :func:`make_envs` (views are the single envs).
            Both give the same episodes, answers and rewards under the same seeds.
        n: Sub-envs.

    Raises:
        ArgumentValueError: As :func:`make_envs` (``vector_env`` included).
    """
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    from bow_gym.wrappers import DiceGainRewardVector, StripEvalInfoVector

    kwargs = training_env_kwargs(args, n)  # checks args, vector_env included
    if args.vector_env == "sync":
        envs = make_envs(args, n)
        venv = SyncVectorEnv([lambda e=e: e for e in envs],
                             autoreset_mode=AutoresetMode.SAME_STEP)
        return venv, [e.unwrapped for e in envs]
    venv = gym.make_vec(args.env_id, num_envs=n, vectorization_mode="vector_entry_point",
                        autoreset_mode=AutoresetMode.SAME_STEP, **kwargs)
    base = venv.unwrapped
    views = [base.sub_env(i) for i in range(n)]
    if args.reward == "dice_gain":
        venv = DiceGainRewardVector(venv)
    return StripEvalInfoVector(venv), views


def training_env_kwargs(args: TrainDataArgs, n: int) -> dict[str, Any]:
    """The env's keyword arguments from the training arguments (checked)."""
    import bow_gym  # noqa: F401  (registers the envs)

    args.validate()
    if not COUNT.admits(n):
        # n is every caller's num_envs; a list of envs would hold one env for any n < 1.
        raise ArgumentValueError("num_envs", f"must be {COUNT.expected()}, got {n!r}")
    kwargs: dict[str, Any] = dict(args.env_kwargs)
    if args.expert_margin > 0:
        kwargs["oracle"] = "margin"
        kwargs["oracle_kwargs"] = {"delta": float(args.expert_margin)}
    for key in ("dataset", "root", "backbone"):
        if getattr(args, key):
            kwargs[key] = getattr(args, key)
    ds_kwargs = dict(kwargs.pop("dataset_kwargs", None) or {})
    if args.split != "all":
        ds_kwargs["split"] = args.split
    if args.limit is not None:  # validate() refused 0, which a truthiness test read as "all"
        ds_kwargs["limit"] = args.limit
    if ds_kwargs:
        kwargs["dataset_kwargs"] = ds_kwargs
    return kwargs


class TrainingLog:
    """What an offline agent trainer records: learning curve, TensorBoard, progress bar, files.

    Args:
        args: The trainer's arguments: run folder (created; TensorBoard logs go to
            ``<out>/tb``), budget (the length of the progress bar), ``tensorboard`` (skipped
            with a hint if tensorboard is missing) and ``progress``.
        desc: Progress-bar label.
    """

    def __init__(self, args: TrainArgs, desc: str):
        from tqdm.auto import tqdm

        self.out = args.run_folder()
        tensorboard, progress = args.tensorboard, args.progress
        self.out.mkdir(parents=True, exist_ok=True)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.out / "tb"))
            except ImportError:
                print("tensorboard is not installed (pip install tensorboard): logging to CSV only")
        self.history: dict[str, list[float]] = {"clicks": [], "reward": [], "better_share": []}
        self.t0 = time.time()
        self.bar = tqdm(total=args.total_answers, desc=desc, unit="answer", disable=not progress)

    def step(self, clicks: int, rewards: list[float], stats: dict[str, float]) -> None:
        """Record one lockstep of answered clicks (``clicks``: total so far)."""
        mean_r = float(np.mean(rewards))
        h = self.history
        h["clicks"].append(clicks)
        h["reward"].append(mean_r)
        h["better_share"].append(float(np.mean(np.array(rewards) > 0)))
        if self.writer is not None:
            self.writer.add_scalar("charts/reward", mean_r, clicks)
            self.writer.add_scalar("charts/better_share", h["better_share"][-1], clicks)
            self.writer.add_scalar("charts/clicks_per_s", clicks / (time.time() - self.t0), clicks)
            for k, v in stats.items():
                self.writer.add_scalar(k, v, clicks)
        self.bar.update(len(rewards))
        self.bar.set_postfix(reward=f"{np.mean(h['reward'][-25:]):+.2f}")

    def finish(self, agent: Any, args: Any) -> dict[str, list[float]]:
        """Close the logs; write ``agent.safetensors``, ``args.json``, ``history.json``."""
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
        agent.save(self.out / "agent.safetensors")
        write_json(self.out / "args.json", {**asdict(args), "out": str(self.out)})
        write_json(self.out / "history.json", self.history)
        return self.history


def summary_line(history: dict[str, list[float]], out: str | Path) -> str:
    """The line an agent's CLI prints after training."""
    last = history["reward"][-max(1, len(history["reward"]) // 10):]
    return (f"trained {history['clicks'][-1]} clicks; mean reward over the last 10%: "
            f"{np.mean(last):+.3f}; checkpoint {Path(out) / 'agent.safetensors'}")


# ---------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | os.PathLike, state: Mapping[str, torch.Tensor],
                    metadata: Mapping[str, str], net: nn.Module | None = None,
                    unsized: str = "the network") -> None:
    """An agent's weights as safetensors (atomic), its hyper-parameters in the metadata.

    Args:
        path: The file.
        state: The tensors.
        metadata: String metadata (``agent``, ``hparams`` as JSON, ...).
        net: The network, checked to have read an input already (lazy layers have no size
            before that).
        unsized: What has not read an input yet, for the error (``"the patch policy"``).

    Raises:
        ValueError: ``net`` still has lazy, uninitialised parameters.
    """
    if net is not None and any(isinstance(t, nn.parameter.UninitializedParameter)
                               for t in net.parameters()):
        raise ValueError(f"cannot save to {path}: {unsized} has not read any image yet, so "
                         "its input size is unknown")
    save_tensors(path, state, metadata)


def load_checkpoint(path: str | os.PathLike, what: str, device: str = "cpu", *,
                    agent: str | None = None, keys: Sequence[str] = (),
                    json_keys: Sequence[str] = ()
                    ) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, Any]]:
    """The tensors, metadata and JSON-decoded metadata fields of a :func:`save_checkpoint` file.

    Args:
        path: The file.
        what: What it should be, for the errors (``"REINFORCE checkpoint"``).
        device: Where the tensors are loaded.
        agent: The ``agent`` metadata it must name, i.e. which agent class wrote it (``None``:
            not checked).
        keys: Metadata fields it must have.
        json_keys: Metadata fields decoded as JSON into the third value.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: Not such a checkpoint (unreadable, truncated, another agent's or a
            segmenter's, a field missing); the message names the file and, for another kind of
            checkpoint, what wrote it and what loads it.
    """
    meta = read_tensor_metadata(path, what)
    if agent is not None and meta.get("agent") != agent:
        from bow_gym.agent_registry import describe_checkpoint

        raise ValueError(f"{path} is not a bow-gym {what}: it is {describe_checkpoint(meta)}")
    state, meta = load_tensors(path, what, device)
    missing = [key for key in (*keys, *json_keys) if key not in meta]
    if missing:
        raise ValueError(f"{path} is not a bow-gym {what}: its metadata lacks {missing}")
    decoded = {}
    for key in json_keys:
        try:
            decoded[key] = json.loads(meta[key])
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not a bow-gym {what}: its metadata field {key!r} is "
                             f"not JSON ({e})") from e
    return state, meta, decoded


def agent_from_checkpoint(cls: type[T], path: str | os.PathLike, hparams: Mapping[str, Any],
                          overrides: Mapping[str, Any], **extra: Any) -> T:
    """``cls(**hparams, **overrides, **extra)``, the hyper-parameters read from ``path``.

    Args:
        cls: The agent class whose checkpoint ``path`` is (its kind already checked).
        path: The file, for the errors.
        hparams: The file's hyper-parameters (its ``hparams`` metadata).
        overrides: The caller's changes (acting options such as ``greedy``, or the multi-round
            loop's ``online_batch``); :func:`load_state_checked` tells which of them changed
            the network if the weights then do not fit.
        extra: Further constructor arguments (``device``).

    Raises:
        TypeError: An override that is not an argument of ``cls`` (naming it and the arguments).
        ValueError: A stored hyper-parameter that is not an argument of ``cls`` (a file of
            another version), naming the file and the field.
    """
    import inspect

    names = {n for n, p in inspect.signature(cls).parameters.items()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"{cls.__name__}.load({str(path)!r}): {unknown} are not arguments of "
                        f"{cls.__name__}; its arguments: {', '.join(sorted(names))}")
    foreign = sorted(set(hparams) - names)
    if foreign:
        raise ValueError(f"{path}: its hparams {foreign} are not arguments of {cls.__name__} "
                         "(a file written by another version of the agent)")
    return cls(**{**hparams, **overrides}, **extra)


def load_state_checked(module: nn.Module, state: Mapping[str, torch.Tensor],
                       path: str | os.PathLike, what: str, *,
                       hparams: Mapping[str, Any] | None = None,
                       overrides: Mapping[str, Any] | None = None) -> None:
    """``module.load_state_dict(state)``, once every tensor's name and shape is checked to fit.

    torch's own error lists every mismatch without the file's name or its cause; this one names
    the file, the first tensors that do not fit (shape in the file, shape the network expects)
    and why: overrides that changed the network (``width=32`` where the file has 16), or else a
    file whose tensors do not match its own hyper-parameters (damaged, or another version).
    Lazy parameters (input size not known yet) take any shape.

    Args:
        module: The network built from the file's hyper-parameters and ``overrides``.
        state: The file's tensors for ``module``.
        path: The file, for the error.
        what: What it is (``"REINFORCE checkpoint"``).
        hparams: The file's hyper-parameters.
        overrides: The caller's changes to them.

    Raises:
        ValueError: A tensor missing, unexpected or of another shape.
    """
    problems = state_mismatches(module.state_dict(), state)
    if not problems:
        module.load_state_dict(state)
        return
    stored = dict(hparams or {})
    changed = {k: v for k, v in (overrides or {}).items() if k in stored and stored[k] != v}
    if changed:
        cause = ("the overrides " + ", ".join(f"{k}={v!r} (the file has {stored[k]!r})"
                                             for k, v in changed.items())
                 + " change the network: drop them to load the weights as they were saved")
    else:
        cause = ("the tensors do not match the network the file's own hyper-parameters "
                 "describe (a damaged file, or one written by another version)")
    shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3
                                        else "")
    raise ValueError(f"{path} does not fit the {what}'s network: {shown}. Cause: {cause}")


def check_env_fits(agent: Any, checks: Mapping[str, tuple[Any, Any, str]]) -> None:
    """Refuse an env whose observation does not fit an agent's network (``check_env``).

    Args:
        agent: The agent; its ``checkpoint`` attribute, when set, names the file it came from.
        checks: ``what -> (the agent's value, the env's value, where the env's comes from)``;
            an agent value of ``None`` (a lazy layer not sized yet) fits anything.

    Raises:
        ValueError: The first mismatch, naming the agent (and its file), what differs, both
            values and the env setting behind the env's.
    """
    for what, (mine, env_value, source) in checks.items():
        if mine is not None and mine != env_value:
            name = getattr(agent, "name", type(agent).__name__)
            where = getattr(agent, "checkpoint", None)
            src = f"the {name} agent" + (f" loaded from {where}" if where else "")
            raise ValueError(f"{src} does not fit the env: it was built for {what} {mine!r}, "
                             f"the env gives {env_value!r} ({source})")


def lazy_init_seed() -> int:
    """A seed for a network's lazy layers, drawn from torch's RNG when the network is built.

    Lazy layers draw their weights at the first input; under :func:`seeded_lazy_init` they draw
    them from this seed, so the network is a function of the RNG state at construction (which
    the agents seed) and not of whatever the global RNG holds when the first input arrives
    (which depends on all that ran before: other runs in the process, the data set, ...).
    """
    return int(torch.randint(2**62, ()).item())


@contextlib.contextmanager
def seeded_lazy_init(lazy: bool, seed: int) -> Iterator[None]:
    """Run a forward pass with torch's RNG seeded with ``seed`` (restored afterwards) if it
    initialises lazy layers (``lazy``); otherwise leave the RNG alone."""
    if not lazy:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class PatchMLP(nn.Module):
    """One small MLP applied alike to every patch's input row: ``(B, P, D) -> (B, P, hidden)``.

    The input size is inferred on the first call (lazy layers), so one agent serves any
    backbone, and inputs are standardised by running statistics (no learned affine). ``head``
    maps each patch to ``outputs`` values and starts at zero (an untrained network is neutral:
    a uniform policy, a belief of 0.5); subclasses decide what the outputs mean.
    """

    def __init__(self, hidden: int, outputs: int):
        super().__init__()
        self.norm = nn.LazyBatchNorm1d(affine=False)
        self.body = nn.Sequential(nn.LazyLinear(hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                  nn.SiLU())
        self.head = nn.Linear(hidden, outputs)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self._lazy_seed = lazy_init_seed()

    @property
    def input_size(self) -> int | None:
        """``D``, the size of each patch's input row (``None`` before the first input)."""
        first = self.body[0]
        return None if nn.parameter.is_lazy(first.weight) else int(first.weight.shape[1])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, P, hidden)`` per-patch features of ``(B, P, D)`` inputs."""
        b, p, d = x.shape
        with seeded_lazy_init(self.input_size is None, self._lazy_seed):
            return self.body(self.norm(x.reshape(b * p, d))).reshape(b, p, -1)
