"""Environments of bow-gym (one per file)."""

from bow_gym.envs.better_worse_seg import EVAL_ONLY_KEY, BetterWorseSegEnv

__all__ = ["BetterWorseSegEnv", "EVAL_ONLY_KEY"]
