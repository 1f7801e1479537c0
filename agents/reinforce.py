"""REINFORCE with a U-Net policy: the method's clicking agent, learning from +1/-1 alone.

Reads top to bottom, CleanRL style: the arguments, the agent (a :class:`~agents.ClickPolicy` that
also learns online in :meth:`ReinforceAgent.observe`), the offline training loop over batched
rollouts, checkpoints (safetensors), and the command line::

    python -m agents.reinforce --total-clicks 2000 --out runs/reinforce

The policy is ``softmax(logits / temperature)`` over the ``2 x H x W`` (label x pixel) logits of a
small U-Net (:class:`agents.unet.ClickUNet`). ``--policy patches`` swaps the U-Net for a small
MLP over the ``2 x P`` (label x patch) clicks, reading each patch's backbone features (the ones
propagation compares) and what a click there would reach: the inputs the answer model's belief
uses, so the two agents can be compared on equal terms. The expert judges each click by itself, so by default
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from agents.common import PatchMLP, TrainDataArgs, TrainingLog, make_envs, summary_line
from agents.policy import ClickPolicy
from agents.unet import ClickUNet
from bow_gym.envs.better_worse_seg import BetterWorseSegEnv
from bow_gym.io_utils import atomic_path
from bow_gym.wrappers import patch_policy_inputs, patch_to_pixel_action


@dataclass
class ReinforceArgs(TrainDataArgs):
    """Arguments of REINFORCE training (every field is a ``--flag`` of the CLI)."""

    total_clicks: int = 2000
    """clicks (env steps) to train for, over all envs"""
    num_envs: int = 8
    """envs stepped in lockstep; each batch of clicks is one gradient step (gamma=0)"""
    policy: str = "unet"
    """policy network: unet (the method's: a U-Net scores every pixel of the observation) or
    patches (an MLP scores each (label, patch) click from the patch's backbone features and what
    a click there would reach)"""
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
    seed: int = 0
    """seed of torch, numpy and the envs"""
    device: str = "auto"
    """auto, cpu or cuda"""
    out: str = "runs/reinforce"
    """run folder: checkpoint, args, metrics, TensorBoard logs"""
    tensorboard: bool = True
    """write TensorBoard logs to <out>/tb"""
    progress: bool = True
    """show a progress bar"""


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


class ReinforceAgent(ClickPolicy):
    """A click policy trained with REINFORCE; also learns online while labelling.

    Two policy networks: ``policy="unet"`` (the method's agent) scores every pixel of the
    observation with a U-Net; ``policy="patches"`` scores every ``(label, patch)`` click from
    :func:`patch_policy_inputs` with a small MLP and clicks the patch centre. Propagation treats
    all pixels of a patch alike, so the patch policy loses no click that matters; it also skips
    clicks that would not change the mask.

    Args:
        in_channels: Observation channels (``policy="unet"``).
        policy: ``unet`` or ``patches``.
        temperature: Softmax temperature (sampling); :meth:`act` with ``greedy=True`` takes argmax.
        lr, baseline, ema_decay, value_coef, entropy_coef, gamma, width: see
            :class:`ReinforceArgs`.
        online_batch: In :meth:`observe`, update after this many clicks (online learning).
        avoid_rejected: Mask out clicks the expert rejected earlier in the episode.
        device: Torch device.
        seed: Seeds the sampling generator.
    """

    name: ClassVar[str] = "reinforce"

    def __init__(self, in_channels: int = 4, *, policy: str = "unet", temperature: float = 1.0,
                 lr: float = 1e-3, baseline: str = "ema", ema_decay: float = 0.95,
                 value_coef: float = 0.5, entropy_coef: float = 0.01, gamma: float = 0.0,
                 width: int = 16, online_batch: int = 8, avoid_rejected: bool = True,
                 greedy: bool = False, device: str = "cpu", seed: int = 0):
        if policy not in ("unet", "patches"):
            raise ValueError(f"policy must be 'unet' or 'patches', got {policy!r}")
        if baseline not in ("none", "ema", "value"):
            raise ValueError(f"baseline must be 'none', 'ema' or 'value', got {baseline!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.device = torch.device(device)
        self.policy = policy
        self.net: nn.Module = (ClickUNet(in_channels, width=width) if policy == "unet"
                               else PatchPolicyNet(4 * width))
        self.net.to(self.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.hparams = dict(in_channels=in_channels, policy=policy, temperature=temperature,
                            lr=lr, baseline=baseline, ema_decay=ema_decay, value_coef=value_coef,
                            entropy_coef=entropy_coef, gamma=gamma, width=width)
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
        self.last_confidence: float | None = None

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
                      rejected: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        """What the policy reads for this observation, and which of its actions it may take.

        Args:
            obs: The env's observation.
            env: The env (its geometry; for ``policy="patches"`` also the image's features and
                propagation graph).
            rejected: The ``(label, patch)`` clicks the expert rejected so far this episode.

        Returns:
            ``(inputs, valid)``: the observation (U-Net) or :func:`patch_policy_inputs`, and a
            bool vector over the policy's actions.
        """
        if self.policy == "unet":
            s, (ch, cw), gw = env.obs_size, env.cell, env.grid[1]
            valid = np.ones((2, s, s), bool)
            if self.avoid_rejected:
                for label, patch in rejected:
                    r, c = divmod(patch, gw)
                    valid[label, r * ch:(r + 1) * ch, c * cw:(c + 1) * cw] = False
            return np.asarray(obs), valid.reshape(-1)
        inputs = patch_policy_inputs(obs, env)
        # A background click changes the mask iff its reach holds foreground; a foreground one
        # iff its reach holds background. Column -2 is the reach's foreground share (exact in
        # float32: sums of multiples of 1/cell-area), so it answers both.
        reach_fg = inputs[:, -2]
        changes = np.stack([reach_fg > 0, reach_fg < 1])
        not_rejected = np.ones_like(changes)
        if self.avoid_rejected:
            for label, patch in rejected:
                not_rejected[label, patch] = False
        for valid in (changes & not_rejected, not_rejected):
            if valid.any():
                return inputs, valid.reshape(-1)
        return inputs, np.ones(changes.size, bool)

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
        if seed is not None:
            self.generator.manual_seed(int(seed))

    def act(self, obs: np.ndarray, info: dict[str, Any], env: BetterWorseSegEnv,
            ground_truth: np.ndarray | None = None) -> int:
        inputs, valid = self.policy_inputs(obs, env, self._rejected)
        actions, conf = self._sample(inputs[None], valid[None])
        self.last_confidence = float(conf[0])
        self._last_obs = np.asarray(obs)
        action = self.env_action(int(actions[0]), env)
        self._remember(action, inputs, valid, int(actions[0]))
        return action

    def act_batch(self, obs: np.ndarray, rejected: list[list[tuple[int, int]]],
                  env: BetterWorseSegEnv | Sequence[BetterWorseSegEnv]
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Actions and confidences for a batch of episodes run in lockstep (one forward pass).

        Args:
            obs: ``(B, C, H, W)`` observations.
            rejected: Per episode, the ``(label, patch)`` clicks the expert rejected so far.
            env: The env of each episode; one env will do for the U-Net (its geometry only).
        """
        if isinstance(env, BetterWorseSegEnv):
            if self.policy == "patches" and len(obs) > 1:
                raise ValueError("the patch policy reads each image's features: pass act_batch "
                                 "one env per observation")
            envs = [env] * len(obs)
        else:
            envs = list(env)
        if len(envs) != len(obs) or len(rejected) != len(obs):
            raise ValueError(f"act_batch got {len(obs)} observations, {len(rejected)} rejected "
                             f"lists and {len(envs)} envs")
        inputs, valid = zip(*[self.policy_inputs(o, e, r)
                              for o, e, r in zip(obs, envs, rejected, strict=True)], strict=True)
        actions, conf = self._sample(np.stack(inputs), np.stack(valid))
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

    def observe(self, action: int, reward: float, terminated: bool, info: dict[str, Any]) -> None:
        """Online learning: every answered click is a training signal (the method's protocol)."""
        if reward < 0 and "patch" in info:
            self._rejected.append((int(info["click"]["label"]), int(info["patch"])))
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
               valid: np.ndarray | None = None) -> dict[str, float]:
        """One REINFORCE step on a batch of (policy inputs, policy action, return).

        ``valid`` (``(B, n_actions)`` bool) restricts each softmax to the clicks the policy could
        choose from when it acted.
        """
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
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.opt.step()
        if self.baseline == "ema":
            mean_r = float(ret.mean())
            self.ema = mean_r if self.updates == 0 else (
                self.ema_decay * self.ema + (1 - self.ema_decay) * mean_r)
        self.updates += 1
        return {"losses/policy": policy_loss.item(), "losses/value": value_loss.item(),
                "losses/entropy": entropy.item(), "charts/baseline": float(self.ema)}

    # -------------------------------------------------------------- checkpoints
    def save(self, path: str | os.PathLike) -> None:
        """Weights as safetensors (atomic), hyper-parameters in its metadata."""
        from safetensors.torch import save_file

        if any(isinstance(t, nn.parameter.UninitializedParameter) for t in self.net.parameters()):
            raise ValueError(f"cannot save to {path}: the patch policy has not read any image "
                             "yet, so its input size is unknown")
        meta = {"agent": self.name, "hparams": json.dumps(self.hparams), "ema": str(self.ema),
                "updates": str(self.updates)}
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu", **overrides: Any) -> ReinforceAgent:
        """An agent from a :meth:`save` checkpoint (``overrides`` change acting options)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no REINFORCE checkpoint at {path}")
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            hparams = json.loads(meta["hparams"])
        except Exception as e:
            raise ValueError(f"{path} is not a bow-gym REINFORCE checkpoint: {e}") from e
        agent = cls(**{**hparams, **overrides}, device=device)
        agent.net.load_state_dict(load_file(str(path), device=str(agent.device)))
        agent.ema = float(meta.get("ema", 0.0))
        agent.updates = int(meta.get("updates", 0))
        return agent


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def train(args: ReinforceArgs) -> tuple[ReinforceAgent, dict[str, list[float]]]:
    """Offline REINFORCE over batched rollouts; returns the agent and its learning curve."""
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    device = resolve_device(args.device)
    envs = make_envs(args, args.num_envs)
    bases = [e.unwrapped for e in envs]
    agent = ReinforceAgent(bases[0].n_channels, policy=args.policy,
                           temperature=args.temperature, lr=args.lr, baseline=args.baseline,
                           ema_decay=args.ema_decay, value_coef=args.value_coef,
                           entropy_coef=args.entropy_coef, gamma=args.gamma, width=args.width,
                           online_batch=0, avoid_rejected=args.avoid_rejected, device=device,
                           seed=args.seed)
    log = TrainingLog(Path(args.out), args.total_clicks, "reinforce", args.tensorboard,
                      args.progress)
    obs = [e.reset(seed=args.seed + i)[0] for i, e in enumerate(envs)]
    rejected: list[list[tuple[int, int]]] = [[] for _ in envs]
    episode: list[list[tuple[np.ndarray, np.ndarray, int, float]]] = [[] for _ in envs]
    clicks = 0
    while clicks < args.total_clicks:
        inputs, valid = zip(*[agent.policy_inputs(o, b, r)
                              for o, b, r in zip(obs, bases, rejected, strict=True)], strict=True)
        actions, _ = agent._sample(np.stack(inputs), np.stack(valid))
        batch_in, batch_valid, batch_act, batch_ret = [], [], [], []
        rewards = []
        for i, env in enumerate(envs):
            a = int(actions[i])
            o2, r, term, trunc, info = env.step(agent.env_action(a, bases[i]))
            episode[i].append((inputs[i], valid[i], a, float(r)))
            rewards.append(r)
            if r < 0:
                rejected[i].append((int(info["click"]["label"]), int(info["patch"])))
            if term or trunc or args.gamma == 0:
                g, rets = 0.0, []
                for *_, rr in reversed(episode[i]):
                    g = rr + args.gamma * g
                    rets.append(g)
                for (ei, ev, ea, _), ret in zip(episode[i], reversed(rets), strict=True):
                    batch_in.append(ei)
                    batch_valid.append(ev)
                    batch_act.append(ea)
                    batch_ret.append(ret)
                episode[i] = []
            if term or trunc:
                o2, _ = env.reset()
                rejected[i] = []
            obs[i] = o2
        clicks += len(envs)
        stats = {}
        if batch_in:
            stats = agent.update(np.stack(batch_in), np.array(batch_act),
                                 np.array(batch_ret, np.float32), np.stack(batch_valid))
        log.step(clicks, rewards, stats)
    return agent, log.finish(agent, args)


def main(argv: list[str] | None = None) -> None:
    import tyro

    args = tyro.cli(ReinforceArgs, args=argv, description=__doc__)
    _, history = train(args)
    print(summary_line(history, args.out))


if __name__ == "__main__":
    main()
