"""A per-patch belief of the lesion and a model of the expert's answers, shared by the agents that
reason about what a click will make (:mod:`agents.answer_model`, REINFORCE's ``belief`` policy,
SB3's ``BeliefExtractor``).

Pure functions on torch tensors (no agent or env state), the replay buffer of answered clicks,
and the belief policy network that REINFORCE and SB3 share. The model of an answer is the Dice
oracle's exact rule, softened: see :func:`answer_logits`.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque

import numpy as np
import torch
from torch import nn

from agents.common import PatchMLP


def soft_dice(mask: torch.Tensor, belief: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Soft Dice ``2 sum(m q) / (sum(m) + sum(q))`` over the last axis (patches)."""
    return 2.0 * (mask * belief).sum(-1) / (mask.sum(-1) + belief.sum(-1) + eps)


def answer_logits(q: torch.Tensor, before: torch.Tensor, after: torch.Tensor,
                  kappa: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Logits of P(better) for clicks taking masks ``before`` to ``after`` under belief ``q``.

    The Dice oracle says "better" to a foreground click iff the precision of the area it adds
    exceeds half the current Dice (and to a background click iff the precision of the area it
    removes is below that), so the logit is ``kappa * (precision - D/2) - beta`` (or its mirror):
    unlike the raw Dice change it does not shrink with the size of the clicked region.
    """
    added = (after - before).clamp_min(0.0)
    removed = (before - after).clamp_min(0.0)
    n_add, n_rem = added.sum(-1), removed.sum(-1)
    half_dice = 0.5 * soft_dice(before, q)
    prec_add = (added * q).sum(-1) / (n_add + 1e-6)
    prec_rem = (removed * q).sum(-1) / (n_rem + 1e-6)
    margin = torch.where(n_add > 0, prec_add - half_dice, half_dice - prec_rem)
    return kappa * margin - beta


def masks_after_clicks(mask: torch.Tensor, graph: torch.Tensor) -> torch.Tensor:
    """The mask after a background (0) / foreground (1) click on each patch.

    Args:
        mask: ``(..., P)`` foreground share of each patch now.
        graph: ``(..., P, P)`` float 0/1 propagation graph (row = a click's selection).

    Returns:
        ``(..., 2, P, P)``: ``[..., label, patch, :]`` is the mask after that click.
    """
    m = mask.unsqueeze(-2)
    return torch.stack([m * (1.0 - graph), torch.maximum(m, graph)], dim=-3)


def mask_after_click(mask: torch.Tensor, reach: torch.Tensor, label: int) -> torch.Tensor:
    """The mask after one click: ``reach`` (the click's 0/1 row of the propagation graph) set to
    foreground (``label=1``) or cleared (``label=0``); one row of :func:`masks_after_clicks`."""
    return torch.maximum(mask, reach) if label == 1 else mask * (1.0 - reach)


def fit_episode_offsets(logits: torch.Tensor, before: torch.Tensor, after: torch.Tensor,
                        answers: torch.Tensor, kappa: torch.Tensor, beta: torch.Tensor, *,
                        local: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                        weights: torch.Tensor | None = None, steps: int = 20,
                        prior_weight: float = 0.1,
                        global_offset: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The within-episode update of a belief: per-patch and image-wide logit offsets fitted to the
    answers so far (maximum a posteriori, Gaussian priors; a few Adam steps).

    Leading batch dimensions ``...`` fit one episode each, independently (Adam's update is
    element-wise, so a batch gives each episode exactly its own fit).

    Args:
        logits: ``(..., P)`` belief logits of the network for the image (held fixed).
        before, after: ``(..., K, P)`` masks before and after each answered click of the episode.
        answers: ``(..., K)`` 1.0 for "better", 0.0 for "worse".
        kappa, beta: The answer model's parameters (:func:`answer_logits`; not trained here).
        local, shift: ``(..., P)`` and ``(...)`` offsets to start from (the previous answer's
            fit); zeros if ``None``.
        weights: ``(..., K)`` 1.0 for the clicks that count, 0.0 for padding; all count if
            ``None``.
        steps: Adam steps (0 returns the starting offsets).
        prior_weight: Weight of the Gaussian prior on each patch's offset.
        global_offset: Also fit the image-wide offset (10x weaker prior).

    Returns:
        ``(local, shift)``: ``(..., P)`` and ``(...)`` offsets, detached.
    """
    local = torch.zeros_like(logits) if local is None else local
    shift = torch.zeros(logits.shape[:-1], device=logits.device) if shift is None else shift
    counted = answers.numel() if weights is None else float(weights.sum())
    if not steps or not counted:
        return local.detach(), shift.detach()
    local = local.detach().clone().requires_grad_(True)
    shift = shift.detach().clone().requires_grad_(global_offset)
    opt = torch.optim.Adam([local, shift] if global_offset else [local], lr=0.5)
    kappa, beta, logits = kappa.detach(), beta.detach(), logits.detach()
    for _ in range(steps):
        q = torch.sigmoid(logits + local + shift.unsqueeze(-1)).unsqueeze(-2)
        logit = answer_logits(q, before, after, kappa, beta)
        nll = nn.functional.binary_cross_entropy_with_logits(logit, answers, weights,
                                                             reduction="sum")
        # The image-wide shift gets a 10x weaker prior than each patch's offset: one answer on a
        # large region says more about the lesion's size than about any one patch.
        loss = nll + 0.5 * prior_weight * ((local**2).sum() + 0.1 * (shift**2).sum())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return local.detach(), shift.detach()


class ReplayBuffer:
    """Answered clicks for replay; each image is stored once, however many clicks it got.

    Args:
        capacity: Clicks kept (the oldest are dropped first).
    """

    def __init__(self, capacity: int):
        self.images: dict[str, np.ndarray] = {}
        self.rows: deque[tuple[str, np.ndarray, np.ndarray, float]] = deque(maxlen=capacity)
        self.new = 0  # clicks added since the last gradient step
        self.updates = 0  # gradient steps taken on this buffer

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, image_id: str | None, image: np.ndarray, before: np.ndarray, after: np.ndarray,
            answer: float) -> None:
        """Keep one answered click; ``image_id=None`` keys the image by a hash of its content."""
        if image_id is None:
            image = np.ascontiguousarray(image)
            image_id = hashlib.sha1(image.tobytes()).hexdigest()
        self.images.setdefault(image_id, image)
        self.rows.append((image_id, before, after, float(answer)))
        self.new += 1

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
        """``n`` clicks drawn with replacement: images, masks before, masks after, answers."""
        rows = [self.rows[i] for i in rng.integers(len(self.rows), size=n)]
        return (np.stack([self.images[r[0]] for r in rows]), np.stack([r[1] for r in rows]),
                np.stack([r[2] for r in rows]), np.array([r[3] for r in rows], np.float32))


def split_belief_inputs(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(features, mask, offset, graph)`` of a batch ``(B, P, D + 4 + P)`` of
    :func:`agents.reinforce.belief_policy_inputs`."""
    p = x.shape[-2]
    d = x.shape[-1] - p - 2
    return x[..., :d], x[..., d], x[..., d + 1], x[..., d + 2:]


class BeliefPolicyNet(PatchMLP):
    """Click logits ``(B, 2P)`` and values ``(B,)`` from :func:`agents.reinforce.belief_policy_inputs`.

    A small MLP gives each patch a belief logit; with the episode's offset, ``q = sigmoid(logit +
    offset)`` is the belief that the patch is lesion. A click's logit is ``alpha`` times the Dice
    gain it would make against ``q`` (the answer model's rule, :func:`answer_logits`), so the
    policy gradient trains the belief. ``kappa`` and ``beta`` model the expert's answers for the
    within-episode update and the auxiliary loss. Untrained, ``q = 0.5`` everywhere.
    """

    def __init__(self, hidden: int = 64):
        super().__init__(hidden, 1)
        self.value = nn.Linear(hidden, 1)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(10.0)))
        self.log_kappa = nn.Parameter(torch.tensor(math.log(20.0)))
        self.beta = nn.Parameter(torch.tensor(1.0))

    def belief(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, P)`` belief logits and ``(B, P, hidden)`` embeddings of patch features."""
        h = self.embed(features)
        return self.head(h).squeeze(-1), h

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, m, offset, graph = split_belief_inputs(x)
        z, h = self.belief(features)
        q = torch.sigmoid(z + offset)
        after = masks_after_clicks(m, graph)  # (B, 2, P, P)
        gain = soft_dice(after, q[:, None, None]) - soft_dice(m, q)[:, None, None]
        return self.log_alpha.exp() * gain.flatten(1), self.value(h.mean(1)).squeeze(1)
