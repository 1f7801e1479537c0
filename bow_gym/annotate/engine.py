"""The annotation engine: the env and the agent, driven by a person's answers.

The engine holds what :func:`bow_gym.rounds.label_round` holds while it labels (one env per
image in progress, the agent or its twins, each episode's memory) and makes the same calls in the
same order, with one difference: the expert is a :class:`~bow_gym.oracles.PersonOracle`, handed
the person's answer before each ``env.step``. With one annotator, the clicks, answers and masks
are those of ``label_round`` with ``label_envs = 1`` and the same config.

Torch's global generator is seeded from the project's seed and the event number around every
event (:func:`event_seed`): agents that draw from it (lazily built layers take their initial
weights from it at their first forward pass) then do not depend on what the process did before.

Its state is a pure function of the event log (:mod:`bow_gym.annotate.store`): applying the same
events in the same order gives the same proposals, masks and agent. :meth:`Engine.apply` replays
one stored event and checks that a replayed proposal is the stored click; :meth:`snapshot` and
:meth:`restore` checkpoint the agent side (the envs are rebuilt from the answers), so that a
restart replays only the events after the last checkpoint.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bow_gym.envs.better_worse_seg import BetterWorseSegEnv
from bow_gym.policy import BatchedLearner, ClickPolicy, choose_click, public_info
from bow_gym.rounds import RoundsConfig, _seed, build_datasets, make_agent

#: Version of the checkpoint layout (a checkpoint of another version is ignored and replayed).
CHECKPOINT_VERSION = 1


class Divergence(RuntimeError):
    """A replayed proposal is not the stored click (the agent's state differs from the log's)."""

    def __init__(self, seq: int, stored: int, replayed: int):
        super().__init__(f"replay diverged at event {seq}: the stored click is action {stored}, "
                         f"the agent now proposes {replayed}")
        self.seq, self.stored, self.replayed = seq, stored, replayed


@dataclass(frozen=True)
class Proposal:
    """A click the agent proposes; ``seq`` is its event number (the proposal id)."""

    seq: int
    action: int
    label: int
    y: int
    x: int
    patch: int
    confidence: float


@dataclass
class Slot:
    """An image whose episode is under way."""

    pos: int
    env: BetterWorseSegEnv
    policy: ClickPolicy  # the agent itself (batched learners) or its twin
    memory: Any  # a batched learner's episode memory
    obs: np.ndarray
    info: dict[str, Any]
    rejected: list[tuple[int, int]] = field(default_factory=list)
    clicks: int = 0
    proposal: Proposal | None = None


class Engine:
    """Envs and agent of an annotation project (see the module docstring).

    Args:
        config: The project's configuration (the fields of round 1 of ``bow-gym rounds``).
        dataset: The labelling images (default: :func:`~bow_gym.rounds.build_datasets` of
            ``config``, its labelling part).
        backbone: A built backbone to share (default: built from ``config``).
        device: Torch device of the agent.

    Raises:
        ValueError: The agent reads the ground truth (a person is the expert here), or a
            config value the env or agent refuses.
    """

    def __init__(self, config: RoundsConfig, *, dataset: Any = None, backbone: Any = None,
                 device: str = "cpu"):
        from bow_gym.agent_registry import agent_spec
        from bow_gym.backbones import create_backbone

        if agent_spec(config.agent).load().reads_ground_truth:
            raise ValueError(f"agent {config.agent!r} reads the ground truth; with a person as "
                             "the expert the agent may not (choose a learner, or random)")
        self.config = config
        self.dataset = dataset if dataset is not None else build_datasets(config)[0]
        if backbone is None:
            kw = dict(config.backbone_kwargs)
            if config.backbone.startswith("dinov2"):
                kw.setdefault("device", device)
            backbone = create_backbone(config.backbone, **kw)
        self.backbone = backbone
        self.device = device
        n = len(self.dataset)
        # The order and seeds of round 1 of bow_gym.rounds: one annotator labels the images in
        # the order, and with the seeds, that the simulated expert's round 1 would.
        self.order = np.random.default_rng(_seed(config, 1, 1)).permutation(n)
        self.seed = _seed(config, 1, 2)
        env = self._new_env()
        self._features = env.features
        self._free_envs = [env]
        self.agent = make_agent(config, env, device)
        self.batched = isinstance(self.agent, BatchedLearner)
        self._free_twins: list[ClickPolicy] = [] if self.batched else [self.agent]
        self.slots: dict[int, Slot] = {}
        self.seq = 0  # last event applied
        self.digest = ""  # running hash of the events applied (log_digest)
        self._last_closed: Slot | None = None

    @property
    def ids(self) -> list[str]:
        """Image ids in labelling order."""
        ids = self.dataset.ids
        return [ids[int(i)] for i in self.order]

    def _new_env(self) -> BetterWorseSegEnv:
        cfg = self.config
        kwargs = {k: v for k, v in cfg.env_kwargs.items() if k not in ("oracle", "oracle_kwargs")}
        env = BetterWorseSegEnv(self.dataset, backbone=self.backbone, threshold=cfg.threshold,
                                clicks_per_episode=cfg.clicks_per_image,
                                feature_cache=cfg.feature_cache, image_order="sequential",
                                context_cache_size=2, oracle="person", **kwargs)
        if getattr(self, "_features", None) is not None:
            env.features = self._features  # one feature cache: each image featurised once
        return env

    def _record(self, seq: int, kind: str, pos: int, action: int | None = None,
                answer: int | None = None) -> None:
        if seq <= self.seq:
            raise RuntimeError(f"event {seq} applied after event {self.seq}")
        self.seq = seq
        self.digest = digest_step(self.digest, seq, kind, pos, action, answer)

    # ------------------------------------------------------------------ the events
    @contextmanager
    def _torch_seeded(self, seq: int) -> Iterator[None]:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(event_seed(self.seed, seq))
            yield

    def start(self, seq: int, pos: int) -> Slot:
        """An image's episode begins (``label_round``'s ``start``)."""
        with self._torch_seeded(seq):
            return self._start(seq, pos)

    def propose(self, seq: int, pos: int, expect: int | None = None) -> Proposal:
        """The agent's next click on image ``pos``.

        Args:
            seq: The proposal's event number.
            pos: The image.
            expect: The stored click when replaying: a different click raises
                :class:`Divergence` (after the agent acted: the engine is then unusable).
        """
        with self._torch_seeded(seq):
            return self._propose(seq, pos, expect)

    def answer(self, seq: int, pos: int, answer: int) -> bool:
        """The person's answer to image ``pos``'s open proposal: the env steps with it and the
        agent learns from it, as in ``label_round``. Returns whether the image is finished (its
        slot is then closed)."""
        with self._torch_seeded(seq):
            return self._answer(seq, pos, answer)

    def skip(self, seq: int, pos: int) -> None:
        """The image is closed with the clicks answered so far."""
        self._close(pos)
        self._record(seq, "skip", pos)

    def _start(self, seq: int, pos: int) -> Slot:
        if pos in self.slots:
            raise RuntimeError(f"image {pos} is already under way")
        env = self._free_envs.pop() if self._free_envs else self._new_env()
        obs, info = env.reset(seed=self.seed + pos, options={"index": int(self.order[pos])})
        if self.batched:
            policy = self.agent
        else:
            # label_round gives each of its envs a twin; here each image under way has one,
            # returned when the image is finished (one annotator: always the agent itself).
            policy = self._free_twins.pop(0) if self._free_twins else self.agent.fork()
        policy.reset(self.seed + pos)
        memory = self.agent.new_episode() if self.batched else None
        slot = self.slots[pos] = Slot(pos, env, policy, memory, obs, info)
        self._record(seq, "start", pos)
        return slot

    def _propose(self, seq: int, pos: int, expect: int | None) -> Proposal:
        slot = self.slots[pos]
        if slot.proposal is not None:
            raise RuntimeError(f"image {pos} already has proposal {slot.proposal.seq} open")
        env = slot.env
        if self.batched:
            acts, confs = self.agent.act_batch(slot.obs[None], [slot.rejected], [env],
                                               episodes=[slot.memory])
            action, conf = int(acts[0]), float(confs[0])
        else:
            action, conf = choose_click(slot.policy, slot.obs, slot.info, env)
        if expect is not None and action != expect:
            raise Divergence(seq, expect, action)
        label, y, x = env.decode_action(action)
        (ch, cw), gw = env.cell, env.grid[1]
        slot.proposal = Proposal(seq, action, label, y, x, (y // ch) * gw + x // cw,
                                 float(conf))
        self._record(seq, "propose", pos, action)
        return slot.proposal

    def _answer(self, seq: int, pos: int, answer: int) -> bool:
        slot = self.slots[pos]
        prop = slot.proposal
        if prop is None:
            raise RuntimeError(f"image {pos} has no open proposal")
        env = slot.env
        env.oracle.give(int(answer))
        obs, r, term, trunc, info = env.step(prop.action)
        if self.batched:
            self.agent.answer_batch([slot.memory], [float(r)])
            self.agent.learn_online(slot.obs, prop.action, float(r))
            if r < 0:
                slot.rejected.append((int(info["click"]["label"]), int(info["patch"])))
        else:
            slot.policy.observe(prop.action, float(r), bool(term), public_info(info))
        slot.obs, slot.info, slot.proposal = obs, info, None
        slot.clicks += 1
        self._record(seq, "answer", pos, prop.action, int(answer))
        if term or trunc:
            self._close(pos)
            return True
        return False

    def _close(self, pos: int) -> None:
        slot = self.slots.pop(pos)
        self._last_closed = slot
        self._free_envs.append(slot.env)
        if not self.batched:
            self._free_twins.append(slot.policy)

    def apply(self, event: Mapping[str, Any]) -> None:
        """Replay one stored event (a row of the ``events`` table)."""
        kind, seq, pos = event["kind"], int(event["seq"]), int(event["pos"])
        if kind == "start":
            self.start(seq, pos)
        elif kind == "propose":
            self.propose(seq, pos, expect=int(event["action"]))
        elif kind == "answer":
            self.answer(seq, pos, int(event["answer"]))
        elif kind == "skip":
            self.skip(seq, pos)
        else:
            raise ValueError(f"unknown event kind {kind!r}")

    # ------------------------------------------------------------------ views
    def mask(self, pos: int) -> np.ndarray:
        """The current mask of an image under way, or of the image closed last."""
        slot = self.slots.get(pos)
        if slot is None:
            slot = self._last_closed
            if slot is None or slot.pos != pos:
                raise KeyError(f"image {pos} is not under way")
        return slot.env.current_mask()

    def selection(self, pos: int) -> np.ndarray:
        """``(P,)`` bool: the patches the open proposal's click would set to its label (the
        row of the propagation graph; the cells where the mask differs from the label are what
        it would change)."""
        slot = self.slots[pos]
        assert slot.proposal is not None
        return slot.env.propagation_graph()[slot.proposal.patch]

    # ------------------------------------------------------------------ checkpoints
    def snapshot(self) -> bytes:
        """The agent side of the state (agent, twins, episode memories) after :attr:`seq`, as
        bytes for a checkpoint file; the envs are rebuilt from the answers by :meth:`restore`."""
        import torch

        state = {"version": CHECKPOINT_VERSION, "seq": self.seq, "digest": self.digest,
                 "agent": self.agent, "free_twins": self._free_twins,
                 "slots": {pos: {"policy": s.policy, "memory": s.memory, "rejected": s.rejected,
                                 "clicks": s.clicks, "proposal": s.proposal}
                           for pos, s in self.slots.items()}}
        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.getvalue()

    @staticmethod
    def snapshot_header(data: bytes) -> tuple[int, str, int]:
        """``(seq, digest, version)`` of :meth:`snapshot` bytes (loads them)."""
        state = _load(data)
        return int(state["seq"]), str(state["digest"]), int(state.get("version", 0))

    def restore(self, data: bytes, answers: Mapping[int, Iterable[tuple[int, int]]]) -> None:
        """Load a :meth:`snapshot` into this freshly built engine.

        Args:
            data: The snapshot.
            answers: Per image under way, its ``(action, answer)`` pairs up to the snapshot, in
                order: each env is reset and stepped through them again.
        """
        if self.seq:
            raise RuntimeError("restore needs a freshly built engine")
        state = _load(data)
        self.agent = state["agent"]
        self._free_twins = list(state["free_twins"])
        for pos, s in state["slots"].items():
            env = self._free_envs.pop() if self._free_envs else self._new_env()
            obs, info = env.reset(seed=self.seed + pos, options={"index": int(self.order[pos])})
            steps = list(answers.get(pos, ()))
            for action, answer in steps:
                env.oracle.give(int(answer))
                obs, _, _, _, info = env.step(int(action))
            if len(steps) != s["clicks"]:
                raise RuntimeError(f"image {pos}: {len(steps)} answers stored, the checkpoint "
                                   f"has {s['clicks']}")
            self.slots[pos] = Slot(pos, env, s["policy"], s["memory"], obs, info,
                                   s["rejected"], s["clicks"], s["proposal"])
        self.seq, self.digest = int(state["seq"]), str(state["digest"])


def event_seed(seed: int, seq: int) -> int:
    """The seed of torch's global generator around event ``seq`` of a project seeded ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(seq)]).generate_state(1)[0])


def digest_step(digest: str, seq: int, kind: str, pos: int, action: int | None,
                answer: int | None) -> str:
    """The running hash of the event log after one more event (a checkpoint stores it; a
    checkpoint whose hash is not that of the stored log up to it is not used)."""
    text = f"{digest}|{seq}:{kind}:{pos}:{action}:{answer}"
    return hashlib.sha256(text.encode()).hexdigest()


def log_digest(events: Iterable[Mapping[str, Any]]) -> str:
    """:func:`digest_step` over stored events (``action`` only of proposals and answers)."""
    digest = ""
    for e in events:
        kind = e["kind"]
        action = int(e["action"]) if kind in ("propose", "answer") else None
        answer = int(e["answer"]) if kind == "answer" else None
        digest = digest_step(digest, int(e["seq"]), kind, int(e["pos"]), action, answer)
    return digest


def _load(data: bytes) -> dict[str, Any]:
    import torch

    # Our own checkpoint, written atomically beside the database (never from a request).
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
