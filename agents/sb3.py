"""Stable-Baselines3 baselines (PPO, A2C, DQN, and sb3-contrib's MaskablePPO) on BetterWorseSeg,
through SB3's extension points.

Reads top to bottom like :mod:`agents.reinforce`: the arguments, the features extractor, the
evaluation policy (a :class:`~agents.ClickPolicy`, so benchmarks treat it like every other
clicker), logging, training and the command line::

    python -m agents.sb3 --algo ppo --total-answers 3000 --out runs/sb3-ppo

Nothing of SB3 is forked; the project plugs in where SB3 expects it:

* ``policy_kwargs``: :class:`PatchGridExtractor`, a fully convolutional features extractor that
  keeps one feature vector per patch of the 16 x 16 grid, and empty ``net_arch`` so SB3's linear
  action head (``action_net`` for PPO/A2C, the Q head for DQN) reads those features directly.
  With ``head="patch"`` (default) that linear head is tied to the identity on the extractor's
  first two channels (:func:`tie_patch_head`), which makes the extractor's last 1 x 1 conv the
  real head, shared by every patch, as in the U-Net of :mod:`agents.reinforce`.
* the env: training runs on ``PatchActions(StripEvalInfo(env))`` with ``Discrete(512)``
  (label x patch). Every pixel of a patch selects the same patches (one feature per patch), so
  the 64 pixels of a cell are the same action; a ``Discrete(32768)`` head would have to learn
  that 64 times over from a few thousand answers.
* ``algo="maskable_ppo"``: sb3-contrib's ``MaskablePPO`` with the env's ``action_masks()``
  (:class:`~bow_gym.wrappers.ClickMasks`): clicks that would change nothing, and clicks the expert
  rejected earlier in the episode, are never sampled, in training or evaluation.
* a :class:`~stable_baselines3.common.callbacks.BaseCallback` for the learning curve and a
  renaming :class:`~stable_baselines3.common.logger.KVWriter` so TensorBoard tags follow the
  project's ``charts/...`` and ``losses/...`` convention.

The expert judges every click on its own, so ``gamma=0`` by default: a click's return is its own
answer and the agents solve a contextual bandit over 512 arms. Agents never read ground truth:
training envs strip ``info["eval_only"]`` and the policy only sees observations and answers.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter, Logger, make_output_format
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from agents.belief import (
    BeliefPolicyNet,
    ReplayBuffer,
    answer_logits,
    fit_episode_offsets,
    mask_after_click,
    masks_after_clicks,
    soft_dice,
)
from agents.common import (
    COUNT,
    NON_NEGATIVE,
    NON_NEGATIVE_COUNT,
    SHARE,
    ArgumentValueError,
    Bound,
    TrainArgs,
    agent_from_checkpoint,
    check_env_fits,
    load_checkpoint,
    load_state_checked,
    make_envs,
    parse_cli,
    training_env_kwargs,
)
from bow_gym.envs.better_worse_seg import BetterWorseSegEnv
from bow_gym.io_utils import save_tensors, write_json
from bow_gym.policy import ClickPolicy
from bow_gym.wrappers import (
    ClickHistory,
    ClickMasks,
    belief_observation,
    current_changing_clicks,
    patch_policy_inputs,
    patch_to_pixel_action,
    split_belief_observation,
)

ALGOS = ("ppo", "a2c", "dqn", "maskable_ppo")
#: The algorithms built on PPO (rollouts of n_steps, minibatches, epochs).
PPO_LIKE = ("ppo", "maskable_ppo")


@dataclass
class SB3Args(TrainArgs):
    """Arguments of SB3 training (every field is a ``--flag`` of the CLI); the shared ones (data,
    budget, run) are :class:`~agents.common.TrainArgs`'. With ``num_envs`` envs in SB3's
    ``DummyVecEnv``, one vectorised step is ``num_envs`` clicks; PPO and A2C round the budget up
    to whole rollouts.

    Fields left at ``None`` take the per-algorithm default of :data:`ALGO_DEFAULTS`, chosen for a
    budget of 2,000 to 5,000 answers on a CPU.
    """

    bounds: ClassVar[dict[str, Bound]] = {
        **TrainArgs.bounds,
        "lr": Bound(0, low_open=True, unset="the algorithm's default"),
        "n_steps": Bound(1, integer=True, unset="the algorithm's default"),
        "batch_size": Bound(1, integer=True, unset="the algorithm's default"),
        "ent_coef": NON_NEGATIVE, "vf_coef": NON_NEGATIVE, "n_epochs": COUNT,
        "learning_starts": NON_NEGATIVE_COUNT, "train_freq": COUNT, "gradient_steps": COUNT,
        "target_update_interval": COUNT, "exploration_fraction": SHARE,
        "exploration_final_eps": SHARE, "channels": Bound(2, integer=True), "log_every": COUNT}

    algo: Literal["ppo", "a2c", "dqn", "maskable_ppo"] = "ppo"
    """SB3 algorithm; maskable_ppo is sb3-contrib's MaskablePPO, which never samples a click that
    would change nothing or that the expert rejected earlier in the episode"""
    lr: float | None = None
    """learning rate (unset: ppo and maskable_ppo 1e-3, a2c 1e-3, dqn 5e-4)"""
    gamma: float = 0.0
    """discount of later answers; 0 because the expert judges each click on its own"""
    ent_coef: float = 0.01
    """PPO/A2C: entropy bonus, against early collapse onto one click"""
    vf_coef: float = 0.5
    """PPO/A2C: weight of the value loss"""
    n_steps: int | None = None
    """PPO/A2C: steps per env per rollout (unset: ppo 16, a2c 1)"""
    batch_size: int | None = None
    """PPO: minibatch size; DQN: replay batch size (unset: ppo 64, dqn 32)"""
    n_epochs: int = 4
    """PPO: passes over each rollout"""
    use_rms_prop: bool = False
    """A2C: RMSprop (SB3's default) instead of Adam; Adam learns faster on this budget"""
    buffer_size: int = 10_000
    """DQN: replay buffer size in clicks (capped at total_answers; 64 KB per click)"""
    learning_starts: int = 200
    """DQN: clicks of uniform exploration before the first update"""
    train_freq: int = 1
    """DQN: vectorised steps between updates"""
    gradient_steps: int = 2
    """DQN: gradient steps per update"""
    target_update_interval: int = 500
    """DQN: clicks between target-network copies (irrelevant when gamma=0)"""
    exploration_fraction: float = 0.4
    """DQN: share of training over which epsilon decays from 1"""
    exploration_final_eps: float = 0.05
    """DQN: final epsilon"""
    obs: Literal["pixels", "features", "belief"] = "pixels"
    """what the policy reads: pixels (the env's observation, PatchGridExtractor), features
    (PatchFeatureObservation: each patch's backbone features and what a click there would reach,
    PatchFeatureExtractor) or belief (BeliefObservation: features, propagation graph and the
    episode's answered clicks; BeliefExtractor scores each click by its Dice gain against a
    learned belief of the lesion, updated by those answers; PPO and A2C only)"""
    width: int = 32
    """channels of the features extractor (hidden units per patch with obs=features or belief)"""
    channels: int = 8
    """feature channels per patch (features = channels x 16 x 16); the first two are the logits"""
    head: Literal["patch", "dense"] = "patch"
    """patch: SB3's linear head tied to the identity on the first two feature channels (a 1x1-conv
    head shared by all patches); dense: SB3's own trainable linear head over all features"""
    aux_coef: float = 0.0
    """obs=belief: weight of the auxiliary loss of predicting the expert's answers from the belief
    (AnswerPredictionCallback, on replayed answered clicks); 0 turns it off"""
    aux_steps: int = 8
    """obs=belief: replayed minibatches of 32 answered clicks per vectorised step for that loss"""
    posterior_steps: int = 20
    """obs=belief: Adam steps of the within-episode fit of the belief to the episode's answers"""
    avoid_rejected: bool = True
    """the returned policy masks clicks (label, patch) the expert rejected earlier in the episode"""
    log_every: int = 128
    """clicks between points of the TensorBoard/CSV logs (rounded to whole rollouts/episodes)"""
    vector_env: str = "native"
    """how the num_envs training envs are stepped: native (the env's batched vector env through
    bow_gym.sb3_vec, in one process, every obs and reward) or sync (SB3's DummyVecEnv of single
    envs); both train the same weights under a seed"""

    def run_folder(self) -> Path:
        """:attr:`out`, or ``runs/sb3-<algo>``."""
        return Path(self.out if self.out is not None else f"runs/sb3-{self.algo}")

    def validate(self) -> None:
        """:meth:`TrainDataArgs.validate`, the choices, and what needs what (also SB3's own
        assertions, which would otherwise fail after the run folder is made).

        Raises:
            ArgumentValueError: For the first bad field.
        """
        super().validate()
        for name, allowed in (("algo", ALGOS), ("obs", ("pixels", "features", "belief")),
                              ("head", ("patch", "dense"))):
            if getattr(self, name) not in allowed:
                raise ArgumentValueError(name, f"must be one of {allowed}, got "
                                               f"{getattr(self, name)!r}")
        if self.obs == "belief" and self.algo == "dqn":
            raise ArgumentValueError("obs", "'belief' needs algo 'ppo', 'maskable_ppo' or 'a2c': "
                                            "its click scores are policy logits (alpha x Dice "
                                            "gain), not Q-values")
        if self.obs == "belief" and self.head != "patch":
            raise ArgumentValueError("obs", "'belief' needs head='patch': the extractor's outputs "
                                            "are the logits")
        if self.aux_coef and self.obs != "belief":
            raise ArgumentValueError("aux_coef", "needs obs='belief' (the belief predicts the "
                                                 f"answers), got obs={self.obs!r}")
        if self.algo in PPO_LIKE:
            # PPO normalises advantages per minibatch and per rollout, and SB3 asserts both
            # hold more than one click.
            defaults = ALGO_DEFAULTS[self.algo]
            batch = defaults["batch_size"] if self.batch_size is None else self.batch_size
            n_steps = defaults["n_steps"] if self.n_steps is None else self.n_steps
            if batch < 2:
                raise ArgumentValueError("batch_size", "must be >= 2 for ppo (advantages are "
                                                       f"normalised per minibatch), got {batch}")
            if n_steps * self.num_envs < 2:
                raise ArgumentValueError("n_steps", "must be >= 2 for ppo with one env "
                                         "(advantages are normalised per rollout of n_steps x "
                                         f"num_envs clicks), got {n_steps}")


#: Per-algorithm defaults of the ``None`` fields of :class:`SB3Args`, tuned briefly on 2,000
#: answers of the synthetic data, one seed (see docs/agents.md).
ALGO_DEFAULTS: dict[str, dict[str, Any]] = {
    # 8 envs x 16 steps = 128 clicks per rollout, 4 epochs of 2 minibatches of 64; a larger lr
    # and 8 epochs (twice the time) were no better.
    "ppo": {"lr": 1e-3, "n_steps": 16, "batch_size": 64},
    # A2C has no epochs or minibatches, so the number of updates is what matters: one per
    # vectorised step did much better than one per two.
    "a2c": {"lr": 1e-3, "n_steps": 1, "batch_size": None},
    # Two gradient steps of 32 per 8 clicks: as good as 64 at half the time.
    "dqn": {"lr": 5e-4, "n_steps": None, "batch_size": 32},
}
# PPO's settings: the two differ only in which clicks they may sample.
ALGO_DEFAULTS["maskable_ppo"] = ALGO_DEFAULTS["ppo"]


def resolved(args: SB3Args) -> dict[str, Any]:
    """The hyper-parameters of ``args`` with the per-algorithm defaults filled in.

    Raises:
        ArgumentValueError: If ``args`` fails :meth:`SB3Args.validate`.
    """
    args.validate()
    out = asdict(args)
    for key, value in ALGO_DEFAULTS[args.algo].items():
        if out[key] is None:
            out[key] = value
    out["out"] = str(args.run_folder())
    return out


# ---------------------------------------------------------------------------- features extractor
class PatchGridExtractor(BaseFeaturesExtractor):
    """Fully convolutional features on the backbone's patch grid, flattened channel-major.

    The answer to "where should I click?" is a location, and the action space is (label, patch):
    the extractor therefore keeps the spatial layout down to the patch grid instead of pooling it
    away (SB3's ``NatureCNN`` ends in a dense layer over a global feature, which has to relearn
    which input location each action means). A 2 x 2 average pool, then stride-2 convolutions
    with a 4 x 4 kernel halve the observation until one position is one 8 x 8 cell (the
    receptive fields are centred on the cells); two residual 3 x 3 blocks (dilation 1 and 2) add
    neighbourhood context; a global mean, passed through a linear layer and added back to every
    position, adds image-level context (how much is masked already, the lesion's colour) without
    losing where each feature sits. Two coordinate channels are appended to the input because
    lesions are not uniformly placed and a convolution alone cannot see where it is.

    The output ``(channels, gh, gw)`` is flattened channel-major, so feature ``c * P + p`` is
    channel ``c`` of patch ``p``: channels 0 and 1 line up with the patch actions
    ``label * P + p`` of :class:`~bow_gym.wrappers.PatchActions`, which is what
    :func:`tie_patch_head` relies on. SB3 has already scaled the uint8 observation to [0, 1].

    Args:
        observation_space: ``Box(0, 255, (C, H, W), uint8)``, channel first.
        grid: The backbone's patch grid ``(gh, gw)``; ``H`` and ``W`` must be multiples of it.
        width: Convolution channels.
        channels: Output channels per patch (at least 2: the two labels' logits come first).
        zero_init_logits: Start the two logit channels at zero, so an untrained policy with a
            tied head clicks uniformly at random (and DQN's Q-values start at 0).
    """

    def __init__(self, observation_space: spaces.Box, grid: tuple[int, int] | list[int] = (16, 16),
                 width: int = 32, channels: int = 8, zero_init_logits: bool = True):
        c, h, w = observation_space.shape
        gh, gw = (int(g) for g in grid)
        if h % gh or w % gw:
            raise ValueError(f"observation {h}x{w} is not a multiple of the patch grid {gh}x{gw}")
        if channels < 2:
            raise ValueError(f"channels must be >= 2 (two label logits), got {channels}")
        super().__init__(observation_space, features_dim=channels * gh * gw)
        self.grid = (gh, gw)
        # Halve while the result still holds whole cells; an odd factor left over (e.g. a 14 x 14
        # grid at 224) is averaged away exactly per cell in forward().
        fh, fw, n_down = h // gh, w // gw, 0
        while fh % 2 == 0 and fw % 2 == 0:
            fh, fw, n_down = fh // 2, fw // 2, n_down + 1
        # The first halving is an average pool: the image is smooth at the scale of a pixel pair
        # and a convolution at full resolution would cost as much as the rest of the network.
        self.pool = 2 if n_down else 1
        layers: list[nn.Module] = []
        c_in = c + 2
        for i in range(n_down - 1):
            c_out = width // 2 if i == 0 and n_down > 2 else width
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                       _norm(c_out), nn.SiLU()]
            c_in = c_out
        if c_in != width:
            layers += [nn.Conv2d(c_in, width, 1, bias=False), _norm(width), nn.SiLU()]
        self.down = nn.Sequential(*layers)
        self.context = nn.ModuleList([_residual(width, d) for d in (1, 2)])
        self.global_context = nn.Sequential(nn.Linear(width, width), nn.SiLU())
        self.head = nn.Conv2d(width, channels, 1)
        if zero_init_logits:
            with torch.no_grad():
                self.head.weight[:2].zero_()
                self.head.bias[:2].zero_()

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        x = observations.float()
        b, _, h, w = x.shape
        ys = torch.linspace(-1, 1, h, device=x.device).view(1, 1, h, 1).expand(b, 1, h, w)
        xs = torch.linspace(-1, 1, w, device=x.device).view(1, 1, 1, w).expand(b, 1, h, w)
        x = torch.cat([x, ys, xs], dim=1)
        if self.pool > 1:
            x = nn.functional.avg_pool2d(x, self.pool)
        x = self.down(x)
        if tuple(x.shape[-2:]) != self.grid:
            x = nn.functional.adaptive_avg_pool2d(x, self.grid)
        for block in self.context:
            x = x + block(x)
        x = x + self.global_context(x.mean(dim=(2, 3)))[:, :, None, None]
        return self.head(x).flatten(1)


