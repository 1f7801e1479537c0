"""Wrappers for BetterWorseSeg environments."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from bow_gym.envs.better_worse_seg import EVAL_ONLY_KEY, BetterWorseSegEnv


class PatchActions(gym.ActionWrapper, gym.utils.RecordConstructorArgs):
    """Click patches instead of pixels: ``Discrete(2 * Hp * Wp)``.

    Every pixel of a patch selects the same patches (they share one feature), so for learning
    where to click the patch is the natural unit; this shrinks the action space by the cell area
    (64x for the defaults), which helps value-based agents such as DQN. Action ``a`` is
    ``label = a // P`` at patch ``a % P`` (row-major), clicked at the centre pixel of its cell.
    """

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ActionWrapper.__init__(self, env)
        base = env.unwrapped
        if not isinstance(base, BetterWorseSegEnv):
            raise TypeError(f"PatchActions wraps a BetterWorseSegEnv, got {type(base).__name__}")
        self.grid = base.grid
        self.n_patches = base.n_patches
        self.action_space = spaces.Discrete(2 * self.n_patches)

    def action(self, action: Any) -> int:
        a = int(action)
        if not 0 <= a < 2 * self.n_patches:
            raise ValueError(f"action must be in [0, {2 * self.n_patches}), got {action!r}")
        return patch_to_pixel_action(self.env.unwrapped, a)


class StripEvalInfo(gym.Wrapper):
    """Removes ``info["eval_only"]`` (values computed from the ground truth).

    Wrap a training environment with it to make sure a learning agent's pipeline cannot read the
    ground truth through ``info``; evaluation code uses the unwrapped values instead.
    """

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        info.pop(EVAL_ONLY_KEY, None)
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info.pop(EVAL_ONLY_KEY, None)
        return obs, reward, terminated, truncated, info


class DiceGainReward(gym.Wrapper):
    """**Reference only, reads the ground truth:** the reward becomes ``scale`` times the Dice gain
    of the step (of the mask the env keeps; with ``on_worse="revert"`` a rejected click gains 0).

    For diagnosing, never for a result of the method: it tells whether an agent trained on the
    expert's +1/-1 is held back by how little the answer says, or by its own learning. It must sit
    *inside* :class:`StripEvalInfo` (it reads ``info["eval_only"]``, which that removes).

    Args:
        env: The env.
        scale: Reward per unit of Dice; the default 5 pays a good first click (about +0.2 Dice)
            about what a "better" answer pays.
    """

    def __init__(self, env: gym.Env, scale: float = 5.0):
        super().__init__(env)
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        self.scale = float(scale)
        self._dice = 0.0

    def _read(self, info: dict[str, Any]) -> float:
        try:
            return float(info[EVAL_ONLY_KEY]["dice"])
        except KeyError:
            raise ValueError("DiceGainReward needs info['eval_only']['dice']: wrap the env with "
                             "it before StripEvalInfo") from None

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._dice = self._read(info)
        return obs, info

    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(action)
        dice = self._read(info)
        reward, self._dice = self.scale * (dice - self._dice), dice
        return obs, reward, terminated, truncated, info


class StripEvalInfoVector(gym.vector.VectorWrapper):
    """:class:`StripEvalInfo` for a vector env: removes ``info["eval_only"]``, its mask and the
    same from ``info["final_info"]`` (same-step autoreset)."""

    @staticmethod
    def _strip(info: dict[str, Any]) -> dict[str, Any]:
        info.pop(EVAL_ONLY_KEY, None)
        info.pop("_" + EVAL_ONLY_KEY, None)
        if isinstance(info.get("final_info"), dict):
            StripEvalInfoVector._strip(info["final_info"])
        return info

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, self._strip(info)

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        return obs, reward, terminated, truncated, self._strip(info)


class DiceGainRewardVector(gym.vector.VectorWrapper):
    """:class:`DiceGainReward` for a vector env (**reference only, reads the ground truth**):
    each sub-env's reward becomes ``scale`` times its step's Dice gain, the same float64 values
    as :class:`DiceGainReward` on each sub-env of a ``SyncVectorEnv``. A sub-env that autoresets
    this step (next-step mode) gets 0; with same-step autoreset the finished episode's Dice is
    read from ``info["final_info"]``. It must sit inside :class:`StripEvalInfoVector`.

    Args:
        env: The vector env.
        scale: Reward per unit of Dice (as :class:`DiceGainReward`).
    """

    def __init__(self, env: gym.vector.VectorEnv, scale: float = 5.0):
        super().__init__(env)
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        self.scale = float(scale)
        self._dice = np.zeros(env.num_envs, np.float64)

    @staticmethod
    def _read(info: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        try:
            ev = info[EVAL_ONLY_KEY]
            return np.asarray(ev["dice"], np.float64), np.asarray(ev["_dice"], bool)
        except KeyError:
            raise ValueError("DiceGainRewardVector needs info['eval_only']['dice']: wrap the vector "
                             "env with it before StripEvalInfoVector") from None

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        dice, reported = self._read(info)
        self._dice[reported] = dice[reported]  # only the sub-envs reset (options["reset_mask"])
        return obs, info

    def step(self, actions):
        obs, _, terminated, truncated, info = self.env.step(actions)
        dice, _ = self._read(info)
        clicked = np.asarray(info.get("_click", np.zeros(self.num_envs, bool)), bool)
        after = dice.copy()
        if "final_info" in info:  # same-step autoreset: the finished episodes' last Dice
            done = np.asarray(info["_final_info"], bool)
            after[done] = self._read(info["final_info"])[0][done]
            clicked = clicked | done
        reward = np.where(clicked, self.scale * (after - self._dice), 0.0)
        self._dice = dice.copy()
        return obs, reward, terminated, truncated, info


class PatchFeatureObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Observe each patch's features instead of pixels: ``Box((P, D + 6), float32)``.

    Row ``p`` is :func:`patch_policy_inputs` for patch ``p``: its backbone features (the ones
    propagation compares), its coordinates, and from the current mask and the propagation graph
    its foreground share, the share of the image a click there would reach, the foreground share
    of that reach and of the whole mask. None of it is ground truth. With :class:`PatchActions`
    this turns the env into a ``2P``-armed problem over per-patch feature vectors, the inputs of
    the patch policies in :mod:`agents`.
    """

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        base = env.unwrapped
        if not isinstance(base, BetterWorseSegEnv):
            raise TypeError("PatchFeatureObservation wraps a BetterWorseSegEnv, got "
                            f"{type(base).__name__}")
        self.observation_space = feature_observation_space(base)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return patch_policy_inputs(observation, self.env.unwrapped)


