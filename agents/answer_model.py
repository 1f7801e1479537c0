"""A model-based clicking agent: it learns to predict the expert's answers, then clicks where the
predicted Dice gain is largest.

Why another agent: a +1/-1 answer says *whether* a click helped, not *how much*. From an empty mask
every foreground click whose reach touches the lesion is "better", and most such clicks make a mask
far worse than the best one does (``python -m benchmarks.first_click`` measures both), so a policy
rewarded per "better" answer (REINFORCE, PPO, DQN) is not pushed towards the click that makes the
best mask; nor, on Kvasir-SEG, does REINFORCE find that click when rewarded by the Dice gain
itself (``reward=dice_gain``). The numbers are in docs/agents.md. This agent uses the answers as
data, and the task's structure as its model:

1. **Belief.** A per-patch foreground probability ``q``. By default (``belief="features"``) a
   small MLP reads each patch's backbone features (the ones propagation compares,
   :meth:`~bow_gym.envs.BetterWorseSegEnv.patch_features`) and its position; ``belief="context"``
   adds how the patch differs from the image's mean and from its neighbourhood
   (:func:`~bow_gym.wrappers.patch_context_inputs`); ``belief="image"`` uses a small U-Net over
   the RGB image (:class:`agents.unet.ClickUNet`, one output map), and ``belief="hybrid"`` the
   same U-Net over the image and the patch features together
   (:func:`~bow_gym.wrappers.image_feature_inputs`), and ``belief="residual"`` the feature MLP
   plus that U-Net as a correction that starts at zero. It never sees ground truth.
2. **Answer model.** With ``D(m; q) = 2 sum(m q) / (sum(m) + sum(q))`` the soft Dice of a mask
   ``m`` (foreground share per patch) against the belief, an answer is modelled as
   ``P(better) = sigmoid(kappa * (precision_q(added area) - D(m_before; q) / 2) - beta)`` for a
   foreground click (the Dice oracle's exact rule, softened; mirrored for background clicks), where
   the added area comes from the mask the click would make and its reach from the image's
   propagation graph (:meth:`~bow_gym.envs.BetterWorseSegEnv.propagation_graph`). ``kappa`` and
   ``beta`` (ties are "worse") are learned with the network by logistic loss on every answered click. It is a
   preference (Bradley-Terry-style) model of the expert, trained from a replay buffer, so each
   answer is reused many times.
3. **Within an episode** the answers so far also update per-patch offsets of the belief's logits
   and one image-wide offset (the same likelihood, a few gradient steps, Gaussian priors; the
   image-wide one nearly free): a rejected region is then believed to be background, so the next
   click does not retry it from another patch, and an image whose lesion is larger or smaller
   than the network thinks is corrected after a click or two (``global_offset``).
4. **Click** = the ``(label, patch)`` with the largest expected Dice after the click, among clicks
   that change the mask and were not rejected before; at the patch centre. While training,
   ``epsilon``-greedy exploration.

It shares :class:`~agents.ClickPolicy` with every other agent and learns online in :meth:`observe`
(``online_batch``), as the method's agent does while labelling. CLI::

    python -m agents.answer_model --total-answers 2000 --out runs/answer_model
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from agents.belief import (
    ReplayBuffer,
    answer_logits,
    fit_episode_offsets,
    masks_after_clicks,
    soft_dice,
)
from agents.common import (
    COUNT,
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
from bow_gym.policy import OnlineLearner
from bow_gym.segmenters import resolve_device
from bow_gym.wrappers import (
    image_feature_inputs,
    mask_shares,
    patch_context_inputs,
    patch_inputs,
    patch_to_pixel_action,
)


@dataclass
class AnswerModelArgs(TrainArgs):
    """Arguments of answer-model training (every field is a ``--flag`` of the CLI); the shared
    ones (data, budget, run) are :class:`~agents.common.TrainArgs`'."""

    bounds: ClassVar[dict[str, Bound]] = {
        **TrainArgs.bounds, "updates_per_step": COUNT, "epsilon": SHARE,
        "prior_weight": POSITIVE}
    default_out: ClassVar[str] = "runs/answer_model"

    lr: float = 1e-3
    """Adam learning rate of the belief network and the answer model"""
    batch_size: int = 32
    """answered clicks per gradient step, drawn from the replay buffer"""
    updates_per_step: int = 8
    """gradient steps per lockstep of ``num_envs`` clicks; 8 (one per click) was chosen on
    Kvasir-SEG validation images, away from the test part (``benchmarks.compare_policies
    --validation``; see docs/agents.md)"""
    buffer_size: int = 50000
    """answered clicks kept for replay (oldest dropped first)"""
    epsilon: float = 0.2
    """exploration while training: share of clicks drawn uniformly among the valid ones"""
    belief: str = "features"
    """belief network: features (MLP on each patch's backbone features and position), context
    (the same MLP, also reading how the patch differs from the image and its neighbourhood),
    image (U-Net on the RGB image), hybrid (U-Net on the image and the patch features) or
    residual (the feature MLP plus a hybrid U-Net correction that starts at zero)"""
    width: int = 16
    """U-Net channels at the first level (image, hybrid, residual) and MLP hidden units / 4
    (features, context, residual)"""
    posterior_steps: int = 20
    """gradient steps of the within-episode belief update after each answer (0 disables it)"""
    prior_weight: float = 0.1
    """Gaussian prior on the within-episode logit offsets (larger trusts the network more)"""
    global_offset: bool = True
    """within an episode, also fit one image-wide logit offset (prior weight 0.01)"""
    augment: bool = False
    """random flips of replayed clicks (image and masks together; U-Net beliefs only); off by
    default: on Kvasir-SEG they help the hybrid and residual beliefs only with large budgets
    of answers and hurt with small ones (see docs/agents.md)"""

    def validate(self) -> None:
        """:meth:`TrainDataArgs.validate`, the choice of belief, and what needs what.

        Raises:
            ArgumentValueError: For the first bad field.
        """
        super().validate()
        if self.buffer_size < self.batch_size:
            raise ArgumentValueError("buffer_size", f"must be >= batch_size ({self.batch_size}): "
                                     f"each step replays a batch from it, got {self.buffer_size}")
        beliefs = [*BELIEF_INPUTS, *UNET_BELIEFS]
        if self.belief not in beliefs:
            raise ArgumentValueError("belief", f"must be one of {', '.join(beliefs)}, got "
                                               f"{self.belief!r}")
        if self.augment and self.belief not in UNET_BELIEFS:
            raise ArgumentValueError("augment", "flips images: it needs belief in "
                                     f"{', '.join(UNET_BELIEFS)}, got {self.belief!r}")