class PatchFeatureExtractor(BaseFeaturesExtractor):
    """Per-patch features from :class:`~bow_gym.wrappers.PatchFeatureObservation`, flattened
    channel-major like :class:`PatchGridExtractor` (so :func:`tie_patch_head` applies).

    Every patch's row (backbone features, coordinates, mask and reach shares) is standardised
    by running statistics (SB3 does not scale float observations) and passed through one small
    MLP shared by all patches; the mean over patches, through a linear layer, is added back as
    image-level context (how much is masked, what the image's patches look like overall).

    Args:
        observation_space: ``Box((P, D), float32)``.
        width: Hidden units per patch.
        channels: Output channels per patch (at least 2: the two labels' logits come first).
        zero_init_logits: Start the two logit channels at zero (uniform first clicks).
    """

    def __init__(self, observation_space: spaces.Box, width: int = 32, channels: int = 8,
                 zero_init_logits: bool = True):
        if len(observation_space.shape) != 2:
            raise ValueError("PatchFeatureExtractor reads (patches, features) observations, got "
                             f"shape {observation_space.shape}")
        if channels < 2:
            raise ValueError(f"channels must be >= 2 (two label logits), got {channels}")
        p, d = observation_space.shape
        super().__init__(observation_space, features_dim=channels * p)
        # BatchNorm is safe here (unlike in the convolutional extractor): it normalises the P
        # rows of every observation, so even a single observation is a batch of P.
        self.norm = nn.BatchNorm1d(d, affine=False)
        self.body = nn.Sequential(nn.Linear(d, width), nn.SiLU(), nn.Linear(width, width),
                                  nn.SiLU())
        self.global_context = nn.Sequential(nn.Linear(width, width), nn.SiLU())
        self.head = nn.Linear(width, channels)
        if zero_init_logits:
            with torch.no_grad():
                self.head.weight[:2].zero_()
                self.head.bias[:2].zero_()

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        b, p, d = observations.shape
        h = self.body(self.norm(observations.float().reshape(b * p, d))).reshape(b, p, -1)
        h = h + self.global_context(h.mean(1))[:, None]
        return self.head(h).transpose(1, 2).flatten(1)


