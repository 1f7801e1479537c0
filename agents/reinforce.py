"""REINFORCE with a U-Net policy: the method's clicking agent, learning from +1/-1 alone.

Reads top to bottom, CleanRL style: the arguments, the agent (a :class:`~agents.ClickPolicy` that
also learns online in :meth:`ReinforceAgent.observe`), the offline training loop over batched
rollouts, checkpoints (safetensors), and the command line::

    python -m agents.reinforce --total-clicks 2000 --out runs/reinforce

The policy is ``softmax(logits / temperature)`` over the ``2 x H x W`` (label x pixel) logits of a
small U-Net (:class:`agents.unet.ClickUNet`). The expert judges each click by itself, so by default
(``gamma=0``) a click's return is its own answer; ``gamma > 0`` credits later answers too. The
method's authors name REINFORCE's weaknesses (variance, a sparse binary reward, slow convergence);
the remedies offered here are a baseline (``"ema"``: moving average of rewards; ``"value"``: a
learned value head; ``"none"``), an entropy bonus, and batched rollouts over ``num_envs`` envs.
An agent never reads ground truth: it sees observations and answers only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from agents.common import TrainDataArgs, TrainingLog, make_envs, summary_line
from agents.policy import ClickPolicy
from agents.unet import ClickUNet
from bow_gym.envs.better_worse_seg import BetterWorseSegEnv
from bow_gym.io_utils import atomic_path


@dataclass
class ReinforceArgs(TrainDataArgs):
    """Arguments of REINFORCE training (every field is a ``--flag`` of the CLI)."""

    total_clicks: int = 2000
    """clicks (env steps) to train for, over all envs"""
    num_envs: int = 8
    """envs stepped in lockstep; each batch of clicks is one gradient step (gamma=0)"""
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


class ReinforceAgent(ClickPolicy):
    """A U-Net click policy trained with REINFORCE; also learns online while labelling.

    Args:
        in_channels: Observation channels.
        temperature: Softmax temperature (sampling); :meth:`act` with ``greedy=True`` takes argmax.
        lr, baseline, ema_decay, value_coef, entropy_coef, gamma, width: see
            :class:`ReinforceArgs`.
        online_batch: In :meth:`observe`, update after this many clicks (online learning).
        avoid_rejected: Mask out clicks the expert rejected earlier in the episode.
        device: Torch device.
        seed: Seeds the sampling generator.
    """

    name: ClassVar[str] = "reinforce"

    def __init__(self, in_channels: int = 4, *, temperature: float = 1.0, lr: float = 1e-3,
                 baseline: str = "ema", ema_decay: float = 0.95, value_coef: float = 0.5,
                 entropy_coef: float = 0.01, gamma: float = 0.0, width: int = 16,
                 online_batch: int = 8, avoid_rejected: bool = True, greedy: bool = False,
                 device: str = "cpu", seed: int = 0):
        if baseline not in ("none", "ema", "value"):
            raise ValueError(f"baseline must be 'none', 'ema' or 'value', got {baseline!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.device = torch.device(device)
        self.net = ClickUNet(in_channels, width=width).to(self.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.hparams = dict(in_channels=in_channels, temperature=temperature, lr=lr,
                            baseline=baseline, ema_decay=ema_decay, value_coef=value_coef,
                            entropy_coef=entropy_coef, gamma=gamma, width=width)
        self.temperature, self.baseline, self.ema_decay = temperature, baseline, ema_decay
        self.value_coef, self.entropy_coef, self.gamma = value_coef, entropy_coef, gamma
        self.online_batch, self.avoid_rejected, self.greedy = online_batch, avoid_rejected, greedy
        self.ema = 0.0
        self.updates = 0
        self.generator = torch.Generator().manual_seed(seed)
        self._rejected: list[tuple[int, int]] = []
        self._pending: list[tuple[np.ndarray, int, float]] = []
        self._last_obs: np.ndarray | None = None
        self.last_confidence: float | None = None

    # -------------------------------------------------------------- acting
    def logits(self, obs: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flattened logits ``(B, 2HW)`` and values ``(B,)`` of a batch of observations."""
        x = torch.as_tensor(np.asarray(obs), device=self.device)
        if x.ndim == 3:
            x = x.unsqueeze(0)
        logits, value = self.net(x)
        return logits.flatten(1), value

    def _mask_rejected(self, logits: torch.Tensor, rejected: list[tuple[int, int]],
                       env: BetterWorseSegEnv) -> torch.Tensor:
        if not rejected:
            return logits
        logits = logits.clone()
        s = env.obs_size
        (ch, cw), gw = env.cell, env.grid[1]
        view = logits.view(-1, 2, s, s)
        for label, patch in rejected:
            r, c = divmod(patch, gw)
            view[:, label, r * ch:(r + 1) * ch, c * cw:(c + 1) * cw] = -torch.inf
        return logits

    def reset(self, seed: int | None = None) -> None:
        self._rejected = []
        if seed is not None:
            self.generator.manual_seed(int(seed))

    @torch.no_grad()
    def act(self, obs: np.ndarray, info: dict[str, Any], env: BetterWorseSegEnv,
            ground_truth: np.ndarray | None = None) -> int:
        self.net.eval()
        logits, _ = self.logits(obs)
        if self.avoid_rejected:
            logits = self._mask_rejected(logits, self._rejected, env)
        probs = torch.softmax(logits[0].cpu() / self.temperature, dim=0)
        if self.greedy:
            action = int(torch.argmax(logits[0]))
        else:
            action = int(torch.multinomial(probs, 1, generator=self.generator))
        # 1 - normalised entropy: 0 for a uniform policy, 1 for a certain one. A model signal the
        # multi-round pipeline may use to rank pseudo-masks (never the ground truth).
        entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum()
        self.last_confidence = float(1.0 - entropy / np.log(probs.numel()))
        self._last_obs = np.asarray(obs)
        return action

    @torch.no_grad()
    def act_batch(self, obs: np.ndarray, rejected: list[list[tuple[int, int]]],
                  env: BetterWorseSegEnv) -> tuple[np.ndarray, np.ndarray]:
        """Actions and confidences for a batch of episodes run in lockstep (one forward pass).

        Args:
            obs: ``(B, C, H, W)`` observations.
            rejected: Per episode, the ``(label, patch)`` clicks the expert rejected so far.
            env: Any of the envs, for its geometry.
        """
        self.net.eval()
        logits, _ = self.logits(obs)
        if self.avoid_rejected:
            logits = torch.cat([self._mask_rejected(logits[i:i + 1], rejected[i], env)
                                for i in range(len(obs))])
        probs = torch.softmax(logits.cpu() / self.temperature, dim=1)
        if self.greedy:
            actions = torch.argmax(logits, dim=1).cpu()
        else:
            actions = torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
        entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum(1)
        conf = 1.0 - entropy / np.log(probs.shape[1])
        return actions.numpy(), conf.numpy()

    def learn_online(self, obs: np.ndarray, action: int, reward: float) -> None:
        """Queue one answered click; update once ``online_batch`` clicks are queued."""
        if self.online_batch <= 0:
            return
        self._pending.append((np.asarray(obs), int(action), float(reward)))
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
            obs, actions, rewards = zip(*self._pending, strict=True)
            self.update(np.stack(obs), np.array(actions), np.array(rewards, np.float32))
            self._pending = []

    # -------------------------------------------------------------- learning
    def update(self, obs: np.ndarray, actions: np.ndarray, returns: np.ndarray,
               masks: list[list[tuple[int, int]]] | None = None,
               env: BetterWorseSegEnv | None = None) -> dict[str, float]:
        """One REINFORCE step on a batch of (observation, action, return)."""
        self.net.train()
        logits, values = self.logits(obs)
        if masks is not None and env is not None:
            logits = torch.cat([self._mask_rejected(logits[i:i + 1], m, env)
                                for i, m in enumerate(masks)])
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
    base = envs[0].unwrapped
    agent = ReinforceAgent(base.n_channels, temperature=args.temperature, lr=args.lr,
                           baseline=args.baseline, ema_decay=args.ema_decay,
                           value_coef=args.value_coef, entropy_coef=args.entropy_coef,
                           gamma=args.gamma, width=args.width, online_batch=0,
                           avoid_rejected=args.avoid_rejected, device=device, seed=args.seed)
    log = TrainingLog(Path(args.out), args.total_clicks, "reinforce", args.tensorboard,
                      args.progress)
    obs = [e.reset(seed=args.seed + i)[0] for i, e in enumerate(envs)]
    rejected: list[list[tuple[int, int]]] = [[] for _ in envs]
    episode: list[list[tuple[np.ndarray, int, float, list]]] = [[] for _ in envs]
    clicks = 0
    while clicks < args.total_clicks:
        with torch.no_grad():
            agent.net.eval()
            logits, _ = agent.logits(np.stack(obs))
            if args.avoid_rejected:
                logits = torch.cat([agent._mask_rejected(logits[i:i + 1], rejected[i], base)
                                    for i in range(len(envs))])
            probs = torch.softmax(logits.cpu() / args.temperature, dim=1)
            actions = torch.multinomial(probs, 1, generator=agent.generator).squeeze(1).numpy()
        batch_obs, batch_act, batch_ret, batch_masks = [], [], [], []
        rewards = []
        for i, env in enumerate(envs):
            o2, r, term, trunc, info = env.step(int(actions[i]))
            episode[i].append((obs[i], int(actions[i]), float(r), list(rejected[i])))
            rewards.append(r)
            if r < 0:
                rejected[i].append((int(info["click"]["label"]), int(info["patch"])))
            if term or trunc or args.gamma == 0:
                g, rets = 0.0, []
                for _, _, rr, _ in reversed(episode[i]):
                    g = rr + args.gamma * g
                    rets.append(g)
                for (eo, ea, _, em), ret in zip(episode[i], reversed(rets), strict=True):
                    batch_obs.append(eo)
                    batch_act.append(ea)
                    batch_ret.append(ret)
                    batch_masks.append(em)
                episode[i] = []
            if term or trunc:
                o2, _ = env.reset()
                rejected[i] = []
            obs[i] = o2
        clicks += len(envs)
        stats = {}
        if batch_obs:
            stats = agent.update(np.stack(batch_obs), np.array(batch_act),
                                 np.array(batch_ret, np.float32),
                                 batch_masks if args.avoid_rejected else None, base)
        log.step(clicks, rewards, stats)
    return agent, log.finish(agent, args)


def main(argv: list[str] | None = None) -> None:
    import tyro

    args = tyro.cli(ReinforceArgs, args=argv, description=__doc__)
    _, history = train(args)
    print(summary_line(history, args.out))


if __name__ == "__main__":
    main()