def feature_observation_space(env: Any) -> spaces.Box:
    """:class:`PatchFeatureObservation`'s space for an env (single or vector: ``n_patches`` and
    ``backbone`` are read): ``Box((P, D + 6), float32)``."""
    return spaces.Box(-np.inf, np.inf, (env.n_patches, env.backbone.dim + 6), np.float32)


def belief_observation_space(env: Any) -> spaces.Box:
    """:class:`BeliefObservation`'s space for an env (single or vector):
    ``Box((P, D + 4 + P + 2K), float32)``, K the clicks per episode."""
    p, k = env.n_patches, env.clicks_per_episode
    return spaces.Box(-np.inf, np.inf, (p, env.backbone.dim + 4 + p + 2 * k), np.float32)


class ClickHistory:
    """An episode's answered clicks as per-patch masks: before and after each click, and the answer.

    What an agent remembers of the episode to update its belief of the lesion (the expert said
    "better" to a click that added these patches, so they are likely lesion). Masks are the
    patches' foreground shares; "after" is the mask the click proposed, whether or not the env
    kept it. None of it is ground truth.

    Args:
        clicks: How many clicks to keep (an episode's click budget).
    """

    def __init__(self, clicks: int):
        if clicks < 1:
            raise ValueError(f"clicks must be >= 1, got {clicks!r}")
        self.clicks = int(clicks)
        self.events: list[tuple[np.ndarray, np.ndarray, float]] = []

    def reset(self) -> None:
        self.events = []

    def add(self, before: np.ndarray, reach: np.ndarray, label: int, answer: float) -> None:
        """Record a click on the patches ``reach`` (0/1 row of the propagation graph) with
        ``label`` from the mask ``before`` and the expert's ``answer`` (+1 / -1)."""
        before = np.asarray(before, np.float32)
        reach = np.asarray(reach, np.float32)
        after = np.maximum(before, reach) if label == 1 else before * (1.0 - reach)
        if len(self.events) == self.clicks:
            self.events.pop(0)  # only with a longer episode than the budget said
        self.events.append((before, after, 1.0 if answer > 0 else -1.0))

    def columns(self, n_patches: int) -> np.ndarray:
        """``(P, 2K + 1)`` float32: K columns of masks before each click, K of masks after, and a
        column whose row ``k`` is click ``k``'s answer (+1 / -1; 0 where no click was made yet)."""
        if n_patches < self.clicks:
            raise ValueError(f"{n_patches} patches cannot hold the answers of {self.clicks} "
                             "clicks in one column")
        out = np.zeros((n_patches, 2 * self.clicks + 1), np.float32)
        for k, (before, after, answer) in enumerate(self.events):
            out[:, k], out[:, self.clicks + k], out[k, -1] = before, after, answer
        return out