class BeliefExtractor(BaseFeaturesExtractor):
    """Click logits from a learned belief of the lesion, read from
    :class:`~bow_gym.wrappers.BeliefObservation` (REINFORCE's ``belief`` policy, inside SB3).

    A small MLP shared by all patches gives each patch a belief logit
    (:class:`agents.belief.BeliefPolicyNet`); offsets fitted to the episode's answered clicks
    in the observation (:func:`agents.belief.fit_episode_offsets`, no gradient through the fit)
    update it, ``q = sigmoid(logit + offset)``. The logit of click ``(label, p)`` is ``alpha``
    times the Dice gain it would make against ``q``, so PPO's or A2C's policy gradient trains
    the belief, and :class:`AnswerPredictionCallback` can train it on the answers directly.

    A click that would not change the mask scores ``-alpha`` (a Dice loss of 1), below every
    other. The output is the ``2P`` click logits, channel-major like the other extractors (label
    ``l`` of patch ``p`` at ``l * P + p``, for :func:`tie_patch_head`), then the mean patch
    embedding (``width`` values) for SB3's value head.

    Args:
        observation_space: ``Box((P, D + 4 + P + 2K), float32)``.
        clicks: ``K``, the episode's click budget (the history columns of the observation).
        width: Hidden units per patch.
        posterior_steps: Adam steps of the within-episode fit (0: no update within an episode).
    """

    def __init__(self, observation_space: spaces.Box, clicks: int = 5, width: int = 64,
                 posterior_steps: int = 20):
        if len(observation_space.shape) != 2:
            raise ValueError("BeliefExtractor reads (patches, columns) observations, got shape "
                             f"{observation_space.shape}")
        p, c = observation_space.shape
        d = c - p - 2 * clicks - 2
        if d < 1:
            raise ValueError(f"a ({p}, {c}) observation has no feature columns left for "
                             f"{clicks} clicks: expected (P, D + 4 + P + 2K)")
        super().__init__(observation_space, features_dim=2 * p + width)
        self.clicks, self.posterior_steps = int(clicks), int(posterior_steps)
        self.net = BeliefPolicyNet(width)
        # Materialise the lazy layers now: SB3 builds its optimizer right after the extractor.
        self.net.eval()
        with torch.no_grad():
            self.net.belief(torch.zeros(1, p, d))
        self.net.train()

    def belief(self, observations: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``q`` ``(B, P)`` after the episode's answers, the embeddings ``(B, P, width)``, the
        mask ``(B, P)`` and the graph ``(B, P, P)`` of a batch of observations."""
        features, m, graph, before, after, answers = split_belief_observation(
            observations.float(), self.clicks)
        z, h = self.net.belief(features)
        weights = (answers != 0).float()
        with torch.enable_grad():  # SB3 collects rollouts under no_grad; the fit needs gradients
            local, shift = fit_episode_offsets(
                z.detach(), before, after, (answers > 0).float(), self.net.log_kappa.exp(),
                self.net.beta, weights=weights, steps=self.posterior_steps)
        return torch.sigmoid(z + local + shift[:, None]), h, m, graph

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        q, h, m, graph = self.belief(observations)
        after = masks_after_clicks(m, graph)  # (B, 2, P, P)
        gain = soft_dice(after, q[:, None, None]) - soft_dice(m, q)[:, None, None]
        # A click that changes nothing is always "worse", yet its gain is 0 whatever the belief:
        # score it as the worst possible click (-1), so it is never chosen while any other is
        # left (the REINFORCE belief policy masks it; SB3's PPO cannot mask actions).
        changed = (after - m[:, None, None]).abs().sum(-1) > 0
        gain = torch.where(changed, gain, -1.0)
        return torch.cat([self.net.log_alpha.exp() * gain.flatten(1), h.mean(1)], dim=1)

    def answer_nll(self, features: torch.Tensor, before: torch.Tensor, after: torch.Tensor,
                   answers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Negative log-likelihood (mean) of answered clicks ``before -> after`` (``(B, P)``
        masks; ``answers`` 1.0 / 0.0) under the belief without offsets, and the predicted
        logits."""
        q = torch.sigmoid(self.net.belief(features)[0])
        logit = answer_logits(q, before, after, self.net.log_kappa.exp(), self.net.beta)
        return nn.functional.binary_cross_entropy_with_logits(logit, answers), logit


def _norm(c: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: PPO and DQN switch between single observations and minibatches.
    return nn.GroupNorm(math.gcd(8, c), c)


def _residual(c: int, dilation: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c, c, 3, padding=dilation, dilation=dilation, bias=False), _norm(c), nn.SiLU(),
        nn.Conv2d(c, c, 3, padding=1, bias=False), _norm(c), nn.SiLU(),
    )


def policy_kwargs(algo: str, grid: tuple[int, int], width: int = 32, channels: int = 8,
                  head: str = "patch", obs: str = "pixels", clicks: int = 5,
                  posterior_steps: int = 20) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` that plug :class:`PatchGridExtractor` (``obs="pixels"``),
    :class:`PatchFeatureExtractor` (``obs="features"``) or :class:`BeliefExtractor`
    (``obs="belief"``, with the episode's ``clicks`` and ``posterior_steps``) into ``algo``'s
    policy.

    ``net_arch`` is empty so the action head reads the per-patch features directly; SB3's
    default MLP (64 units) would squeeze 2,048 located features through a bottleneck that
    forgets where they came from. With the tied ``"patch"`` head SB3's orthogonal initialisation
    is turned off so the zero-initialised logit channels stay zero (uniform first clicks).
    """
    if head not in ("patch", "dense"):
        raise ValueError(f"head must be 'patch' or 'dense', got {head!r}")
    if obs not in ("pixels", "features", "belief"):
        raise ValueError(f"obs must be 'pixels', 'features' or 'belief', got {obs!r}")
    extractor_kwargs: dict[str, Any] = {"width": width, "channels": channels,
                                        "zero_init_logits": head == "patch"}
    if obs == "pixels":
        extractor_kwargs["grid"] = tuple(grid)
    if obs == "belief":
        extractor_kwargs = {"width": width, "clicks": clicks, "posterior_steps": posterior_steps}
    extractors = {"pixels": PatchGridExtractor, "features": PatchFeatureExtractor,
                  "belief": BeliefExtractor}
    kwargs: dict[str, Any] = {
        "features_extractor_class": extractors[obs],
        "features_extractor_kwargs": extractor_kwargs,
    }
    if algo == "dqn":
        kwargs["net_arch"] = []
    else:
        kwargs["net_arch"] = {"pi": [], "vf": []}
        kwargs["ortho_init"] = head == "dense"
    return kwargs


def _action_heads(policy: BasePolicy) -> list[nn.Linear]:
    if hasattr(policy, "action_net"):
        return [policy.action_net]
    # DQN: the last layer of the online and the target Q-network.
    return [policy.q_net.q_net[-1], policy.q_net_target.q_net[-1]]


def tie_patch_head(policy: BasePolicy) -> None:
    """Fix SB3's linear action head to ``logit[label * P + p] = feature[label * P + p]``.

    The head then only routes channel ``label`` of patch ``p`` to action ``(label, p)``, and is
    frozen, so what is learnt is the extractor's 1 x 1 conv: one set of weights shared by all 256
    patches instead of a dense 2,048 x 512 matrix that would have to discover locality from a few
    thousand answers. Applied again by :meth:`SB3ClickPolicy.load`; after ``PPO.load`` of the
    ``.zip`` the weights are the same, call it again to keep the head frozen in further training.
    """
    for linear in _action_heads(policy):
        n = linear.out_features
        if linear.in_features < n:
            raise ValueError(f"a {linear.in_features}-feature head cannot be tied to {n} actions")
        with torch.no_grad():
            linear.weight.zero_()
            linear.weight[:, :n] = torch.eye(n)
            linear.bias.zero_()
        linear.requires_grad_(False)


# ---------------------------------------------------------------------------- the click policy
class SB3ClickPolicy(ClickPolicy):
    """A trained SB3 policy as a :class:`~agents.ClickPolicy` on the pixel-action env.

    Scores the ``2 x P`` patch actions (PPO/A2C: the policy's logits; DQN: Q-values), masks the
    (label, patch) clicks the expert rejected earlier in this episode (repeating one cannot help:
    with ``on_worse="revert"`` the state is unchanged, so a greedy policy would repeat it for the
    rest of the episode), takes the argmax (or samples, ``greedy=False``) and returns the env's
    *pixel* action at the centre of the patch, like :class:`~bow_gym.wrappers.PatchActions`. Run
    it on an env without ``PatchActions``, as :func:`agents.run_episode` does with every policy.

    Args:
        policy: The SB3 policy (``model.policy``).
        algo: One of :data:`ALGOS`; also the policy's :attr:`name`. ``"maskable_ppo"`` also
            masks the clicks that would change nothing, as in its training.
        spec: What :meth:`load` needs to rebuild ``policy`` (written into checkpoints).
        avoid_rejected: Mask clicks rejected earlier in the episode.
        greedy: Argmax; otherwise sample from ``softmax(scores / temperature)``.
        temperature: Sampling temperature.
        seed: Seeds the sampling generator (reseeded by ``reset(seed)``).
    """

    reads_ground_truth: ClassVar[bool] = False
    checkpoint_kind: ClassVar[str] = "sb3"

    def __init__(self, policy: BasePolicy, algo: str, spec: dict[str, Any], *,
                 avoid_rejected: bool = True, greedy: bool = True, temperature: float = 1.0,
                 seed: int | None = None):
        if algo not in ALGOS:
            raise ValueError(f"algo must be one of {ALGOS}, got {algo!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.policy, self.algo, self.spec = policy, algo, spec
        self.name = algo  # type: ignore[misc]  # the algo is this policy's name in tables
        self.avoid_rejected, self.greedy, self.temperature = avoid_rejected, greedy, temperature
        self.n_actions = int(policy.action_space.n)
        self.generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        self.model: Any = None  # the SB3 model when trained in this process (for more training)
        self.metadata: dict[str, str] = {}
        self._rejected: set[int] = set()
        # obs=belief: the episode's answered clicks, and the click waiting for its answer
        self._history = ClickHistory(int(spec.get("clicks", 5)))
        self._pending: tuple[np.ndarray, np.ndarray, int] | None = None
        self.checkpoint: str | None = None  # the file it was loaded from, for errors

    def check_env(self, env: BetterWorseSegEnv) -> None:
        """Refuse an env whose patch actions or observation shape (pixels, patch features or
        belief rows, as in training) differ from the policy's."""
        from bow_gym.wrappers import PatchFeatureObservation

        obs = self.spec.get("obs", "pixels")
        if obs == "pixels":
            shape = env.observation_space.shape
        elif obs == "features":
            shape = PatchFeatureObservation(env).observation_space.shape
        else:  # BeliefObservation's rows, with the policy's own click history (spec["clicks"])
            p = env.n_patches
            shape = (p, env.backbone.dim + 4 + p + 2 * self._history.clicks)
        check_env_fits(self, {
            "patch actions": (self.n_actions, 2 * env.n_patches,
                              f"2 labels x the {env.grid} patch grid of backbone "
                              f"{env.backbone.name!r}"),
            f"{obs} observations of shape": (tuple(self.policy.observation_space.shape),
                                             tuple(shape),
                                             f"backbone {env.backbone.name!r}, "
                                             f"include_clicks={env.include_clicks}")})

    @torch.no_grad()
    def scores(self, obs: np.ndarray) -> torch.Tensor:
        """Scores ``(2P,)`` of the patch actions for one observation (before masking)."""
        self.policy.set_training_mode(False)
        x, _ = self.policy.obs_to_tensor(np.asarray(obs))
        if self.algo == "dqn":
            s = self.policy.q_net(x)
        else:
            s = self.policy.get_distribution(x).distribution.logits
        return s[0].float().cpu()

    def reset(self, seed: int | None = None) -> None:
        self._rejected = set()
        self._history.reset()
        self._pending = None
        if seed is not None:
            self.generator.manual_seed(int(seed))

    def act(self, obs: np.ndarray, info: dict[str, Any], env: BetterWorseSegEnv,
            ground_truth: np.ndarray | None = None) -> int:
        if 2 * env.n_patches != self.n_actions:
            self.check_env(env)
        if self.spec.get("obs") == "features":
            obs = patch_policy_inputs(obs, env)
        elif self.spec.get("obs") == "belief":
            obs = belief_observation(obs, env, self._history)
        s = self.scores(obs)
        if self.algo == "maskable_ppo":  # trained never to take them: they have no learnt score
            valid = current_changing_clicks(env)
            if valid.any():
                s[~torch.as_tensor(valid)] = -torch.inf
        if self.avoid_rejected and self._rejected and len(self._rejected) < self.n_actions:
            s[list(self._rejected)] = -torch.inf
        if self.greedy:
            a = int(torch.argmax(s))
        else:
            probs = torch.softmax(s / self.temperature, dim=0)
            a = int(torch.multinomial(probs, 1, generator=self.generator))
        if self.spec.get("obs") == "belief":
            _, m, graph, *_ = split_belief_observation(obs, self._history.clicks)
            self._pending = (m, graph[a % env.n_patches], a // env.n_patches)
        return patch_to_pixel_action(env, a)

    def observe(self, action: int, reward: float, terminated: bool, info: dict[str, Any]) -> None:
        if self._pending is not None:
            self._history.add(*self._pending, reward)
            self._pending = None
        if reward < 0 and "patch" in info and "click" in info:
            n_patches = self.n_actions // 2
            self._rejected.add(int(info["click"]["label"]) * n_patches + int(info["patch"]))

    def evaluation_mode(self) -> SB3ClickPolicy:
        """Argmax clicks (the default)."""
        self.greedy = True
        return self

    # -------------------------------------------------------------- checkpoints
    def save(self, path: str | os.PathLike) -> None:
        """Policy weights as safetensors (atomic); algo, spec and metadata in its header."""
        meta = {**self.metadata, "agent": "sb3", "algo": self.algo, "spec": json.dumps(self.spec)}
        # save_tensors copies each tensor: PPO's actor and critic share one extractor, and
        # loading copies each key back into the shared module.
        save_tensors(path, self.policy.state_dict(), meta)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu", **overrides: Any) -> SB3ClickPolicy:
        """A policy from a :meth:`save` checkpoint (``overrides``: acting options such as
        ``greedy``, ``avoid_rejected``, ``temperature``, ``seed``)."""
        # On the CPU: load_state_dict copies the weights to wherever the policy lives.
        what = "SB3 checkpoint"
        state, meta, decoded = load_checkpoint(path, what, "cpu", agent=cls.checkpoint_kind,
                                               keys=("algo",), json_keys=("spec",))
        try:
            policy = build_policy(meta["algo"], decoded["spec"], device=device)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: its spec metadata does not describe an SB3 policy "
                             f"({type(e).__name__}: {e})") from e
        load_state_checked(policy, state, path, what)
        acting = {"avoid_rejected": json.loads(meta.get("avoid_rejected", "true"))}
        agent = agent_from_checkpoint(cls, path, acting, overrides, policy=policy,
                                      algo=meta["algo"], spec=decoded["spec"])
        agent.checkpoint = str(path)
        agent.metadata = {k: v for k, v in meta.items() if k not in ("agent", "algo", "spec")}
        return agent


def build_policy(algo: str, spec: dict[str, Any], device: str = "cpu") -> BasePolicy:
    """An SB3 policy with the architecture of ``spec`` (as written by :func:`train_sb3`)."""
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.dqn.policies import DQNPolicy

    obs = spec.get("obs", "pixels")  # checkpoints from before obs=features read pixels
    obs_space = (spaces.Box(0, 255, tuple(spec["obs_shape"]), np.uint8) if obs == "pixels" else
                 spaces.Box(-np.inf, np.inf, tuple(spec["obs_shape"]), np.float32))
    act_space = spaces.Discrete(int(spec["n_actions"]))
    kwargs = policy_kwargs(algo, tuple(spec["grid"]), spec["width"], spec["channels"], spec["head"],
                           obs, spec.get("clicks", 5), spec.get("posterior_steps", 20))
    if algo == "maskable_ppo":
        from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy

        cls: type[BasePolicy] = MaskableActorCriticPolicy
    else:
        cls = DQNPolicy if algo == "dqn" else ActorCriticPolicy
    policy = cls(obs_space, act_space, lambda _: 0.0, **kwargs)
    if spec["head"] == "patch":
        tie_patch_head(policy)
    return policy.to(device)


# ---------------------------------------------------------------------------- logging
class ClickHistoryCallback(BaseCallback):
    """Records the learning curve per vectorised step (one click per env) and logs it.

    ``history`` has the keys of :func:`agents.reinforce.train`'s: ``clicks`` (so far),
    ``reward`` (mean answer of the step's clicks) and ``better_share`` (share answered "better").
    ``charts/reward`` and ``charts/better_share`` go to SB3's logger as means between dumps.
    """

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[str, list[float]] = {"clicks": [], "reward": [], "better_share": []}

    def _on_step(self) -> bool:
        rewards = np.asarray(self.locals["rewards"], dtype=np.float64)
        mean_r, better = float(rewards.mean()), float((rewards > 0).mean())
        self.history["clicks"].append(int(self.num_timesteps))
        self.history["reward"].append(mean_r)
        self.history["better_share"].append(better)
        self.logger.record_mean("charts/reward", mean_r)
        self.logger.record_mean("charts/better_share", better)
        return True


class AnswerPredictionCallback(BaseCallback):
    """The auxiliary task of :class:`BeliefExtractor`: predict the expert's answers.

    After every vectorised step it stores each env's answered click (the patch features, the
    mask before and the mask the click proposed, the answer; clicks that changed nothing are
    skipped) in a replay buffer, then takes
    ``steps`` gradient steps of ``coef`` times the answers' negative log-likelihood under the
    belief (:meth:`BeliefExtractor.answer_nll`) with the model's own optimizer. The policy
    gradient alone learns the belief slowly from a +1/-1 per click; predicting every answer
    gives it a dense signal (a reward-prediction task in the sense of UNREAL, Jaderberg et al.
    2017). Everything it reads is in the observation or the reward: no ground truth.

    Args:
        coef: Weight of the loss.
        steps: Replayed minibatches per vectorised step.
        batch_size: Answered clicks per minibatch.
        capacity: Clicks the replay buffer keeps.
        seed: Seeds the replay sampling.
    """

    def __init__(self, coef: float = 1.0, steps: int = 8, batch_size: int = 32,
                 capacity: int = 50_000, seed: int = 0):
        super().__init__()
        self.coef, self.steps, self.batch_size = coef, steps, batch_size
        self.replay = ReplayBuffer(capacity)
        self.rng = np.random.default_rng(seed)

    def _extractor(self) -> BeliefExtractor:
        extractor = self.model.policy.features_extractor
        if not isinstance(extractor, BeliefExtractor):
            raise TypeError("AnswerPredictionCallback trains a BeliefExtractor (obs='belief'), got "
                            f"{type(extractor).__name__}")
        return extractor

    def _on_step(self) -> bool:
        extractor = self._extractor()
        obs = np.asarray(self.model._last_obs)  # SB3 updates it after the callback: pre-step
        for x, a, r in zip(obs, np.asarray(self.locals["actions"]).reshape(-1),
                           np.asarray(self.locals["rewards"]), strict=True):
            features, m, graph, *_ = split_belief_observation(x, extractor.clicks)
            label, patch = divmod(int(a), len(m))
            after = mask_after_click(torch.as_tensor(m), torch.as_tensor(graph[patch]), label)
            if torch.equal(after, torch.as_tensor(m)):
                continue  # a click that changed nothing says nothing about the lesion
            self.replay.add(None, features, m.copy(), after.numpy().astype(np.float32),
                            1.0 if r > 0 else 0.0)
        if len(self.replay) < self.batch_size:
            return True
        policy = self.model.policy
        was_training = policy.training
        policy.set_training_mode(True)
        for _ in range(self.steps):
            batch = [torch.as_tensor(t, device=policy.device)
                     for t in self.replay.sample(self.rng, self.batch_size)]
            nll, logit = extractor.answer_nll(*batch)
            policy.optimizer.zero_grad(set_to_none=True)
            (self.coef * nll).backward()
            nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            policy.optimizer.step()
        policy.set_training_mode(was_training)
        self.replay.updates += self.steps
        self.logger.record_mean("losses/answer_nll", nll.item())
        self.logger.record_mean("charts/answer_accuracy",
                                float(((logit > 0).float() == batch[-1]).float().mean()))
        return True


#: SB3's logger keys -> the project's TensorBoard tags (``charts/...``, ``losses/...``).
_TAG_NAMES = {
    "time/fps": "charts/clicks_per_s",
    "rollout/ep_rew_mean": "charts/episode_reward",
    "rollout/exploration_rate": "charts/epsilon",
    "train/policy_gradient_loss": "losses/policy",
    "train/value_loss": "losses/value",
    "train/entropy_loss": "losses/entropy_loss",
    "train/loss": "losses/loss",
    "train/approx_kl": "losses/approx_kl",
    "train/clip_fraction": "losses/clip_fraction",
}


def tag_name(key: str) -> str:
    """The project's tag for an SB3 logger key (``train/*`` -> ``losses/*``, else ``charts/*``)."""
    if key in _TAG_NAMES:
        return _TAG_NAMES[key]
    prefix, _, rest = key.partition("/")
    if prefix in ("charts", "losses") or not rest:
        return key
    return f"losses/{rest}" if prefix == "train" and rest.endswith("loss") else f"charts/{rest}"


class RenamedOutput(KVWriter):
    """An SB3 output format that renames keys with :func:`tag_name` before writing."""

    def __init__(self, inner: KVWriter):
        self.inner = inner

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]],
              step: int = 0) -> None:
        self.inner.write({tag_name(k): v for k, v in key_values.items()},
                         {tag_name(k): v for k, v in key_excluded.items()}, step)

    def close(self) -> None:
        self.inner.close()


def make_logger(out: Path, tensorboard: bool) -> Logger:
    """SB3 logger: ``<out>/progress.csv`` always, TensorBoard in ``<out>/tb`` if asked."""
    formats = [RenamedOutput(make_output_format("csv", str(out)))]
    if tensorboard:
        try:
            import tensorboard as _  # noqa: F401

            formats.append(RenamedOutput(make_output_format("tensorboard", str(out / "tb"))))
        except ImportError:
            print("tensorboard is not installed (pip install tensorboard): logging to CSV only")
    return Logger(str(out), formats)


# ---------------------------------------------------------------------------- training
def make_vec_env(args: SB3Args, n: int):
    """The ``n`` training envs as an SB3 ``VecEnv`` (``args.vector_env`` says which).

    ``native``: ``VecMonitor(SB3VecEnv(...))`` over the env's batched vector env
    (:mod:`bow_gym.sb3_vec`: patch actions, ``action_masks`` for MaskablePPO, the observation
    and reward ``args`` ask for, no ground truth in the infos). ``sync``: a ``DummyVecEnv`` of ``Monitor(PatchActions(StripEvalInfo(env)))``
    (with ``ClickMasks``, ``PatchFeatureObservation`` or ``BeliefObservation`` as the arguments
    ask) from :func:`agents.common.make_envs`, built here rather than with SB3's
    ``make_vec_env`` because the envs share one featurised data set, which ``make_vec_env``'s
    per-env factory would build ``n`` times. Either way: the seeded split, one data set and one
    backbone.
    """
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

    from bow_gym.sb3_vec import make_sb3_vec_env
    from bow_gym.wrappers import BeliefObservation, PatchActions, PatchFeatureObservation

    if args.vector_env == "native":
        return VecMonitor(make_sb3_vec_env(args.env_id, n, action_masks=args.algo == "maskable_ppo",
                                           avoid_rejected=args.avoid_rejected, obs=args.obs,
                                           reward=args.reward, **training_env_kwargs(args, n)))
    envs = [PatchActions(e) for e in make_envs(args, n)]  # type: ignore[arg-type]
    if args.algo == "maskable_ppo":
        envs = [ClickMasks(e, avoid_rejected=args.avoid_rejected) for e in envs]
    if args.obs == "features":
        envs = [PatchFeatureObservation(e) for e in envs]
    elif args.obs == "belief":
        envs = [BeliefObservation(e) for e in envs]
    envs = [Monitor(e) for e in envs]
    return DummyVecEnv([(lambda e=e: e) for e in envs])


def geometry(vec_env: Any) -> Any:
    """What :func:`make_vec_env`'s envs share (``grid``, ``n_patches``, ``clicks_per_episode``):
    the native vector env, or the first single env."""
    from bow_gym.sb3_vec import SB3VecEnv

    inner = vec_env.unwrapped  # below SB3's VecEnvWrappers (VecMonitor, ...)
    return inner.venv if isinstance(inner, SB3VecEnv) else inner.envs[0].unwrapped


def build_model(args: SB3Args, vec_env: Any, out: Path):
    """The SB3 model of ``args.algo`` with the project's extractor, defaults and logger."""
    from stable_baselines3 import A2C, DQN, PPO

    hp = resolved(args)
    base = geometry(vec_env)
    kwargs = policy_kwargs(args.algo, base.grid, args.width, args.channels, args.head, args.obs,
                           base.clicks_per_episode, args.posterior_steps)
    policy = "CnnPolicy" if args.obs == "pixels" else "MlpPolicy"  # the extractor is ours either way
    common = dict(learning_rate=hp["lr"], gamma=args.gamma, seed=args.seed, device=args.device,
                  policy_kwargs=kwargs, verbose=0)
    if args.algo in PPO_LIKE:
        cls: Any = PPO
        if args.algo == "maskable_ppo":
            try:
                from sb3_contrib import MaskablePPO
            except ImportError as e:
                raise ImportError("algo='maskable_ppo' needs sb3-contrib: pip install "
                                  "sb3-contrib") from e
            cls = MaskablePPO
        model = cls(policy, vec_env, n_steps=hp["n_steps"], batch_size=hp["batch_size"],
                    n_epochs=args.n_epochs, ent_coef=args.ent_coef, vf_coef=args.vf_coef, **common)
    elif args.algo == "a2c":
        model = A2C(policy, vec_env, n_steps=hp["n_steps"], ent_coef=args.ent_coef,
                    vf_coef=args.vf_coef, use_rms_prop=args.use_rms_prop, **common)
    else:
        # 64 KB per stored click: keep only what the run can fill, and store each observation
        # once (the env never truncates, so timeout handling is not needed).
        size = max(args.num_envs, min(args.buffer_size, args.total_answers + args.num_envs))
        model = DQN(policy, vec_env, buffer_size=size, learning_starts=args.learning_starts,
                    batch_size=hp["batch_size"], train_freq=args.train_freq,
                    gradient_steps=args.gradient_steps,
                    target_update_interval=args.target_update_interval,
                    exploration_fraction=args.exploration_fraction,
                    exploration_final_eps=args.exploration_final_eps,
                    optimize_memory_usage=True,
                    replay_buffer_kwargs={"handle_timeout_termination": False}, **common)
    if args.head == "patch":
        tie_patch_head(model.policy)
    model.set_logger(make_logger(out, args.tensorboard))
    return model


def train_sb3(args: SB3Args) -> tuple[SB3ClickPolicy, dict[str, list[float]]]:
    """Train ``args.algo`` on patch actions; returns the click policy and its learning curve.

    Writes ``<out>/agent.safetensors`` (policy weights; algo, architecture and arguments in the
    metadata), ``<out>/model.zip`` (SB3's own, for ``PPO.load``), ``args.json``,
    ``history.json``, ``progress.csv`` and TensorBoard logs under ``<out>/tb``.
    """
    from stable_baselines3.common.utils import set_random_seed

    hp = resolved(args)  # validates args: nothing is written for a refused value
    out = Path(hp["out"])
    set_random_seed(args.seed)
    vec_env = make_vec_env(args, args.num_envs)
    # Made only once the envs are built, so a data set that cannot be read leaves no folder.
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(args, vec_env, out)
    history_callback = ClickHistoryCallback()
    callback: list[BaseCallback] = [history_callback]
    if args.aux_coef > 0:
        callback.append(AnswerPredictionCallback(args.aux_coef, args.aux_steps, seed=args.seed))
    base = geometry(vec_env)
    # SB3 counts its log interval in rollouts (on-policy) or episodes (DQN), not in clicks.
    per_dump = base.clicks_per_episode if args.algo == "dqn" else hp["n_steps"] * args.num_envs
    log_interval = max(1, round(args.log_every / per_dump))
    t0 = time.time()
    model.learn(total_timesteps=args.total_answers, callback=callback, log_interval=log_interval,
                progress_bar=args.progress)
    seconds = time.time() - t0
    model.logger.dump(model.num_timesteps)  # what was recorded after SB3's last dump
    model.logger.close()

    spec = {"obs_shape": list(vec_env.observation_space.shape), "n_actions": 2 * base.n_patches,
            "grid": list(base.grid), "width": args.width, "channels": args.channels,
            "head": args.head, "obs": args.obs}
    if args.obs == "belief":
        spec.update(clicks=base.clicks_per_episode, posterior_steps=args.posterior_steps)
    agent = SB3ClickPolicy(model.policy, args.algo, spec, avoid_rejected=args.avoid_rejected,
                           seed=args.seed)
    agent.model = model
    agent.metadata = {"args": json.dumps(hp), "clicks": str(model.num_timesteps),
                      "train_seconds": f"{seconds:.1f}",
                      "avoid_rejected": json.dumps(args.avoid_rejected)}
    agent.save(out / "agent.safetensors")
    model.save(out / "model.zip")
    write_json(out / "args.json", hp)
    history = history_callback.history
    write_json(out / "history.json", history)
    vec_env.close()
    return agent, history


def main(argv: list[str] | None = None) -> None:
    """The command line: train, then print a summary (a refused argument exits with status 2)."""
    args = parse_cli(SB3Args, argv, "python -m agents.sb3", __doc__)
    agent, history = train_sb3(args)
    last = history["reward"][-max(1, len(history["reward"]) // 10):]
    out = Path(resolved(args)["out"])
    print(f"{agent.name}: trained {history['clicks'][-1]} clicks in "
          f"{agent.metadata['train_seconds']} s; mean reward over the last 10%: "
          f"{np.mean(last):+.3f}; checkpoint {out / 'agent.safetensors'}")


if __name__ == "__main__":
    main()
