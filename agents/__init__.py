"""Click policies for BetterWorseSeg: reference clickers and the learning agents.

The interface they share (:class:`~bow_gym.policy.ClickPolicy` and the learners' protocols) and
the episode runner live in :mod:`bow_gym.policy`; agents are built by name from
:mod:`bow_gym.agent_registry`. Adding an agent is one module here and one ``register_agent`` line
there.
"""

import warnings
from typing import Any

from agents.reference import GreedyDiceClicker, GroundTruthClicker, RandomClicker
from bow_gym.policy import ClickPolicy, EpisodeRecord, run_episode

__all__ = [
    "ClickPolicy",
    "EpisodeRecord",
    "GreedyDiceClicker",
    "GroundTruthClicker",
    "RandomClicker",
    "run_episode",
]


def make_policy(name: str, **kwargs: Any) -> ClickPolicy:
    """Deprecated: :func:`bow_gym.agent_registry.make_agent` builds every agent by name."""
    from bow_gym.agent_registry import make_agent

    warnings.warn("agents.make_policy is deprecated: use bow_gym.agent_registry.make_agent",
                  FutureWarning, stacklevel=2)
    return make_agent(name, **kwargs)


def __getattr__(name: str):
    # Learned agents import torch and SB3 (seconds); keep `import agents` light for the demo.
    if name in ("ReinforceAgent", "ReinforceArgs"):
        from agents import reinforce

        return getattr(reinforce, name)
    if name in ("AnswerModelAgent", "AnswerModelArgs"):
        from agents import answer_model

        return getattr(answer_model, name)
    if name in ("SB3ClickPolicy", "SB3Args"):
        from agents import sb3

        return getattr(sb3, name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
