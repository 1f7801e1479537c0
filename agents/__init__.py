"""Click policies for BetterWorseSeg: the shared interface, reference clickers and runners."""

from agents.policy import ClickPolicy, EpisodeRecord, make_policy, run_episode
from agents.reference import GreedyDiceClicker, GroundTruthClicker, RandomClicker

__all__ = [
    "ClickPolicy",
    "EpisodeRecord",
    "GreedyDiceClicker",
    "GroundTruthClicker",
    "RandomClicker",
    "make_policy",
    "run_episode",
]


def __getattr__(name: str):
    # Learned agents import torch and SB3 (seconds); keep `import agents` light for the demo.
    if name in ("ReinforceAgent", "ReinforceArgs"):
        from agents import reinforce

        return getattr(reinforce, name)
    if name in ("SB3ClickPolicy", "SB3Args"):
        from agents import sb3

        return getattr(sb3, name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
