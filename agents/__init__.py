"""Click policies for BetterWorseSeg: the shared interface, reference clickers and runners."""

from agents.policy import ClickPolicy, EpisodeRecord, make_policy, run_episode
from agents.reference import GroundTruthClicker, RandomClicker

__all__ = [
    "ClickPolicy",
    "EpisodeRecord",
    "GroundTruthClicker",
    "RandomClicker",
    "make_policy",
    "run_episode",
]
