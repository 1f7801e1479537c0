"""Stable-Baselines3's ``VecEnv`` over the native vector env, so PPO, A2C and MaskablePPO train
on batched sub-envs in one process (no ``DummyVecEnv`` of single envs, no subprocesses).

``make_sb3_vec_env("BetterWorseSeg-v0", num_envs=8)`` builds the native vector env
(:class:`~bow_gym.envs.vector.BetterWorseSegVectorEnv`, same-step autoreset as SB3 expects) and
wraps it in :class:`SB3VecEnv`. What SB3 sees is what the project's training path
(``DummyVecEnv`` of ``PatchActions(StripEvalInfo(env))`` with ``ClickMasks`` for MaskablePPO)
gives it, batched:

* patch actions ``Discrete(2P)`` (``label * P + p``, clicked at the centre pixel of the patch),
  or the env's own pixel actions with ``patch_actions=False``;
* ``action_masks()`` (with ``action_masks=True``) equal to
  :class:`~bow_gym.wrappers.ClickMasks`': the clicks that would change the mask and, with
  ``avoid_rejected``, were not answered "worse" earlier in the episode;
* ``info["eval_only"]`` never reaches SB3 (the training path strips it too): the per-env infos
  hold ``"TimeLimit.truncated"`` and, at an episode's end, ``"terminal_observation"``, as
  ``DummyVecEnv``'s do; ``infos=True`` adds the single env's other keys;
* ``obs="features"`` or ``"belief"``: the observations of
  :class:`~bow_gym.wrappers.PatchFeatureObservation` or
  :class:`~bow_gym.wrappers.BeliefObservation` (the same functions, per sub-env), and
  ``reward="dice_gain"``: :class:`~bow_gym.wrappers.DiceGainReward`'s reward (through
  :class:`~bow_gym.wrappers.DiceGainRewardVector`; reference only, it reads the ground truth).

Wrap it in SB3's ``VecMonitor`` for episode statistics (``Monitor`` wraps single envs only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvStepReturn

from bow_gym.envs.better_worse_seg import EVAL_ONLY_KEY
from bow_gym.envs.vector import BetterWorseSegVectorEnv, SubEnvView
from bow_gym.wrappers import (
    ClickHistory,
    DiceGainRewardVector,
    belief_observation,
    belief_observation_space,
    feature_observation_space,
    patch_policy_inputs,
    split_belief_observation,
)

#: What :class:`SB3VecEnv` observes and how it is rewarded (as ``agents.sb3``'s ``obs``/``reward``).
OBSERVATIONS = ("pixels", "features", "belief")
REWARDS = ("answer", "dice_gain")

__all__ = ["SB3VecEnv", "make_sb3_vec_env", "patch_to_pixel_actions"]


def patch_to_pixel_actions(actions: np.ndarray, env: BetterWorseSegVectorEnv) -> np.ndarray:
    """The env's pixel actions of patch actions ``label * P + p`` (the cells' centre pixels):
    :func:`bow_gym.wrappers.patch_to_pixel_action`, batched."""
    label, patch = np.divmod(np.asarray(actions, np.int64), env.n_patches)
    r, c = np.divmod(patch, env.grid[1])
    (ch, cw), s = env.cell, env.obs_size
    return label * s * s + (r * ch + ch // 2) * s + (c * cw + cw // 2)


class SB3VecEnv(VecEnv):
    """An SB3 ``VecEnv`` whose sub-envs are the native vector env's.

    Args:
        venv: A :class:`~bow_gym.envs.vector.BetterWorseSegVectorEnv` made with
            ``autoreset_mode="SameStep"`` (SB3 resets a sub-env in the step that ends its
            episode) and ``copy=True`` (SB3 keeps the previous observation batch while stepping).
        patch_actions: Act on patches, ``Discrete(2P)`` (as ``PatchActions``), instead of pixels.
        action_masks: Provide ``action_masks()`` for sb3-contrib's MaskablePPO (needs patch
            actions).
        avoid_rejected: The masks also drop clicks answered "worse" earlier in the episode.
        infos: Add the single env's info keys (except ``eval_only``) to each sub-env's info dict;
            off by default, since SB3 reads none of them and building N dicts costs a loop.
        obs: ``"pixels"`` (the env's observation), ``"features"`` (``PatchFeatureObservation``'s)
            or ``"belief"`` (``BeliefObservation``'s: features, mask, graph and the episode's
            answered clicks).
        reward: ``"answer"`` (the expert's +1/-1) or ``"dice_gain"`` (``DiceGainReward``'s,
            reference only).
        reward_scale: ``DiceGainReward``'s scale, for ``reward="dice_gain"``.

    Raises:
        TypeError: ``venv`` is not a BetterWorseSeg vector env.
        ValueError: Its autoreset mode or copy setting does not fit SB3, masks are asked for
            without patch actions, or ``obs``/``reward`` is not one of the above.
    """

    def __init__(self, venv: BetterWorseSegVectorEnv, *, patch_actions: bool = True,
                 action_masks: bool = False, avoid_rejected: bool = True, infos: bool = False,
                 obs: str = "pixels", reward: str = "answer", reward_scale: float = 5.0):
        if obs not in OBSERVATIONS:
            raise ValueError(f"obs must be one of {list(OBSERVATIONS)}, got {obs!r}")
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {list(REWARDS)}, got {reward!r}")
        base = getattr(venv, "unwrapped", venv)
        if not isinstance(base, BetterWorseSegVectorEnv):
            raise TypeError(f"SB3VecEnv wraps a BetterWorseSegVectorEnv, got {type(base).__name__}")
        if base.autoreset_mode != AutoresetMode.SAME_STEP:
            raise ValueError("SB3 resets a sub-env in the step that ends its episode: make the "
                             "vector env with autoreset_mode='SameStep', got "
                             f"{base.autoreset_mode.value!r}")
        if not base.copy:
            raise ValueError("SB3 keeps the previous observations while stepping: make the vector "
                             "env with copy=True")
        if action_masks and not patch_actions:
            raise ValueError("action_masks=True needs patch_actions=True (masks are over the "
                             "2P patch clicks, as ClickMasks' are)")
        self.venv = base
        # What is stepped: the vector env, or the reward wrapper around it (which reads the
        # eval-only Dice; the infos handed to SB3 never carry it).
        self._stepped: Any = (DiceGainRewardVector(base, reward_scale) if reward == "dice_gain"
                              else base)
        self.patch_actions = bool(patch_actions)
        self.masks = bool(action_masks)
        self.avoid_rejected = bool(avoid_rejected)
        self.infos = bool(infos)
        self.obs, self.reward = obs, reward
        n, p = base.num_envs, base.n_patches
        action_space = spaces.Discrete(2 * p) if patch_actions else base.single_action_space
        self._rejected = np.zeros((n, 2 * p), bool)
        self._actions: np.ndarray | None = None
        # obs != "pixels": each sub-env's current episode (features and graph, kept so that an
        # episode's terminal observation is built from its own image after the sub-env reset),
        # and for the belief its answered clicks and its last observation.
        self._views = [base.sub_env(i) for i in range(n)]
        self._episodes: list[_Episode] = []
        self._histories = [ClickHistory(base.clicks_per_episode) for _ in range(n)]
        self._last: list[np.ndarray] = []
        space = {"pixels": base.single_observation_space,
                 "features": feature_observation_space(base),
                 "belief": belief_observation_space(base)}[obs]
        super().__init__(n, space, action_space)

    # ------------------------------------------------------------------ stepping
    def reset(self) -> np.ndarray:
        options = self._options
        if any(o != options[0] for o in options):
            raise NotImplementedError("the sub-envs reset with one options dict: set_options() "
                                      "with a single dict")
        seeds: list[int | None] | None = list(self._seeds)
        if all(s is None for s in seeds):
            seeds = None
        obs, _ = self._stepped.reset(seed=seeds, options=dict(options[0]) or None)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        self._rejected[:] = False
        if self.obs == "pixels":
            return obs
        self._episodes = [_Episode(v) for v in self._views]
        for h in self._histories:
            h.reset()
        self._last = [self._observe(i, o) for i, o in enumerate(obs)]
        return np.stack(self._last)

    def step_async(self, actions: np.ndarray) -> None:
        a = np.asarray(actions)
        if a.shape == (self.num_envs, 1):
            a = a[:, 0]
        if a.shape != (self.num_envs,) or a.dtype.kind not in "iu":
            raise ValueError(f"actions must be an integer array of shape ({self.num_envs},), got "
                             f"{a.dtype} array of shape {a.shape}")
        n_actions = int(self.action_space.n)  # type: ignore[attr-defined]
        if a.min() < 0 or a.max() >= n_actions:
            raise ValueError(f"actions must be in [0, {n_actions}), got {a.tolist()}")
        self._actions = a.astype(np.int64, copy=False)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("call step_async() before step_wait()")
        a, self._actions = self._actions, None
        env_actions = patch_to_pixel_actions(a, self.venv) if self.patch_actions else a
        obs, rewards, terminated, truncated, info = self._stepped.step(env_actions)
        dones = terminated | truncated
        final_obs = info.get("final_obs")
        if self.obs != "pixels":
            obs, final_obs = self._observe_step(obs, dones, info)
        if self.masks and self.avoid_rejected:
            # As ClickMasks: a click answered "worse" is not offered again this episode.
            worse = np.flatnonzero(rewards < 0)
            self._rejected[worse, a[worse]] = True
        infos: list[dict[str, Any]] = (_unbatch(info, self.num_envs) if self.infos
                                       else [{} for _ in range(self.num_envs)])
        for i, (term, trunc) in enumerate(zip(terminated.tolist(), truncated.tolist(),
                                              strict=True)):
            infos[i]["TimeLimit.truncated"] = trunc and not term
        for i in np.flatnonzero(dones).tolist():
            infos[i]["terminal_observation"] = final_obs[i]
        if dones.any():
            self._rejected[dones] = False
        return obs, rewards.astype(np.float32), dones, infos

    def _observe(self, i: int, pixels: np.ndarray) -> np.ndarray:
        """Sub-env ``i``'s observation of ``pixels`` in its current episode (``obs`` not pixels)."""
        episode = self._episodes[i]
        if self.obs == "features":
            return patch_policy_inputs(pixels, episode)  # type: ignore[arg-type]
        return belief_observation(pixels, episode, self._histories[i])  # type: ignore[arg-type]

    def _observe_step(self, obs: np.ndarray, dones: np.ndarray,
                      info: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The step's observations and the finished episodes' terminal ones, as the observation
        wrappers give them per sub-env: the belief first records each sub-env's answered click
        (with the mask and graph of its previous observation), as ``BeliefObservation.step``
        does."""
        n = self.num_envs
        final_obs = np.full(n, None, object)
        done = dones.tolist()
        if self.obs == "belief":
            # A finished episode's click is reported in final_info (same-step autoreset).
            fin = info.get("final_info", {})
            clicks = self.venv.clicks_per_episode
            for i in range(n):
                src = fin if done[i] else info
                _, mask, graph, *_ = split_belief_observation(self._last[i], clicks)
                self._histories[i].add(mask, graph[int(src["patch"][i])],
                                       int(src["click"]["label"][i]), float(src["answer"][i]))
        out = []
        for i in range(n):
            if done[i]:
                final_obs[i] = self._observe(i, info["final_obs"][i])
                self._episodes[i] = _Episode(self._views[i])
                self._histories[i].reset()
            out.append(self._observe(i, obs[i]))
        if self.obs == "belief":
            self._last = out
        return np.stack(out), final_obs

    def action_masks(self) -> np.ndarray:
        """``(num_envs, 2P)`` bool: the clicks MaskablePPO may take now, as
        :meth:`bow_gym.wrappers.ClickMasks.action_masks` gives them per sub-env."""
        if not self.masks:
            raise AttributeError("action_masks: make the SB3VecEnv with action_masks=True")
        valid = self.venv.changing_clicks()
        if self.avoid_rejected:
            valid &= ~self._rejected
        valid[~valid.any(axis=1)] = True  # a mask must allow one action
        return valid

    def close(self) -> None:
        self.venv.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        if self.venv.render_mode != "rgb_array":
            return [None] * self.num_envs
        return list(self.venv.render())

    # ------------------------------------------------------------------ SB3's attribute access
    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The attribute of every sub-env: the adapter's (``action_masks``, ...) or else the
        vector env's, which is the same for all sub-envs (``render_mode``, ``grid``, ...)."""
        k = len(list(self._get_indices(indices)))
        if attr_name == "action_masks":
            if not self.masks:  # sb3-contrib asks, to know whether masking is supported
                raise AttributeError("action_masks is not provided (action_masks=False)")
            value: Any = self.action_masks
        else:
            value = getattr(self.venv, attr_name)
        return [value] * k

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        if len(list(self._get_indices(indices))) != self.num_envs:
            raise NotImplementedError("the sub-envs share their settings: set an attribute for "
                                      "all of them (indices=None)")
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        """``action_masks`` and ``render`` per sub-env (what SB3 and sb3-contrib call)."""
        idx = list(self._get_indices(indices))
        if method_name == "action_masks":
            masks = self.action_masks()
            return [masks[i] for i in idx]
        if method_name == "render":
            frames = self.venv.render()
            return [None if frames is None else frames[i] for i in idx]
        raise AttributeError(f"{method_name!r}: the sub-envs of SB3VecEnv offer only "
                             "action_masks and render per sub-env; call batched methods on "
                             ".venv")

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper],
                       indices: VecEnvIndices = None) -> list[bool]:
        return [False] * len(list(self._get_indices(indices)))