def belief_observation(obs: np.ndarray, env: BetterWorseSegEnv, history: ClickHistory) -> np.ndarray:
    """``(P, D + 4 + P + 2K)`` float32: what a belief policy reads, one row per patch.

    Columns: the patch's backbone features and coordinates (:func:`patch_inputs`, ``D + 2``),
    its foreground share in the current mask, its row of the propagation graph (which patches a
    click there selects), then the episode's answered clicks (:meth:`ClickHistory.columns`).
    Split a batch with :func:`split_belief_observation`. None of it is ground truth.
    """
    m = mask_shares(obs, env.grid)
    graph = env.propagation_graph().astype(np.float32)
    return np.concatenate([patch_inputs(env), m[:, None], graph, history.columns(len(m))],
                          axis=1).astype(np.float32)


def split_belief_observation(x: Any, clicks: int) -> tuple[Any, ...]:
    """``(features, mask, graph, before, after, answers)`` of :func:`belief_observation` rows
    ``(..., P, C)`` (numpy or torch): ``(..., P, D + 2)``, ``(..., P)``, ``(..., P, P)``,
    ``(..., K, P)``, ``(..., K, P)`` and ``(..., K)`` (+1 / -1, 0 for no click yet)."""
    p, k = x.shape[-2], int(clicks)
    d = x.shape[-1] - p - 2 * k - 2
    hist = x[..., d + 1 + p :]
    return (x[..., :d], x[..., d], x[..., d + 1 : d + 1 + p], _swap_last(hist[..., :k]),
            _swap_last(hist[..., k : 2 * k]), hist[..., :k, -1])


def _swap_last(a: Any) -> Any:
    return np.swapaxes(a, -1, -2) if isinstance(a, np.ndarray) else a.transpose(-1, -2)


class BeliefObservation(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Observe :func:`belief_observation`: each patch's features, the current mask, the propagation
    graph and the episode's answered clicks, ``Box((P, D + 4 + P + 2K), float32)``.

    The observation of a policy that keeps a belief of the lesion and updates it with the
    expert's answers within the episode (``agents.sb3`` with ``obs="belief"``): the answered
    clicks are part of the observation, so the policy itself stays a function of it and SB3's
    rollout buffers need nothing extra. Wrap ``PatchActions`` or the env itself; ``info`` must
    carry ``patch``, ``click`` and ``answer`` as BetterWorseSeg's does.
    """

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)
        base = env.unwrapped
        if not isinstance(base, BetterWorseSegEnv):
            raise TypeError(f"BeliefObservation wraps a BetterWorseSegEnv, got {type(base).__name__}")
        self.history = ClickHistory(base.clicks_per_episode)
        self.observation_space = belief_observation_space(base)
        self._last: np.ndarray | None = None

    def _observe(self, obs: np.ndarray) -> np.ndarray:
        self._last = belief_observation(obs, self.env.unwrapped, self.history)
        return self._last

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self.history.reset()
        return self._observe(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        assert self._last is not None, "step() before reset()"
        # The last observation already holds the mask and the graph: no second copy of either.
        _, mask, graph, *_ = split_belief_observation(self._last, self.history.clicks)
        self.history.add(mask, graph[int(info["patch"])], int(info["click"]["label"]),
                         float(info["answer"]))
        return self._observe(obs), reward, terminated, truncated, info


def patch_to_pixel_action(env: BetterWorseSegEnv, action: int) -> int:
    """The env's pixel action for patch action ``label * P + patch`` (the cell's centre pixel)."""
    label, patch = divmod(int(action), env.n_patches)
    r, c = divmod(patch, env.grid[1])
    ch, cw = env.cell
    return env.encode_action(label, r * ch + ch // 2, c * cw + cw // 2)


def mask_from_obs(obs: np.ndarray) -> np.ndarray:
    """The ``(H, W)`` bool mask channel of a BetterWorseSeg observation (single or batched)."""
    return obs[..., 3, :, :] > 127


def mask_shares(obs: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``(P,)`` float32 share of foreground pixels of each patch in the observation's mask."""
    return patch_shares(obs[3] > 127, grid)


