"""REINFORCE with a U-Net policy: the method's clicking agent, learning from +1/-1 alone.

Reads top to bottom, CleanRL style: the arguments, the agent (a :class:`~agents.ClickPolicy` that
also learns online in :meth:`ReinforceAgent.observe`), the offline training loop over batched
rollouts, checkpoints (safetensors), and the command line::

    python -m agents.reinforce --total-answers 2000 --out runs/reinforce

The policy is ``softmax(logits / temperature)`` over the ``2 x H x W`` (label x pixel) logits of a
small U-Net (:class:`agents.unet.ClickUNet`). ``--policy patches`` swaps the U-Net for a small
MLP over the ``2 x P`` (label x patch) clicks, reading each patch's backbone features (the ones
propagation compares) and what a click there would reach: the inputs the answer model's belief
uses, so the two agents can be compared on equal terms. ``--policy belief`` scores each click by
the Dice gain it would make against a learned per-patch belief of the lesion (the answer model's
click rule, :mod:`agents.belief`), so REINFORCE learns the belief through the policy gradient;
``--aux-coef`` adds the auxiliary task of predicting the expert's answers from that belief (a
reward-prediction task in the sense of UNREAL, Jaderberg et al. 2017), trained on replayed
answers. The expert judges each click by itself, so by default
(``gamma=0``) a click's return is its own answer; ``gamma > 0`` credits later answers too. The
method's authors name REINFORCE's weaknesses (variance, a sparse binary reward, slow convergence);
the remedies offered here are a baseline (``"ema"``: moving average of rewards; ``"value"``: a
learned value head; ``"none"``), an entropy bonus, and batched rollouts over ``num_envs`` envs.
An agent never reads ground truth: it sees observations and answers only.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from agents.belief import (
    BeliefPolicyNet,
    ReplayBuffer,
    answer_logits,
    fit_episode_offsets,
    mask_after_click,
    split_belief_inputs,
)
from agents.common import (
    NON_NEGATIVE,
    POSITIVE,
    SHARE,
    ArgumentValueError,
    Bound,
    PatchMLP,
    TrainArgs,
    TrainingLog,
    agent_from_checkpoint,
    check_env_fits,
    load_checkpoint,
    load_state_checked,
    make_vector_env,
    parse_cli,
    save_checkpoint,
    summary_line,
)
from agents.unet import ClickUNet
from bow_gym.envs.better_worse_seg import BetterWorseSegEnv
from bow_gym.policy import BatchedLearner
from bow_gym.segmenters import resolve_device
from bow_gym.wrappers import (
    mask_shares,
    patch_inputs,
    patch_policy_inputs,
    patch_to_pixel_action,
)


@dataclass
class ReinforceArgs(TrainArgs):
    """Arguments of REINFORCE training (every field is a ``--flag`` of the CLI); the shared
    ones (data, budget, run) are :class:`~agents.common.TrainArgs`'. Each lockstep of
    ``num_envs`` clicks is one gradient step (``gamma=0``)."""

    bounds: ClassVar[dict[str, Bound]] = {
        **TrainArgs.bounds, "temperature": POSITIVE, "ema_decay": SHARE,
        "value_coef": NON_NEGATIVE, "entropy_coef": NON_NEGATIVE}
    default_out: ClassVar[str] = "runs/reinforce"

    policy: str = "unet"
    """policy network: unet (the method's: a U-Net scores every pixel of the observation) or
    patches (an MLP scores each (label, patch) click from the patch's backbone features and what
    a click there would reach) or belief (each click scored by the Dice gain it would make
    against a learned per-patch belief of the lesion, updated within the episode by its
    answers)"""
    lr: float = 1e-3
    """Adam learning rate"""
    temperature: float = 1.0
    """softmax temperature of the policy"""
    gamma: float = 0.0
    """discount of later answers; 0 credits each click with its own answer"""
    baseline: str = "ema"
    """variance reduction: none, ema (moving average of rewards) or value (learned head)"""
    ema_decay: float = 0.95
    """decay of the moving-average baseline"""
    value_coef: float = 0.5
    """weight of the value loss (baseline=value)"""
    entropy_coef: float = 0.01
    """entropy bonus, against early collapse onto one click"""
    width: int = 16
    """U-Net channels at the first level"""
    avoid_rejected: bool = True
    """within an episode, do not repeat a click (label and patch) the expert rejected"""
    aux_coef: float = 0.0
    """belief policy: weight of the auxiliary loss of predicting the expert's answers from the
    belief (0: pure REINFORCE)"""
    aux_steps: int = 8
    """belief policy: replayed minibatches of 32 answered clicks per update for the auxiliary
    loss (the first shares the policy-gradient step, the others are auxiliary only)"""
    posterior_steps: int = 20
    """belief policy: gradient steps of the within-episode belief update after each answer (0
    disables it)"""

    def validate(self) -> None:
        """:meth:`TrainDataArgs.validate`, and the choices of policy and baseline.

        Raises:
            ArgumentValueError: For the first bad field.
        """
        super().validate()
        if self.policy not in ("unet", "patches", "belief"):
            raise ArgumentValueError("policy", "must be 'unet', 'patches' or 'belief', got "
                                               f"{self.policy!r}")
        if self.baseline not in ("none", "ema", "value"):
            raise ArgumentValueError("baseline", "must be 'none', 'ema' or 'value', got "
                                                 f"{self.baseline!r}")
        if self.aux_coef > 0 and self.policy != "belief":
            raise ArgumentValueError("aux_coef", "needs policy='belief' (the belief predicts the "
                                                 f"answers), got policy={self.policy!r}")


class PatchPolicyNet(PatchMLP):
    """Click logits ``(B, 2P)`` (label-major, as the env's actions) and values ``(B,)`` from
    per-patch inputs ``(B, P, D)`` (:func:`~bow_gym.wrappers.patch_policy_inputs`): one small MLP
    scores every patch alike; untrained, the policy is uniform."""

    def __init__(self, hidden: int = 64):
        super().__init__(hidden, 2)
        self.value = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(x)
        logits = self.head(h).transpose(1, 2).flatten(1)
        return logits, self.value(h.mean(1)).squeeze(1)


def belief_policy_inputs(obs: np.ndarray, env: BetterWorseSegEnv,
                         offset: np.ndarray | None = None) -> np.ndarray:
    """``(P, D + 4 + P)`` float32: what the belief policy reads, one row per patch.

    Columns: the patch's backbone features and coordinates (:func:`patch_inputs`, ``D + 2``), its
    foreground share in the current mask, the within-episode offset of its belief logit (zero
    without one), and its row of the propagation graph (which patches a click there selects).
    None of it is ground truth.
    """
    m = mask_shares(obs, env.grid)
    off = np.zeros_like(m) if offset is None else np.asarray(offset, np.float32)
    graph = env.propagation_graph().astype(np.float32)
    return np.concatenate([patch_inputs(env), m[:, None], off[:, None], graph],
                          axis=1).astype(np.float32)


@dataclass
class BeliefEpisode:
    """The belief policy's memory of an episode: the answers so far and the offsets they fit."""

    logits: torch.Tensor | None = None  # (P,) the network's belief logits at the episode start
    events: list[tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=list)
    local: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    pending: tuple[np.ndarray, int] | None = None  # (inputs, action) of a click not yet answered

    def offset(self) -> np.ndarray | None:
        if self.local is None:
            return None
        shift = 0.0 if self.shift is None else self.shift
        return (self.local + shift).cpu().numpy()


class ReinforceAgent(BatchedLearner):
    """A click policy trained with REINFORCE; also learns online while labelling.

    Three policy networks: ``policy="unet"`` (the method's agent) scores every pixel of the
    observation with a U-Net; ``policy="patches"`` scores every ``(label, patch)`` click from
    :func:`patch_policy_inputs` with a small MLP and clicks the patch centre; ``policy="belief"``
    scores every ``(label, patch)`` click by the Dice gain it would make against a learned belief
    (:class:`BeliefPolicyNet`), which the episode's answers so far update (the episode's memory
    is a :class:`BeliefEpisode`). Propagation treats all pixels of a patch alike, so the patch
    policies lose no click that matters; they also skip clicks that would not change the mask.

    Args:
        in_channels: Observation channels (``policy="unet"``).
        policy: ``unet``, ``patches`` or ``belief``.
        temperature: Softmax temperature (sampling); :meth:`act` with ``greedy=True`` takes argmax.
        lr, baseline, ema_decay, value_coef, entropy_coef, gamma, width: see
            :class:`ReinforceArgs`.
        online_batch: In :meth:`observe`, update after this many clicks (online learning).
        avoid_rejected: Mask out clicks the expert rejected earlier in the episode.
        aux_coef, aux_steps, posterior_steps: see :class:`ReinforceArgs` (``policy="belief"``).
        device: Torch device.
        seed: Seeds the sampling generator (and the auxiliary loss's replay).
    """

    name: ClassVar[str] = "reinforce"
    checkpoint_kind: ClassVar[str] = "reinforce"

    def __init__(self, in_channels: int = 4, *, policy: str = "unet", temperature: float = 1.0,
                 lr: float = 1e-3, baseline: str = "ema", ema_decay: float = 0.95,
                 value_coef: float = 0.5, entropy_coef: float = 0.01, gamma: float = 0.0,
                 width: int = 16, online_batch: int = 8, avoid_rejected: bool = True,
                 aux_coef: float = 0.0, aux_steps: int = 8, posterior_steps: int = 20,
                 greedy: bool = False, device: str = "cpu", seed: int = 0):
        if policy not in ("unet", "patches", "belief"):
            raise ValueError(f"policy must be 'unet', 'patches' or 'belief', got {policy!r}")
        if not aux_coef >= 0 or aux_steps < 1 or posterior_steps < 0:
            raise ValueError("need aux_coef >= 0, aux_steps >= 1 and posterior_steps >= 0, got "
                             f"{aux_coef!r}, {aux_steps!r}, {posterior_steps!r}")
        if aux_coef > 0 and policy != "belief":
            raise ValueError(f"aux_coef needs policy='belief' (the belief predicts the answers), "
                             f"got policy={policy!r}")
        if baseline not in ("none", "ema", "value"):
            raise ValueError(f"baseline must be 'none', 'ema' or 'value', got {baseline!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.device = torch.device(device)
        self.policy = policy
        self.net: nn.Module = (ClickUNet(in_channels, width=width) if policy == "unet"
                               else PatchPolicyNet(4 * width) if policy == "patches"
                               else BeliefPolicyNet(4 * width))
        self.net.to(self.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.hparams = dict(in_channels=in_channels, policy=policy, temperature=temperature,
                            lr=lr, baseline=baseline, ema_decay=ema_decay, value_coef=value_coef,
                            entropy_coef=entropy_coef, gamma=gamma, width=width)
        if policy == "belief":
            self.hparams.update(aux_coef=aux_coef, aux_steps=aux_steps,
                                posterior_steps=posterior_steps)
        self.aux_coef, self.aux_steps, self.posterior_steps = aux_coef, aux_steps, posterior_steps
        self.replay = ReplayBuffer(50000)
        self.rng = np.random.default_rng(seed)
        self._episode = BeliefEpisode()
        self.temperature, self.baseline, self.ema_decay = temperature, baseline, ema_decay
        self.value_coef, self.entropy_coef, self.gamma = value_coef, entropy_coef, gamma
        self.online_batch, self.avoid_rejected, self.greedy = online_batch, avoid_rejected, greedy
        self.ema = 0.0
        self.updates = 0
        self.generator = torch.Generator().manual_seed(seed)
        self._rejected: list[tuple[int, int]] = []
        # Clicks chosen but not yet answered, as (env action, inputs, valid, policy action): the
        # gradient needs what the policy saw and which clicks it could choose from.
        self._decisions: deque[tuple[int, np.ndarray, np.ndarray, int]] = deque(maxlen=256)
        self._pending: list[tuple[np.ndarray, np.ndarray | None, int, float]] = []
        self._last_obs: np.ndarray | None = None
        self._last_choice: tuple[np.ndarray, int] | None = None
        self.last_confidence: float | None = None
        self.checkpoint: str | None = None  # the file it was loaded from, for errors

    @classmethod
    def for_env(cls, env: BetterWorseSegEnv, *, seed: int | None = None, device: str = "cpu",
                **kwargs: Any) -> ReinforceAgent:
        """An agent for ``env``'s observation channels."""
        return cls(env.n_channels, device=device, seed=0 if seed is None else seed, **kwargs)

    def check_env(self, env: BetterWorseSegEnv) -> None:
        """Refuse an env whose observation channels (U-Net) or patch features (patch and belief
        policies, once sized) differ from what the network was built for."""
        from bow_gym.wrappers import PatchFeatureObservation

        backbone = f"backbone {env.backbone.name!r}, {env.backbone.dim}-dim features"
        if self.policy == "unet":
            assert isinstance(self.net, ClickUNet)
            check_env_fits(self, {"observation channels (in_channels)": (
                self.net.input_channels, env.n_channels,
                f"include_clicks={env.include_clicks}: 4 = image and mask, 5 = with clicks")})
        else:
            assert isinstance(self.net, PatchMLP)
            # The patch policy reads patch_policy_inputs (the feature observation's rows); the
            # belief reads patch_inputs, the features and two coordinates.
            size = (PatchFeatureObservation(env).observation_space.shape[-1]
                    if self.policy == "patches" else env.backbone.dim + 2)
            check_env_fits(self, {"patch inputs of size": (self.net.input_size, size, backbone)})

    def evaluation_mode(self) -> ReinforceAgent:
        """Greedy clicks and no online updates."""
        self.greedy, self.online_batch = True, 0
        return self

    # -------------------------------------------------------------- acting
    def logits(self, inputs: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flattened click logits ``(B, n_actions)`` and values ``(B,)`` of a batch of
        :meth:`policy_inputs` (observations for the U-Net)."""
        x = torch.as_tensor(np.asarray(inputs), device=self.device)
        if x.ndim == (3 if self.policy == "unet" else 2):
            x = x.unsqueeze(0)
        logits, value = self.net(x if self.policy == "unet" else x.float())
        return logits.flatten(1), value

    def policy_inputs(self, obs: np.ndarray, env: BetterWorseSegEnv,
                      rejected: list[tuple[int, int]], episode: BeliefEpisode | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """What the policy reads for this observation, and which of its actions it may take.

        Args:
            obs: The env's observation.
            env: The env (its geometry; for the patch policies also the image's features and
                propagation graph).
            rejected: The ``(label, patch)`` clicks the expert rejected so far this episode.
            episode: The belief policy's memory of this episode (its answers so far); ``None``
                acts as at the episode's start.

        Returns:
            ``(inputs, valid)``: the observation (U-Net), :func:`patch_policy_inputs` or
            :func:`belief_policy_inputs`, and a bool vector over the policy's actions.
        """
        if self.policy == "unet":
            s, (ch, cw), gw = env.obs_size, env.cell, env.grid[1]
            valid = np.ones((2, s, s), bool)
            if self.avoid_rejected:
                for label, patch in rejected:
                    r, c = divmod(patch, gw)
                    valid[label, r * ch:(r + 1) * ch, c * cw:(c + 1) * cw] = False
            return np.asarray(obs), valid.reshape(-1)
        if self.policy == "belief":
            inputs = self._belief_inputs(obs, env, episode)
            _, m, _, graph = split_belief_inputs(inputs)
            reach_fg = (graph @ m) / np.maximum(graph.sum(1), 1.0)
        else:
            inputs = patch_policy_inputs(obs, env)
            # Column -2 is the reach's foreground share (exact in float32: sums of multiples of
            # 1/cell-area).
            reach_fg = inputs[:, -2]
        # A background click changes the mask iff its reach holds foreground; a foreground one
        # iff its reach holds background.
        changes = np.stack([reach_fg > 0, reach_fg < 1])
        not_rejected = np.ones_like(changes)
        if self.avoid_rejected:
            for label, patch in rejected:
                not_rejected[label, patch] = False
        for valid in (changes & not_rejected, not_rejected):
            if valid.any():
                return inputs, valid.reshape(-1)
        return inputs, np.ones(changes.size, bool)

    def _belief_inputs(self, obs: np.ndarray, env: BetterWorseSegEnv,
                       episode: BeliefEpisode | None) -> np.ndarray:
        if episode is not None and episode.logits is None and self.posterior_steps:
            # The network's belief at the episode's start, the prior the answers update.
            with torch.no_grad():
                self.net.eval()
                x = torch.as_tensor(patch_inputs(env), device=self.device)[None]
                episode.logits = self.net.belief(x)[0][0]
        return belief_policy_inputs(obs, env, None if episode is None else episode.offset())

    def record_answer(self, episode: BeliefEpisode, inputs: np.ndarray, action: int,
                      reward: float) -> None:
        """Add an answered click to the belief policy's episode memory and refit its offsets.

        Args:
            episode: The episode's memory.
            inputs: What the policy read when it chose the click (:meth:`policy_inputs`).
            action: The policy's action (label-major ``(label, patch)`` index).
            reward: The expert's answer (> 0: "better").
        """
        if self.policy != "belief" or not self.posterior_steps or episode.logits is None:
            return
        x = torch.as_tensor(inputs, device=self.device)
        _, m, _, graph = split_belief_inputs(x)
        label, patch = divmod(int(action), len(m))
        after = mask_after_click(m, graph[patch], label)
        episode.events.append((m, after, 1.0 if reward > 0 else 0.0))
        net = self.net
        assert isinstance(net, BeliefPolicyNet)
        before_all = torch.stack([e[0] for e in episode.events])
        after_all = torch.stack([e[1] for e in episode.events])
        y = torch.tensor([e[2] for e in episode.events], device=self.device)
        episode.local, episode.shift = fit_episode_offsets(
            episode.logits, before_all, after_all, y, net.log_kappa.exp(), net.beta,
            local=episode.local, shift=episode.shift, steps=self.posterior_steps)

    def env_action(self, action: int, env: BetterWorseSegEnv) -> int:
        """The env's action for one of the policy's actions (the patch centre for patches)."""
        return int(action) if self.policy == "unet" else patch_to_pixel_action(env, action)

    @torch.no_grad()
    def _sample(self, inputs: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.net.eval()
        logits, _ = self.logits(inputs)
        logits = torch.where(torch.as_tensor(valid, device=self.device), logits, -torch.inf)
        probs = torch.softmax(logits.cpu() / self.temperature, dim=1)
        if self.greedy:
            actions = torch.argmax(logits, dim=1).cpu()
        else:
            actions = torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
        # 1 - normalised entropy: 0 for a uniform policy, 1 for a certain one. A model signal the
        # multi-round pipeline may use to rank pseudo-masks (never the ground truth).
        entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum(1)
        conf = 1.0 - entropy / np.log(probs.shape[1])
        return actions.numpy(), conf.numpy()

    def _remember(self, env_action: int, inputs: np.ndarray, valid: np.ndarray,
                  action: int) -> None:
        if self.online_batch > 0:
            self._decisions.append((env_action, inputs, valid, action))

    def reset(self, seed: int | None = None) -> None:
        self._rejected = []
        self._episode = BeliefEpisode()
        if seed is not None:
            self.generator.manual_seed(int(seed))

    def act(self, obs: np.ndarray, info: dict[str, Any], env: BetterWorseSegEnv,
            ground_truth: np.ndarray | None = None) -> int:
        inputs, valid = self.policy_inputs(obs, env, self._rejected, self._episode)
        actions, conf = self._sample(inputs[None], valid[None])
        self.last_confidence = float(conf[0])
        self._last_obs = np.asarray(obs)
        self._last_choice = (inputs, int(actions[0]))
        action = self.env_action(int(actions[0]), env)
        self._remember(action, inputs, valid, int(actions[0]))
        return action

    def act_batch(self, obs: np.ndarray, rejected: list[list[tuple[int, int]]],
                  env: BetterWorseSegEnv | Sequence[BetterWorseSegEnv],
                  episodes: Sequence[BeliefEpisode] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Actions and confidences for a batch of episodes run in lockstep (one forward pass).

        Args:
            obs: ``(B, C, H, W)`` observations.
            rejected: Per episode, the ``(label, patch)`` clicks the expert rejected so far.
            env: The env of each episode; one env will do for the U-Net (its geometry only).
            episodes: Per episode, the belief policy's memory (:meth:`new_episode`); each
                chosen click waits in it for :meth:`answer_batch`. Without them the belief
                policy acts as at each episode's start.
        """
        if episodes is not None and len(episodes) != len(obs):
            raise ValueError(f"act_batch got {len(obs)} observations and {len(episodes)} episodes")
        if isinstance(env, BetterWorseSegEnv):
            if self.policy != "unet" and len(obs) > 1:
                raise ValueError("the patch policy reads each image's features: pass act_batch "
                                 "one env per observation")
            envs = [env] * len(obs)
        else:
            envs = list(env)
        if len(envs) != len(obs) or len(rejected) != len(obs):
            raise ValueError(f"act_batch got {len(obs)} observations, {len(rejected)} rejected "
                             f"lists and {len(envs)} envs")
        eps = list(episodes) if episodes is not None else [None] * len(obs)
        inputs, valid = zip(*[self.policy_inputs(o, e, r, ep) for o, e, r, ep
                              in zip(obs, envs, rejected, eps, strict=True)], strict=True)
        actions, conf = self._sample(np.stack(inputs), np.stack(valid))
        for ep, i, a in zip(eps, inputs, actions, strict=True):
            if ep is not None:
                ep.pending = (i, int(a))
        env_actions = np.array([self.env_action(int(a), e) for a, e in zip(actions, envs,
                                                                           strict=True)])
        for ea, i, v, a in zip(env_actions, inputs, valid, actions, strict=True):
            self._remember(int(ea), i, v, int(a))
        return env_actions, conf

    def learn_online(self, obs: np.ndarray, action: int, reward: float) -> None:
        """Queue one answered click; update once ``online_batch`` clicks are queued.

        The click is matched with what the policy saw when it chose it (:meth:`act`,
        :meth:`act_batch`); a U-Net click the agent did not choose is learned from ``obs`` alone.
        """
        if self.online_batch <= 0:
            return
        decision = None
        while self._decisions:
            d = self._decisions.popleft()
            if d[0] == int(action):
                decision = d
                break
        if decision is not None:
            self._pending.append((decision[1], decision[2], decision[3], float(reward)))
        elif self.policy == "unet":
            self._pending.append((np.asarray(obs), None, int(action), float(reward)))
        else:
            raise RuntimeError("the patch policy learns only from clicks it chose: call act or "
                               "act_batch before learn_online")
        if len(self._pending) >= self.online_batch:
            self.flush()

    def new_episode(self) -> BeliefEpisode:
        """An empty episode memory for :meth:`act_batch` (used by the belief policy)."""
        return BeliefEpisode()

    def answer_batch(self, episodes: Sequence[BeliefEpisode], rewards: Sequence[float]) -> None:
        """Give each episode of the last :meth:`act_batch` its answer (belief policy memory)."""
        for ep, r in zip(episodes, rewards, strict=True):
            if ep.pending is not None:
                inputs, action = ep.pending
                ep.pending = None
                self.record_answer(ep, inputs, action, r)

    def observe(self, action: int, reward: float, terminated: bool, info: dict[str, Any]) -> None:
        """Online learning: every answered click is a training signal (the method's protocol)."""
        if reward < 0 and "patch" in info:
            self._rejected.append((int(info["click"]["label"]), int(info["patch"])))
        if self._last_choice is not None:
            self.record_answer(self._episode, *self._last_choice, reward)
            self._last_choice = None
        if self._last_obs is not None:
            self.learn_online(self._last_obs, action, reward)

    def flush(self) -> None:
        """Learn from online clicks still waiting for a full batch (e.g. at the end of a round)."""
        if self._pending:
            inputs, valid, actions, rewards = zip(*self._pending, strict=True)
            masks = None
            if any(v is not None for v in valid):
                n = next(v for v in valid if v is not None).size
                masks = np.stack([np.ones(n, bool) if v is None else v for v in valid])
            self.update(np.stack(inputs), np.array(actions), np.array(rewards, np.float32), masks)
            self._pending = []

    # -------------------------------------------------------------- learning
    def update(self, inputs: np.ndarray, actions: np.ndarray, returns: np.ndarray,
               valid: np.ndarray | None = None,
               answers: np.ndarray | None = None) -> dict[str, float]:
        """One REINFORCE step on a batch of (policy inputs, policy action, return).

        ``valid`` (``(B, n_actions)`` bool) restricts each softmax to the clicks the policy could
        choose from when it acted. ``answers`` are each click's own answer (default: the
        returns, the same when ``gamma=0``); the belief policy's auxiliary loss learns from them.
        """
        if self.policy == "belief" and self.aux_coef > 0:
            self._remember_answers(inputs, actions, returns if answers is None else answers)
        self.net.train()
        logits, values = self.logits(inputs)
        if valid is not None:
            logits = torch.where(torch.as_tensor(valid, device=self.device), logits, -torch.inf)
        logp_all = torch.log_softmax(logits / self.temperature, dim=1)
        a = torch.as_tensor(actions, device=self.device, dtype=torch.long)
        logp = logp_all.gather(1, a[:, None]).squeeze(1)
        ret = torch.as_tensor(returns, device=self.device, dtype=torch.float32)
        if self.baseline == "value":
            advantage = ret - values.detach()
        elif self.baseline == "ema":
            advantage = ret - self.ema
        else:
            advantage = ret
        probs = logp_all.exp()
        entropy = -(probs * torch.where(probs > 0, logp_all, 0.0)).sum(1).mean()
        policy_loss = -(advantage * logp).mean()
        value_loss = ((values - ret) ** 2).mean()
        loss = policy_loss - self.entropy_coef * entropy
        if self.baseline == "value":
            loss = loss + self.value_coef * value_loss
        aux = self.policy == "belief" and self.aux_coef > 0
        aux_stats: dict[str, float] = {}
        if aux:
            aux_loss, aux_stats = self._aux_loss()
            loss = loss + self.aux_coef * aux_loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.opt.step()
        for _ in range(self.aux_steps - 1 if aux else 0):
            # Further replayed minibatches train the answer prediction alone.
            aux_loss, aux_stats = self._aux_loss()
            self.opt.zero_grad(set_to_none=True)
            (self.aux_coef * aux_loss).backward()
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
            self.opt.step()
        if self.baseline == "ema":
            mean_r = float(ret.mean())
            self.ema = mean_r if self.updates == 0 else (
                self.ema_decay * self.ema + (1 - self.ema_decay) * mean_r)
        self.updates += 1
        return {"losses/policy": policy_loss.item(), "losses/value": value_loss.item(),
                "losses/entropy": entropy.item(), "charts/baseline": float(self.ema), **aux_stats}

    def _remember_answers(self, inputs: np.ndarray, actions: np.ndarray,
                          answers: np.ndarray) -> None:
        """Keep a batch's answered clicks for the auxiliary loss's replay (belief policy)."""
        x = np.asarray(inputs, np.float32)
        for xi, a, r in zip(x, np.asarray(actions), np.asarray(answers), strict=True):
            features, m, _, graph = split_belief_inputs(xi)
            label, patch = divmod(int(a), len(m))
            after = mask_after_click(torch.as_tensor(m), torch.as_tensor(graph[patch]),
                                     label).numpy()
            self.replay.add(None, features, m.copy(),
                            after.astype(np.float32), 1.0 if r > 0 else 0.0)

    def _aux_loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        """The auxiliary loss: the negative log-likelihood of a replayed minibatch of answers under
        the belief (no within-episode offsets) and the answer model (:func:`answer_logits`)."""
        net = self.net
        assert isinstance(net, BeliefPolicyNet)
        features, before, after, y = (torch.as_tensor(a, device=self.device)
                                      for a in self.replay.sample(self.rng, 32))
        q = torch.sigmoid(net.belief(features)[0])
        logit = answer_logits(q, before, after, net.log_kappa.exp(), net.beta)
        loss = nn.functional.binary_cross_entropy_with_logits(logit, y)
        return loss, {"losses/answer_nll": loss.item(),
                      "charts/answer_accuracy": float(((logit > 0).float() == y).float().mean())}

    # -------------------------------------------------------------- checkpoints
    def save(self, path: str | os.PathLike) -> None:
        """Weights as safetensors (atomic), hyper-parameters in its metadata."""
        meta = {"agent": self.name, "hparams": json.dumps(self.hparams), "ema": str(self.ema),
                "updates": str(self.updates)}
        save_checkpoint(path, self.net.state_dict(), meta, self.net, "the patch policy")

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu", **overrides: Any) -> ReinforceAgent:
        """An agent from a :meth:`save` checkpoint (``overrides`` change acting options)."""
        what = "REINFORCE checkpoint"
        state, meta, decoded = load_checkpoint(path, what, device, agent=cls.checkpoint_kind,
                                               json_keys=("hparams",))
        hparams = decoded["hparams"]
        agent = agent_from_checkpoint(cls, path, hparams, overrides, device=device)
        load_state_checked(agent.net, state, path, what, hparams=hparams, overrides=overrides)
        agent.checkpoint = str(path)
        agent.ema = float(meta.get("ema", 0.0))
        agent.updates = int(meta.get("updates", 0))
        return agent


def train(args: ReinforceArgs) -> tuple[ReinforceAgent, dict[str, list[float]]]:
    """Offline REINFORCE over batched rollouts; returns the agent and its learning curve.

    Raises:
        ArgumentValueError: If ``args`` fails :meth:`ReinforceArgs.validate` (nothing is written).
    """
    args.validate()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    device = resolve_device(args.device)
    # One vector env with same-step autoreset: a finished episode's step returns the next
    # episode's first observation, as the per-env loop this replaced reset it by hand.
    venv, bases = make_vector_env(args, args.num_envs)
    n = args.num_envs
    agent = ReinforceAgent(bases[0].n_channels, policy=args.policy,
                           temperature=args.temperature, lr=args.lr, baseline=args.baseline,
                           ema_decay=args.ema_decay, value_coef=args.value_coef,
                           entropy_coef=args.entropy_coef, gamma=args.gamma, width=args.width,
                           online_batch=0, avoid_rejected=args.avoid_rejected,
                           aux_coef=args.aux_coef, aux_steps=args.aux_steps,
                           posterior_steps=args.posterior_steps, device=device, seed=args.seed)
    log = TrainingLog(args, "reinforce")
    obs, _ = venv.reset(seed=args.seed)  # sub-env i is seeded args.seed + i
    rejected: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    episode: list[list[tuple[np.ndarray, np.ndarray, int, float]]] = [[] for _ in range(n)]
    memory = [agent.new_episode() for _ in range(n)]  # the belief policy's within-episode memory
    clicks = 0
    while clicks < args.total_answers:
        inputs, valid = zip(*[agent.policy_inputs(o, b, r, mem) for o, b, r, mem
                              in zip(obs, bases, rejected, memory, strict=True)], strict=True)
        actions, _ = agent._sample(np.stack(inputs), np.stack(valid))
        env_actions = np.array([agent.env_action(int(a), b) for a, b in zip(actions, bases,
                                                                            strict=True)])
        obs, rewards, terms, truncs, info = venv.step(env_actions)
        batch_in, batch_valid, batch_act, batch_ret, batch_answer = [], [], [], [], []
        for i in range(n):
            a, r = int(actions[i]), float(rewards[i])
            episode[i].append((inputs[i], valid[i], a, r))
            agent.record_answer(memory[i], inputs[i], a, r)
            ended = bool(terms[i] or truncs[i])
            if r < 0 and not ended:  # (a finished episode's click info is in final_info)
                rejected[i].append((int(info["click"]["label"][i]), int(info["patch"][i])))
            if ended or args.gamma == 0:
                g, rets = 0.0, []
                for *_, rr in reversed(episode[i]):
                    g = rr + args.gamma * g
                    rets.append(g)
                for (ei, ev, ea, er), ret in zip(episode[i], reversed(rets), strict=True):
                    batch_in.append(ei)
                    batch_valid.append(ev)
                    batch_act.append(ea)
                    batch_ret.append(ret)
                    batch_answer.append(er)
                episode[i] = []
            if ended:
                rejected[i] = []
                memory[i] = agent.new_episode()
        clicks += n
        stats = {}
        if batch_in:
            stats = agent.update(np.stack(batch_in), np.array(batch_act),
                                 np.array(batch_ret, np.float32), np.stack(batch_valid),
                                 np.array(batch_answer, np.float32))
        log.step(clicks, list(rewards), stats)
    venv.close()
    return agent, log.finish(agent, args)


def main(argv: list[str] | None = None) -> None:
    """The command line: train, then print a summary (a refused argument exits with status 2)."""
    args = parse_cli(ReinforceArgs, argv, "python -m agents.reinforce", __doc__)
    _, history = train(args)
    print(summary_line(history, args.run_folder()))


if __name__ == "__main__":
    main()