class _Episode:
    """What the observation functions read of a sub-env's current image (its grid, patch
    features and propagation graph), kept for the whole episode."""

    def __init__(self, view: SubEnvView):
        self.grid = view.grid
        self.features = view.patch_features()
        self.graph = view.propagation_graph()

    def patch_features(self) -> np.ndarray:
        return self.features

    def propagation_graph(self) -> np.ndarray:
        return self.graph


def _unbatch(info: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Per-sub-env dicts of a batched Gymnasium info (``eval_only`` and ``final_*`` left out)."""
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, value in info.items():
        if key.startswith("_") or key in (EVAL_ONLY_KEY, "final_obs", "final_info"):
            continue
        mask = info[f"_{key}"]
        if isinstance(value, dict):
            nested = _unbatch(value, n)
            for i in np.flatnonzero(mask).tolist():
                out[i][key] = nested[i]
        else:
            for i in np.flatnonzero(mask).tolist():
                out[i][key] = value[i].item() if isinstance(value[i], np.generic) else value[i]
    return out


def make_sb3_vec_env(env_id: str = "BetterWorseSeg-v0", num_envs: int = 8, *,
                     patch_actions: bool = True, action_masks: bool = False,
                     avoid_rejected: bool = True, infos: bool = False, obs: str = "pixels",
                     reward: str = "answer", **env_kwargs: Any) -> SB3VecEnv:
    """:class:`SB3VecEnv` over ``gym.make_vec(env_id, num_envs, "vector_entry_point", ...)``.

    Args:
        env_id: A registered BetterWorseSeg id.
        num_envs: Sub-envs.
        patch_actions, action_masks, avoid_rejected, infos, obs, reward: See
            :class:`SB3VecEnv`.
        **env_kwargs: The env's arguments (data set, backbone, ...), as for ``gym.make``.
    """
    import bow_gym  # noqa: F401 - registers the ids

    venv = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point",
                        autoreset_mode=AutoresetMode.SAME_STEP, copy=True, **env_kwargs)
    return SB3VecEnv(venv, patch_actions=patch_actions, action_masks=action_masks,  # type: ignore[arg-type]
                     avoid_rejected=avoid_rejected, infos=infos, obs=obs, reward=reward)