def patch_shares(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``(P,)`` float32 share of foreground pixels of each patch of an ``(H, W)`` bool mask."""
    gh, gw = grid
    h, w = mask.shape
    return mask.reshape(gh, h // gh, gw, w // gw).mean(axis=(1, 3), dtype=np.float32).ravel()


def changing_clicks(shares: np.ndarray, graph: np.ndarray) -> np.ndarray:
    """``(2P,)`` bool: which patch actions ``label * P + p`` would change the mask.

    A background click on ``p`` clears the patches it reaches (row ``p`` of the propagation
    graph), so it changes the mask iff one of them holds foreground; a foreground click iff one
    of them is not all foreground. Such a no-op click is always answered "worse" and teaches
    nothing, so masking it is part of the task's structure, not a hint: it reads only the mask
    and the graph, which the agent may see.

    Args:
        shares: ``(P,)`` foreground share of each patch (:func:`patch_shares`).
        graph: ``(P, P)`` bool propagation graph
            (:meth:`~bow_gym.envs.BetterWorseSegEnv.propagation_graph`).
    """
    reach = np.asarray(graph, dtype=bool)
    shares = np.asarray(shares)
    clears = (reach & (shares > 0)[None, :]).any(axis=1)
    fills = (reach & (shares < 1)[None, :]).any(axis=1)
    return np.concatenate([clears, fills])


def current_changing_clicks(env: BetterWorseSegEnv) -> np.ndarray:
    """:func:`changing_clicks` for the env's current mask and image."""
    return changing_clicks(patch_shares(env.current_mask(), env.grid), env.propagation_graph())


class ClickMasks(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """``action_masks()`` over :class:`PatchActions`' ``Discrete(2P)``, for sb3-contrib's
    ``MaskablePPO`` (which asks the env for it; no fork of SB3 needed).

    Valid are the clicks that would change the mask (:func:`changing_clicks`) and, with
    ``avoid_rejected``, that the expert has not rejected earlier in the episode (with
    ``on_worse="revert"`` a rejected click leaves the state as it was, so repeating it cannot
    help). Should nothing be valid, every click is (a mask must allow one action). Wrap it
    around :class:`PatchActions`; observation wrappers may go outside it.

    Args:
        env: A :class:`PatchActions`-wrapped BetterWorseSeg env.
        avoid_rejected: Also mask the clicks answered "worse" earlier in the episode.
    """

    def __init__(self, env: gym.Env, avoid_rejected: bool = True):
        gym.utils.RecordConstructorArgs.__init__(self, avoid_rejected=avoid_rejected)
        gym.Wrapper.__init__(self, env)
        if not (isinstance(env.action_space, spaces.Discrete)
                and env.action_space.n == 2 * env.unwrapped.n_patches):
            raise TypeError("ClickMasks needs PatchActions' Discrete(2P) action space inside it, "
                            f"got {env.action_space}")
        self.avoid_rejected = bool(avoid_rejected)
        self._rejected: list[int] = []

    def reset(self, **kwargs):
        self._rejected = []
        return self.env.reset(**kwargs)

    def step(self, action):
        out = self.env.step(action)
        if out[1] < 0:
            self._rejected.append(int(action))
        return out

    def action_masks(self) -> np.ndarray:
        """``(2P,)`` bool: the clicks that may be taken now."""
        valid = current_changing_clicks(self.env.unwrapped)
        if self.avoid_rejected and self._rejected:
            valid[self._rejected] = False
        return valid if valid.any() else np.ones_like(valid)


def patch_inputs(env: BetterWorseSegEnv) -> np.ndarray:
    """``(P, D + 2)`` float32: the current image's patch features and patch coordinates in [-1, 1]."""
    gh, gw = env.grid
    yy, xx = np.meshgrid(np.linspace(-1, 1, gh), np.linspace(-1, 1, gw), indexing="ij")
    return np.concatenate([env.patch_features(), yy.reshape(-1, 1), xx.reshape(-1, 1)],
                          axis=1).astype(np.float32)


def _box_mean(grid_values: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the ``(2 r + 1)^2`` neighbourhood of every cell of a ``(gh, gw, D)`` array; the
    border is repeated outwards, so edge patches are not pulled towards zero."""
    # Summed-area table rather than cv2.blur: OpenCV refuses DINOv2's 384 or 768 channels.
    k = 2 * radius + 1
    padded = np.pad(grid_values, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    c = np.pad(np.cumsum(np.cumsum(padded, axis=0, dtype=np.float64), axis=1),
               ((1, 0), (1, 0), (0, 0)))
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)


def patch_context_inputs(env: BetterWorseSegEnv) -> np.ndarray:
    """``(P, 4 D + 2)`` float32: :func:`patch_inputs` and how each patch differs from its context.

    Appended to each patch's features and coordinates: the features minus the image's mean
    feature (a polyp is "redder than this image's mucosa", not red in absolute terms), and minus
    the mean of its 3 x 3 and 5 x 5 patch neighbourhoods (the edge of a region). Computed from the
    image's features alone; no ground truth.
    """
    x = patch_inputs(env)
    f = x[:, :-2].astype(np.float64)  # the features, without the two coordinate columns
    grid_f = f.reshape(*env.grid, -1)
    context = [f - f.mean(axis=0, keepdims=True)]
    context += [(_box_mean(grid_f, r) - grid_f).reshape(len(f), -1) for r in (1, 2)]
    return np.concatenate([x, *context], axis=1).astype(np.float32)


def image_feature_inputs(obs: np.ndarray, env: BetterWorseSegEnv, cells: int = 2) -> np.ndarray:
    """``(3 + D, cells * gh, cells * gw)`` float32: the image and its patch features on one grid.

    The RGB channels are the image area-averaged to ``cells`` x ``cells`` cells per patch, in
    [0, 1]; the other ``D`` channels repeat each patch's backbone features over its cells. A
    convolutional belief then reads colour and shape at a finer scale than the patches, and the
    features propagation compares, in one input. Computed from the image alone; no ground truth.

    Args:
        obs: The env's observation ``(C, H, W)`` (its first three channels are the RGB image).
        env: The env whose current image ``obs`` shows.
        cells: Cells per patch side (at least 1).
    """
    import cv2

    if cells < 1:
        raise ValueError(f"cells must be >= 1, got {cells!r}")
    gh, gw = env.grid
    rgb = np.ascontiguousarray(np.moveaxis(np.asarray(obs[:3]), 0, -1), dtype=np.float32)
    small = cv2.resize(rgb, (cells * gw, cells * gh), interpolation=cv2.INTER_AREA) / 255.0
    feats = env.patch_features().reshape(gh, gw, -1)
    feats = np.repeat(np.repeat(feats, cells, axis=0), cells, axis=1)
    return np.moveaxis(np.concatenate([small, feats], axis=-1), -1, 0).astype(np.float32)


def patch_policy_inputs(obs: np.ndarray, env: BetterWorseSegEnv) -> np.ndarray:
    """``(P, D + 6)`` float32: what the patch policy reads about a click on each patch.

    The patch's backbone features and coordinates (:func:`patch_inputs`), then from
    the current mask and the propagation graph: the patch's foreground share, the share of the
    image a click there would reach, the foreground share of that reach, and the foreground share
    of the whole mask. All of it is what the agent sees or what propagation computes from the
    image alone; none of it is ground truth.
    """
    m = mask_shares(obs, env.grid)
    graph = env.propagation_graph().astype(np.float32)
    reach = graph.sum(1)
    extra = np.stack([m, reach / len(m), graph @ m / np.maximum(reach, 1.0),
                      np.full_like(m, m.mean())], axis=1)
    return np.concatenate([patch_inputs(env), extra], axis=1).astype(np.float32)
