"""The registry of click agents: build and train any agent by name.

In the style of Gymnasium's env registry: each agent is registered under a name with a
``"module:attr"`` entry point (imported only when the agent is built, so this package never
imports the ``agents`` package it runs), its argument dataclass and its trainer; variants are the
same entry point registered again with other keyword arguments, as Minigrid registers its env
variants. The multi-round loop (``bow-gym rounds --agent``), the CLI, the benchmarks
(``--agents``) and the tests all read this one table.

Adding an agent is one module in ``agents/`` (a :class:`~bow_gym.policy.ClickPolicy`, and for a
learner an argument dataclass and a ``train(args) -> (agent, history)`` function) and one
:func:`register_agent` line at the end of this module.

Example:
    >>> from bow_gym.agent_registry import make_agent, train_agent
    >>> policy = make_agent("random", seed=0)  # doctest: +SKIP
    >>> agent, history = train_agent("answer_model", total_answers=500)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bow_gym.envs.better_worse_seg import BetterWorseSegEnv
    from bow_gym.policy import ClickPolicy

#: ``"module:attr"`` or the object itself.
EntryPoint = str | Callable[..., Any]


def load_entry_point(ref: EntryPoint) -> Any:
    """The object an entry point names (``"agents.reinforce:ReinforceAgent"``), imported now.

    Raises:
        ValueError: ``ref`` is not ``"module:attr"``.
        ImportError: The module cannot be imported.
        AttributeError: The module has no such attribute.
    """
    if not isinstance(ref, str):
        return ref
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"entry point {ref!r} is not 'module:attr'")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class AgentSpec:
    """One registered agent.

    Attributes:
        name: Registry name (``"reinforce_patches"``), also its name in tables.
        entry_point: Its :class:`~bow_gym.policy.ClickPolicy` class.
        args: Its trainer's argument dataclass (a subclass of ``agents.common.TrainArgs``);
            ``None`` for agents that are not trained (reference clickers).
        trainer: ``train(args) -> (agent, history)``; ``None`` for agents that are not trained.
        kwargs: The variant: fields of ``args`` set for training and, for agents built without
            training, keyword arguments of the class (the variants registered here use names
            that mean the same in both).
        needs_training: Only its trainer makes one (SB3's policies): the multi-round loop cannot
            start it from scratch.
        description: One line for listings and ``--help``.
    """

    name: str
    entry_point: EntryPoint
    args: EntryPoint | None = None
    trainer: EntryPoint | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    needs_training: bool = False
    description: str = ""

    @property
    def trainable(self) -> bool:
        """Whether it has a trainer (the benchmarks' learners)."""
        return self.trainer is not None

    def load(self) -> type[ClickPolicy]:
        """The agent's class (imported now)."""
        return load_entry_point(self.entry_point)

    def args_class(self) -> type:
        """The trainer's argument dataclass.

        Raises:
            ValueError: The agent has no trainer.
        """
        if self.args is None:
            raise ValueError(f"agent {self.name!r} is not trained: it has no arguments class")
        return load_entry_point(self.args)

    def learns_online(self) -> bool:
        """Whether it learns from the answers while it labels (its weights carry over from one
        round of :mod:`bow_gym.rounds` to the next)."""
        from bow_gym.policy import OnlineLearner

        return issubclass(self.load(), OnlineLearner)

    def make(self, env: BetterWorseSegEnv | None = None, **kwargs: Any) -> ClickPolicy:
        """A new agent: ``cls.for_env(env, **kwargs)``, or ``cls(**kwargs)`` without an env; the
        variant's :attr:`kwargs` come first, ``kwargs`` override them.

        Raises:
            ValueError: The agent is only made by its trainer (:attr:`needs_training`).
        """
        if self.needs_training:
            raise ValueError(f"agent {self.name!r} is made by training it (train_agent), not "
                             "built from scratch")
        cls = self.load()
        merged = {**self.kwargs, **kwargs}
        return cls(**merged) if env is None else cls.for_env(env, **merged)

    def training_args(self, **kwargs: Any) -> Any:
        """The trainer's arguments: the variant's :attr:`kwargs`, then ``kwargs``.

        Raises:
            ValueError: The agent has no trainer, or a field of ``kwargs`` is not an argument of
                it (naming the agent and listing its arguments).
        """
        cls = self.args_class()
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ValueError(f"{unknown} are not arguments of agent {self.name!r} "
                             f"({cls.__name__}); its arguments: {', '.join(sorted(names))}")
        return cls(**{**self.kwargs, **kwargs})

    def train(self, **kwargs: Any) -> tuple[ClickPolicy, dict[str, list[float]]]:
        """Train the agent (:meth:`training_args` of ``kwargs``); returns it and its learning
        curve, ready to act but still in training mode (see
        :meth:`~bow_gym.policy.ClickPolicy.evaluation_mode`)."""
        if self.trainer is None:
            raise ValueError(f"agent {self.name!r} is not trained: it has no trainer")
        return load_entry_point(self.trainer)(self.training_args(**kwargs))


#: Name -> spec of every registered agent, in registration order.
AGENT_REGISTRY: dict[str, AgentSpec] = {}


def register_agent(name: str, entry_point: EntryPoint, *, args: EntryPoint | None = None,
                   trainer: EntryPoint | None = None, kwargs: Mapping[str, Any] | None = None,
                   needs_training: bool = False, description: str = "") -> AgentSpec:
    """Register an agent under ``name`` (see :class:`AgentSpec` for the arguments).

    Raises:
        ValueError: ``name`` is taken, or only one of ``args`` and ``trainer`` is given.
    """
    if name in AGENT_REGISTRY:
        raise ValueError(f"agent {name!r} is already registered")
    if (args is None) != (trainer is None):
        raise ValueError(f"agent {name!r}: give both args and trainer, or neither")
    spec = AgentSpec(name, entry_point, args, trainer, dict(kwargs or {}), needs_training,
                     description)
    AGENT_REGISTRY[name] = spec
    return spec


def agent_spec(name: str) -> AgentSpec:
    """The spec of a registered agent.

    Raises:
        ValueError: Unknown name, listing the registered ones.
    """
    try:
        return AGENT_REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown agent {name!r}; registered: "
                         f"{', '.join(AGENT_REGISTRY)}") from None


def list_agents(*, trainable: bool | None = None, buildable: bool | None = None) -> list[str]:
    """Registered names, in registration order.

    Args:
        trainable: Only agents with (``True``) or without (``False``) a trainer.
        buildable: Only agents that can (``True``) or cannot (``False``) be built from scratch,
            without training (what ``bow-gym rounds --agent`` accepts).
    """
    return [name for name, spec in AGENT_REGISTRY.items()
            if (trainable is None or spec.trainable == trainable)
            and (buildable is None or (not spec.needs_training) == buildable)]


def make_agent(name: str, env: BetterWorseSegEnv | None = None, **kwargs: Any) -> ClickPolicy:
    """A new agent by name (:meth:`AgentSpec.make`), e.g. ``make_agent("gt")``."""
    return agent_spec(name).make(env, **kwargs)


def train_agent(name: str, **kwargs: Any) -> tuple[ClickPolicy, dict[str, list[float]]]:
    """Train an agent by name (:meth:`AgentSpec.train`); ``kwargs`` are fields of its argument
    dataclass (``total_answers``, ``seed``, ``out``, ...)."""
    return agent_spec(name).train(**kwargs)


# --------------------------------------------------------------------------- the agents
_REINFORCE = {"entry_point": "agents.reinforce:ReinforceAgent",
              "args": "agents.reinforce:ReinforceArgs", "trainer": "agents.reinforce:train"}
_SB3 = {"entry_point": "agents.sb3:SB3ClickPolicy", "args": "agents.sb3:SB3Args",
        "trainer": "agents.sb3:train_sb3", "needs_training": True}
_ANSWER_MODEL = {"entry_point": "agents.answer_model:AnswerModelAgent",
                 "args": "agents.answer_model:AnswerModelArgs",
                 "trainer": "agents.answer_model:train"}

register_agent("random", "agents.reference:RandomClicker",
               description="uniformly random label and pixel (the floor)")
register_agent("gt", "agents.reference:GroundTruthClicker",
               description="RITM-style clicker; reads the ground truth (the ceiling)")
register_agent("gt_greedy", "agents.reference:GreedyDiceClicker",
               description="propagation-aware greedy clicker; reads the ground truth")
register_agent("reinforce", **_REINFORCE, description="REINFORCE, U-Net policy (the method's)")
register_agent("reinforce_patches", **_REINFORCE, kwargs={"policy": "patches"})
register_agent("reinforce_belief", **_REINFORCE, kwargs={"policy": "belief"})
register_agent("reinforce_belief_aux", **_REINFORCE, kwargs={"policy": "belief", "aux_coef": 1.0})
register_agent("ppo", **_SB3, kwargs={"algo": "ppo"})
register_agent("a2c", **_SB3, kwargs={"algo": "a2c"})
register_agent("dqn", **_SB3, kwargs={"algo": "dqn"})
register_agent("ppo_features", **_SB3, kwargs={"algo": "ppo", "obs": "features"})
register_agent("dqn_features", **_SB3, kwargs={"algo": "dqn", "obs": "features"})
register_agent("ppo_belief", **_SB3, kwargs={"algo": "ppo", "obs": "belief", "width": 64})
register_agent("ppo_belief_aux", **_SB3,
               kwargs={"algo": "ppo", "obs": "belief", "width": 64, "aux_coef": 1.0})
register_agent("a2c_belief_aux", **_SB3,
               kwargs={"algo": "a2c", "obs": "belief", "width": 64, "aux_coef": 1.0})
register_agent("maskable_ppo", **_SB3, kwargs={"algo": "maskable_ppo"})
register_agent("maskable_ppo_features", **_SB3, kwargs={"algo": "maskable_ppo", "obs": "features"})
register_agent("maskable_ppo_belief_aux", **_SB3,
               kwargs={"algo": "maskable_ppo", "obs": "belief", "width": 64, "aux_coef": 1.0})
register_agent("answer_model", **_ANSWER_MODEL,
               description="learns the expert's answers, clicks for the largest predicted gain")
register_agent("answer_model_no_offset", **_ANSWER_MODEL, kwargs={"global_offset": False})
register_agent("answer_model_unet", **_ANSWER_MODEL,
               kwargs={"belief": "image", "global_offset": False})
register_agent("answer_model_context", **_ANSWER_MODEL, kwargs={"belief": "context"})
register_agent("answer_model_hybrid", **_ANSWER_MODEL, kwargs={"belief": "hybrid"})
register_agent("answer_model_residual", **_ANSWER_MODEL, kwargs={"belief": "residual"})