def flip_augment(images: np.ndarray, before: np.ndarray, after: np.ndarray,
                 grid: tuple[int, int], rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random horizontal and vertical flips of a batch, the same for image and patch masks.

    An answer does not change when image, mask and click are mirrored together, so each answered
    click is worth up to four for the belief network.
    """
    images, before, after = images.copy(), before.copy(), after.copy()
    b = len(images)
    for axis in (0, 1):  # 0: vertical (rows), 1: horizontal (columns)
        flip = rng.random(b) < 0.5
        if not flip.any():
            continue
        images[flip] = np.flip(images[flip], axis=2 + axis)
        for m in (before, after):
            g = m[flip].reshape(-1, *grid)
            m[flip] = np.flip(g, axis=1 + axis).reshape(len(g), -1)
    return images, before, after


#: Per-patch inputs of the MLP beliefs, by ``belief`` name.
BELIEF_INPUTS = {"features": patch_inputs, "context": patch_context_inputs}
#: Beliefs whose network reads an image-shaped input ``(C, H, W)``.
UNET_BELIEFS = ("image", "hybrid", "residual")


class PatchFeatureNet(PatchMLP):
    """Per-patch belief logits ``(B, P)`` from ``(B, P, D + 2)`` backbone features and patch
    coordinates (:func:`~bow_gym.wrappers.patch_inputs`); untrained, ``q = 0.5`` everywhere."""

    def __init__(self, hidden: int = 64):
        super().__init__(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x)).squeeze(-1)


def hybrid_unet(width: int) -> ClickUNet:
    """The U-Net of the hybrid and residual beliefs: one output map over
    :func:`~bow_gym.wrappers.image_feature_inputs`, which is already at 2 x 2 cells per patch and
    scaled (so no down-sampling and no division by 255); its input size is set by the backbone."""
    return ClickUNet(None, width=width, out_channels=1, downsample=1, input_scale=1.0)


class ResidualBeliefNet(nn.Module):
    """Belief logits ``(B, P)``: the feature MLP's plus a U-Net's correction.

    Reads :func:`~bow_gym.wrappers.image_feature_inputs` ``(B, 3 + D, cells * gh, cells * gw)``.
    The MLP (:class:`PatchFeatureNet`) sees exactly what ``belief="features"`` sees (the
    features, pooled back to one row per patch, and the patch coordinates), so it learns as fast
    from few answers; the U-Net reads colour and shape within and across patches and starts at
    zero (its last layer is zero), so it only adds what the answers teach it beyond the MLP.
    """

    def __init__(self, hidden: int = 64, width: int = 16, cells: int = 2):
        super().__init__()
        self.cells = int(cells)
        self.patches = PatchFeatureNet(hidden)
        self.unet = hybrid_unet(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        feats = nn.functional.avg_pool2d(x[:, 3:], self.cells)  # exact: features are repeated
        b, _, gh, gw = feats.shape
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, gh, device=x.device),
                                torch.linspace(-1, 1, gw, device=x.device), indexing="ij")
        coords = torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=1).expand(b, -1, -1)
        rows = torch.cat([feats.flatten(2).transpose(1, 2), coords], dim=2)  # as patch_inputs
        correction, _ = self.unet(x)
        return self.patches(rows) + nn.functional.avg_pool2d(correction, self.cells).flatten(1)


class AnswerModelAgent(OnlineLearner):
    """Learns the expert's answers, clicks for the largest predicted Dice gain (module docstring).

    Args:
        grid: The env's patch grid ``(rows, cols)``.
        belief: ``features`` (MLP on patch features), ``context`` (MLP on patch features and
            their contrast with the image and the neighbourhood), ``image`` (U-Net on the RGB
            image), ``hybrid`` (U-Net on the image and the patch features) or ``residual``
            (the feature MLP plus a hybrid U-Net correction, :class:`ResidualBeliefNet`).
        width: U-Net channels at the first level; the MLP has ``4 * width`` hidden units.
        lr: Adam learning rate.
        batch_size, buffer_size, posterior_steps, prior_weight, global_offset, epsilon, augment:
            see :class:`AnswerModelArgs`.
        online_batch: In :meth:`observe`, take a gradient step after this many new clicks
            (0: no online learning).
        greedy: No exploration (evaluation).
        device: Torch device.
        seed: Seeds exploration and replay sampling.
    """

    name: ClassVar[str] = "answer_model"
    checkpoint_kind: ClassVar[str] = "answer_model"

    def __init__(self, grid: tuple[int, int] | list[int] = (16, 16), *, belief: str = "features",
                 width: int = 16, lr: float = 1e-3, batch_size: int = 32, buffer_size: int = 50000,
                 posterior_steps: int = 20, prior_weight: float = 0.1, global_offset: bool = True,
                 epsilon: float = 0.2, augment: bool = False, online_batch: int = 8,
                 greedy: bool = False, device: str = "cpu", seed: int = 0):
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon!r}")
        if batch_size < 1 or buffer_size < batch_size:
            raise ValueError(f"need 1 <= batch_size <= buffer_size, got {batch_size}, {buffer_size}")
        if belief not in BELIEF_INPUTS and belief not in UNET_BELIEFS:
            raise ValueError(f"belief must be one of {[*BELIEF_INPUTS, *UNET_BELIEFS]}, "
                             f"got {belief!r}")
        if augment and belief not in UNET_BELIEFS:
            raise ValueError(f"augment flips images: it needs belief in {UNET_BELIEFS}, "
                             f"got {belief!r}")
        if posterior_steps < 0 or not prior_weight > 0:
            raise ValueError("posterior_steps must be >= 0 and prior_weight > 0, got "
                             f"{posterior_steps!r}, {prior_weight!r}")
        self.grid = (int(grid[0]), int(grid[1]))
        self.device = torch.device(device)
        self.belief = belief
        self.net: nn.Module
        if belief == "image":
            self.net = ClickUNet(3, width=width, out_channels=1, downsample=4)
        elif belief == "hybrid":
            self.net = hybrid_unet(width)
        elif belief == "residual":
            self.net = ResidualBeliefNet(4 * width, width)
        else:
            self.net = PatchFeatureNet(4 * width)
        self.net.to(self.device)
        # Answer model: see answer_logits; kappa = exp(log_kappa) stays positive.
        self.log_kappa = nn.Parameter(torch.tensor(math.log(20.0), device=self.device))
        self.beta = nn.Parameter(torch.tensor(1.0, device=self.device))
        self.opt = torch.optim.Adam([*self.net.parameters(), self.log_kappa, self.beta], lr=lr)
        self.hparams = dict(grid=list(self.grid), belief=belief, width=width, lr=lr,
                            batch_size=batch_size, buffer_size=buffer_size,
                            posterior_steps=posterior_steps, prior_weight=prior_weight,
                            global_offset=global_offset, epsilon=epsilon, augment=augment)
        self.global_offset = global_offset
        self.batch_size, self.buffer_size = batch_size, buffer_size
        self.posterior_steps, self.prior_weight = posterior_steps, prior_weight
        self.epsilon, self.online_batch, self.greedy = epsilon, online_batch, greedy
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        self.replay = ReplayBuffer(buffer_size)
        self._episode: _Episode | None = None
        self.last_confidence: float | None = None
        self.checkpoint: str | None = None  # the file it was loaded from, for errors

    @classmethod
    def for_env(cls, env: BetterWorseSegEnv, *, seed: int | None = None, device: str = "cpu",
                **kwargs: Any) -> AnswerModelAgent:
        """An agent for ``env``'s patch grid."""
        return cls(tuple(env.grid), device=device, seed=0 if seed is None else seed, **kwargs)

    def check_env(self, env: BetterWorseSegEnv) -> None:
        """Refuse an env of another patch grid, or whose patch features differ in size from
        what the belief network was sized for (once sized)."""
        dim = env.backbone.dim
        backbone = f"backbone {env.backbone.name!r}, {dim}-dim features"
        checks: dict[str, tuple[Any, Any, str]] = {
            "patch grid": (self.grid, tuple(env.grid), backbone)}
        net = self.net.patches if isinstance(self.net, ResidualBeliefNet) else self.net
        if isinstance(net, PatchMLP):
            # patch_inputs: features and two coordinates; patch_context_inputs: 4 x features.
            size = (4 if self.belief == "context" else 1) * dim + 2
            checks["patch inputs of size"] = (net.input_size, size, backbone)
        unet = self.net.unet if isinstance(self.net, ResidualBeliefNet) else self.net
        if isinstance(unet, ClickUNet) and self.belief in ("hybrid", "residual"):
            # image_feature_inputs: RGB and the patch features on one grid.
            checks["input channels"] = (unet.input_channels, 3 + dim, backbone)
        check_env_fits(self, checks)

    def evaluation_mode(self) -> AnswerModelAgent:
        """Greedy clicks (no exploration) and no online updates."""
        self.greedy, self.online_batch = True, 0
        return self

    @property
    def updates(self) -> int:
        """Gradient steps taken so far (shared with :meth:`fork` twins)."""
        return self.replay.updates

    def fork(self) -> AnswerModelAgent:
        """A twin for lockstep labelling: its own episode, everything learned shared.

        The network, answer model, optimiser and replay buffer are the same objects, so clicks
        answered in any twin's episode train the one model (as REINFORCE's ``act_batch`` does).
        """
        twin = copy.copy(self)
        twin._episode = None
        twin.rng = np.random.default_rng(self.rng.integers(2**63))
        return twin

    # ---------------------------------------------------------------- belief
    def belief_inputs(self, obs: np.ndarray, env: BetterWorseSegEnv) -> np.ndarray:
        """What the belief network reads for the env's current image (and replay stores)."""
        if self.belief == "image":
            return np.array(obs[:3])
        if self.belief in ("hybrid", "residual"):
            return image_feature_inputs(obs, env)
        return BELIEF_INPUTS[self.belief](env)

    def belief_logits(self, inputs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(B, P)`` foreground logits per patch from a batch of :meth:`belief_inputs`."""
        x = torch.as_tensor(np.asarray(inputs), device=self.device)
        unet = self.belief in UNET_BELIEFS
        if x.ndim == (3 if unet else 2):
            x = x.unsqueeze(0)
        if not unet or self.belief == "residual":
            return self.net(x.float())
        logits, _ = self.net(x)
        return nn.functional.adaptive_avg_pool2d(logits, self.grid).flatten(1)

    def answer_logit(self, q: torch.Tensor, before: torch.Tensor,
                     after: torch.Tensor) -> torch.Tensor:
        """Logit of P(better) for clicks taking masks ``before`` to ``after`` (:func:`answer_logits`)."""
        return answer_logits(q, before, after, self.log_kappa.exp(), self.beta)

    # ---------------------------------------------------------------- acting
    def reset(self, seed: int | None = None) -> None:
        self._episode = None
        if seed is not None:
            self.rng = np.random.default_rng(int(seed))

    def _start(self, obs: np.ndarray, info: dict[str, Any], env: BetterWorseSegEnv,
               inputs: np.ndarray | None = None, logits: torch.Tensor | None = None) -> _Episode:
        self.check_env(env)
        if inputs is None:
            inputs = self.belief_inputs(obs, env)
        if logits is None:
            with torch.no_grad():
                self.net.eval()
                logits = self.belief_logits(inputs)[0]
        # Replayed clicks find their image by id; without one, by content (never a shared key).
        image_id = info.get("image_id")
        if image_id is None:
            image_id = "sha1:" + hashlib.sha1(np.array(obs[:3]).tobytes()).hexdigest()
        return _Episode(image_id=str(image_id), image=inputs,
                        logits=logits.detach(), local=torch.zeros_like(logits),
                        graph=torch.as_tensor(env.propagation_graph(), dtype=torch.float32,
                                              device=self.device))

    def choose(self, obs: np.ndarray, ep: _Episode, env: BetterWorseSegEnv) -> int:
        """The next action of an episode (greedy or epsilon-greedy)."""
        m = torch.as_tensor(mask_shares(obs, self.grid), device=self.device)
        with torch.no_grad():
            q = torch.sigmoid(ep.logits + ep.offset)
            after = masks_after_clicks(m, ep.graph)  # (2, P, P)
            score = soft_dice(after, q) - soft_dice(m, q)  # (2, P) expected Dice gain
            valid = (after != m).any(-1)  # the click changes the mask
            for label, patch in ep.rejected:
                valid[label, patch] = False
            if not bool(valid.any()):  # nothing useful left: any click not yet rejected
                valid = torch.ones_like(valid)
                for label, patch in ep.rejected:
                    valid[label, patch] = False
                if not bool(valid.any()):
                    valid = torch.ones_like(valid)
            score = torch.where(valid, score, -torch.inf).flatten()
            p_better = torch.sigmoid(self.answer_logit(q, m[None], after.flatten(0, 1)))
        if not self.greedy and self.rng.random() < self.epsilon:
            choice = int(self.rng.choice(np.flatnonzero(valid.flatten().cpu().numpy())))
        else:
            choice = int(torch.argmax(score))
        label, patch = divmod(choice, self.grid[0] * self.grid[1])
        self.last_confidence = float(p_better[choice])
        ep.pending = (m.clone(), after[label, patch].clone(), label, patch)
        return patch_to_pixel_action(env, choice)

    def act(self, obs: np.ndarray, info: dict[str, Any], env: BetterWorseSegEnv,
            ground_truth: np.ndarray | None = None) -> int:
        if self._episode is None:
            self._episode = self._start(obs, info, env)
        return self.choose(obs, self._episode, env)

    def observe(self, action: int, reward: float, terminated: bool, info: dict[str, Any]) -> None:
        """Update the episode's belief from the answer; learn online (every ``online_batch``)."""
        ep = self._episode
        if ep is None or ep.pending is None:
            return
        self.record(ep, reward)
        if self.online_batch > 0 and self.replay.new >= self.online_batch:
            self.learn(1)
        if terminated:
            self._episode = None

    def record(self, ep: _Episode, reward: float) -> None:
        """Add an episode's answered click to its belief and to the replay buffer."""
        assert ep.pending is not None
        before, after, label, patch = ep.pending
        ep.pending = None
        answer = 1.0 if reward > 0 else 0.0
        ep.events.append((before, after, answer))
        if answer == 0.0:
            ep.rejected.append((label, patch))
        self._posterior(ep)
        self.replay.add(ep.image_id, ep.image, before.cpu().numpy(), after.cpu().numpy(), answer)

    def _posterior(self, ep: _Episode) -> None:
        if not self.posterior_steps:
            return
        before = torch.stack([e[0] for e in ep.events])
        after = torch.stack([e[1] for e in ep.events])
        y = torch.tensor([e[2] for e in ep.events], device=self.device)
        ep.local, ep.shift = fit_episode_offsets(
            ep.logits, before, after, y, self.log_kappa.exp(), self.beta, local=ep.local,
            shift=ep.shift, steps=self.posterior_steps, prior_weight=self.prior_weight,
            global_offset=self.global_offset)

    # ---------------------------------------------------------------- learning
    def learn(self, steps: int = 1) -> dict[str, float]:
        """``steps`` gradient steps of the answer model on minibatches from the replay buffer."""
        if not len(self.replay):
            return {}
        self.replay.new = 0
        stats: dict[str, float] = {}
        self.net.train()
        for _ in range(steps):
            images, before, after, y = self.replay.sample(self.rng, self.batch_size)
            if self.augment:
                images, before, after = flip_augment(images, before, after, self.grid, self.rng)
            images, before, after, y = (torch.as_tensor(a, device=self.device)
                                        for a in (images, before, after, y))
            q = torch.sigmoid(self.belief_logits(images))
            logit = self.answer_logit(q, before, after)
            loss = nn.functional.binary_cross_entropy_with_logits(logit, y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
            self.opt.step()
            self.replay.updates += 1
            stats = {"losses/answer_nll": loss.item(),
                     "charts/answer_accuracy": float(((logit > 0).float() == y).float().mean()),
                     "charts/kappa": self.log_kappa.exp().item(), "charts/beta": self.beta.item()}
        return stats

    def flush(self) -> None:
        """Learn from online clicks not yet learned from (e.g. at the end of a round)."""
        if self.online_batch > 0 and self.replay.new:
            self.learn(1)

    # ---------------------------------------------------------------- checkpoints
    def save(self, path: str | os.PathLike) -> None:
        """Weights as safetensors (atomic), hyper-parameters in its metadata."""
        state = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        state["log_kappa"] = self.log_kappa.reshape(1)
        state["beta"] = self.beta.reshape(1)
        meta = {"agent": self.name, "hparams": json.dumps(self.hparams),
                "updates": str(self.updates)}
        save_checkpoint(path, state, meta, self.net, f"the {self.belief} belief")

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu",
             **overrides: Any) -> AnswerModelAgent:
        """An agent from a :meth:`save` checkpoint (``overrides`` change acting options)."""
        what = "answer-model checkpoint"
        state, meta, decoded = load_checkpoint(path, what, device, agent=cls.checkpoint_kind,
                                               json_keys=("hparams",))
        hparams = decoded["hparams"]
        # Checkpoints from before the feature belief used the U-Net and no image-wide offset.
        hparams.setdefault("belief", "image")
        hparams.setdefault("global_offset", False)
        agent = agent_from_checkpoint(cls, path, hparams, overrides, device=device)
        missing = [k for k in ("log_kappa", "beta") if k not in state]
        if missing:
            raise ValueError(f"{path} is not a bow-gym {what}: tensors {missing} are missing")
        load_state_checked(agent.net, {k[4:]: v for k, v in state.items() if k.startswith("net.")},
                           path, what, hparams=hparams, overrides=overrides)
        agent.checkpoint = str(path)
        with torch.no_grad():
            agent.log_kappa.copy_(state["log_kappa"][0])
            agent.beta.copy_(state["beta"][0])
        agent.replay.updates = int(meta.get("updates", 0))
        return agent


@dataclass
class _Episode:
    """What the agent holds about the episode in progress."""

    image_id: str
    image: np.ndarray
    logits: torch.Tensor  # (P,) belief logits of the network
    local: torch.Tensor  # (P,) per-patch logit offsets from the answers so far
    graph: torch.Tensor  # (P, P) propagation graph
    shift: torch.Tensor = field(default_factory=lambda: torch.zeros(()))  # image-wide offset
    events: list[tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=list)
    rejected: list[tuple[int, int]] = field(default_factory=list)
    pending: tuple[torch.Tensor, torch.Tensor, int, int] | None = None

    @property
    def offset(self) -> torch.Tensor:
        """``(P,)`` the within-episode update of the belief's logits."""
        return self.local + self.shift


def train(args: AnswerModelArgs) -> tuple[AnswerModelAgent, dict[str, list[float]]]:
    """Offline training over lockstep envs; returns the agent and its learning curve.

    Raises:
        ArgumentValueError: If ``args`` fails :meth:`AnswerModelArgs.validate` (nothing is
            written).
    """
    args.validate()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    # One vector env with same-step autoreset: a finished episode's step returns the next
    # episode's first observation and info (image_id), as the per-env loop this replaced did.
    venv, bases = make_vector_env(args, args.num_envs)
    n = args.num_envs
    agent = AnswerModelAgent(bases[0].grid, belief=args.belief, width=args.width, lr=args.lr,
                             batch_size=args.batch_size, buffer_size=args.buffer_size,
                             posterior_steps=args.posterior_steps, prior_weight=args.prior_weight,
                             global_offset=args.global_offset, epsilon=args.epsilon,
                             augment=args.augment, online_batch=0,
                             device=resolve_device(args.device), seed=args.seed)
    log = TrainingLog(args, "answer_model")
    obs, info = venv.reset(seed=args.seed)  # sub-env i is seeded args.seed + i
    episodes: list[_Episode | None] = [None] * n
    clicks = 0
    while clicks < args.total_answers:
        starting = [i for i, ep in enumerate(episodes) if ep is None]
        if starting:
            with torch.no_grad():
                agent.net.eval()
                inputs = [agent.belief_inputs(obs[i], bases[i]) for i in starting]
                logits = agent.belief_logits(np.stack(inputs))
            for j, i in enumerate(starting):
                episodes[i] = agent._start(obs[i], {"image_id": info["image_id"][i]}, bases[i],
                                           inputs[j], logits[j])
        # Choosing reads only each episode's own state, so choosing all before stepping gives
        # the clicks (and draws) of choosing and stepping env by env.
        actions = np.array([agent.choose(obs[i], episodes[i], bases[i])  # type: ignore[arg-type]
                            for i in range(n)])
        obs, rewards, terms, truncs, info = venv.step(actions)
        for i in range(n):
            agent.record(episodes[i], float(rewards[i]))  # type: ignore[arg-type]
            if terms[i] or truncs[i]:
                episodes[i] = None
        clicks += n
        stats = agent.learn(args.updates_per_step) if clicks >= args.batch_size else {}
        log.step(clicks, list(rewards), stats)
    venv.close()
    return agent, log.finish(agent, args)


def main(argv: list[str] | None = None) -> None:
    """The command line: train, then print a summary (a refused argument exits with status 2)."""
    args = parse_cli(AnswerModelArgs, argv, "python -m agents.answer_model", __doc__)
    _, history = train(args)
    print(summary_line(history, args.run_folder()))


if __name__ == "__main__":
    main()
