"""bow-gym: "just say better or worse" medical image segmentation as a Gymnasium environment.

Importing the package registers the environments, so ``gym.make("BetterWorseSeg-v0")`` works
after ``import bow_gym`` (or directly as ``gym.make("bow_gym:BetterWorseSeg-v0")``). Every variant
also names the native vector env (:class:`bow_gym.envs.vector.BetterWorseSegVectorEnv`) as its
``vector_entry_point``, which ``gym.make_vec(id, num_envs=N)`` uses unless a
``vectorization_mode`` ("sync", "async") says otherwise.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

__version__ = "0.1.0"

_ENTRY_POINT = "bow_gym.envs.better_worse_seg:BetterWorseSegEnv"
_VECTOR_ENTRY_POINT = "bow_gym.envs.vector:BetterWorseSegVectorEnv"

#: Registered variants: the same class with different keyword arguments (as Minigrid does).
ENV_VARIANTS: dict[str, dict] = {
    # The default: embedded synthetic data (mixed flavours), weight-free backbone, Dice oracle.
    "BetterWorseSeg-v0": {},
    "BetterWorseSeg-Polyp-v0": {"dataset_kwargs": {"flavour": "polyp"}},
    "BetterWorseSeg-Skin-v0": {"dataset_kwargs": {"flavour": "skin"}},
    "BetterWorseSeg-Ultrasound-v0": {"dataset_kwargs": {"flavour": "ultrasound"}},
    # High-contrast lesions: a learning agent should beat random clicking quickly here.
    "BetterWorseSeg-Easy-v0": {"dataset_kwargs": {"contrast": 2.5}},
    # Experts who err: answers flipped with probability 0.1.
    "BetterWorseSeg-Noisy-v0": {"oracle": "noisy", "oracle_kwargs": {"p": 0.1}},
    # The clicks so far as a fifth observation channel.
    "BetterWorseSeg-Clicks-v0": {"include_clicks": True},
}


def _register() -> None:
    for env_id, kwargs in ENV_VARIANTS.items():
        if env_id not in registry:
            register(id=env_id, entry_point=_ENTRY_POINT, vector_entry_point=_VECTOR_ENTRY_POINT,
                     kwargs=kwargs)


_register()


def __getattr__(name: str):
    # Lazy, so `import bow_gym` stays light (no torch) until the env is built.
    if name == "BetterWorseSegEnv":
        from bow_gym.envs.better_worse_seg import BetterWorseSegEnv

        return BetterWorseSegEnv
    raise AttributeError(f"module 'bow_gym' has no attribute {name!r}")


__all__ = ["ENV_VARIANTS", "BetterWorseSegEnv", "__version__"]
