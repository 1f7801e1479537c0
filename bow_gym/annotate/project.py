"""An annotation project: the database, the engine, and what each request may do.

Every public method of :class:`Project` is one request of the web app (:mod:`.app`): it checks
the input, then changes the engine and the database together under one lock, committing in one
transaction before it answers. A request that fails a check writes nothing; a failure after the
checks rolls the transaction back and rebuilds the engine from the database, so memory and
database never disagree.
"""

from __future__ import annotations

import base64
import json
import math
import queue
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bow_gym.annotate.engine import Divergence, Engine, log_digest
from bow_gym.annotate.store import Annotator, Store, utc_now
from bow_gym.io_utils import atomic_write_bytes
from bow_gym.rounds import RoundsConfig, config_differences

#: Answers accepted in a request body.
ANSWERS = {"better": 1, "worse": -1, 1: 1, -1: -1}
#: Longest image id a request may name (ids are file stems).
MAX_ID_LENGTH = 256


class ApiError(Exception):
    """A refused request: an HTTP status (4xx) and a message for the person or the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def pack_mask(mask: np.ndarray) -> bytes:
    """A bool mask as packed bits (row-major, the first pixel in the highest bit)."""
    return np.packbits(np.asarray(mask, bool).ravel()).tobytes()


def unpack_mask(data: bytes, size: int) -> np.ndarray:
    """The ``(size, size)`` bool mask of :func:`pack_mask` bytes."""
    bits = np.unpackbits(np.frombuffer(data, np.uint8))[: size * size]
    return bits.reshape(size, size).astype(bool)


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread inside: a replayed log gives the stored clicks only if the agent's
    floating-point results are the same, and the number of threads changes them. (``bow-gym
    annotate serve`` runs on one thread throughout, which makes this a no-op there.)"""
    import torch

    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def resolve_config(store: Store, config: RoundsConfig | None) -> tuple[RoundsConfig, bool]:
    """The project's configuration and whether the project is new.

    A project keeps the configuration it was started with; a ``config`` given again must be the
    same (except the fields that do not change results, such as ``rounds``).

    Raises:
        ValueError: A new project without ``config``, or a ``config`` that differs from the
            stored one (naming the fields).
    """
    stored = store.config()
    if stored is None:
        if config is None:
            raise ValueError(f"{store.path} holds no project yet: give its data set and agent "
                             "(bow-gym annotate serve --dataset ... [--root ...] [--agent ...])")
        return config, True
    if config is not None:
        differ, was, given = config_differences(stored, config)
        if differ:
            raise ValueError(
                f"{store.path} is a project of another configuration: {differ} differ (stored: "
                f"{was}, given: {given}); "
                "start it without configuration options, or use another --db")
    return RoundsConfig(**stored), False


class Project:
    """An annotation project in one SQLite database (see the module docstring).

    Args:
        db: The database file; created with the project if missing.
        config: The project's configuration (needed for a new project; a later one must match).
        device: Torch device of the agent.
        lease_seconds: How long an image stays an annotator's without a request from them;
            after that another annotator may take it over (its episode continues).
        checkpoint_every: Write the agent's state after this many events (0: never; a restart
            then replays the whole log).
        keep_checkpoints: Checkpoint files kept (the older ones serve undo).
    """

    def __init__(self, db: str | Path, config: RoundsConfig | None = None, *,
                 device: str = "cpu", lease_seconds: float = 1800.0,
                 checkpoint_every: int = 64, keep_checkpoints: int = 4):
        self.store = Store(db)
        self.config, new = resolve_config(self.store, config)
        self.device = device
        self.lease_seconds = float(lease_seconds)
        self.checkpoint_every = int(checkpoint_every)
        self.keep_checkpoints = max(1, int(keep_checkpoints))
        self.checkpoint_dir = Path(f"{self.store.path}-checkpoints")
        self.lock = threading.RLock()
        probe = Engine(self.config, device=device)
        self._dataset, self._backbone = probe.dataset, probe.backbone
        self.ids = probe.ids
        self._pos_of = {i: p for p, i in enumerate(self.ids)}
        self.size = probe._free_envs[0].obs_size
        if new:
            with self.store.transaction():
                self.store.set_meta("config", json.dumps(asdict(self.config)))
                self.store.init_images(self.ids, [int(i) for i in probe.order])
        else:
            stored = [r[0] for r in self.store.conn.execute(
                "SELECT image_id FROM images ORDER BY pos")]
            if stored != self.ids:
                raise ValueError(f"{self.store.path}: the data set's images are not those the "
                                 f"project started with ({len(stored)} stored, {len(self.ids)} "
                                 "now, or another order): was the data folder changed?")
        self._ckpt_seq = 0
        self._writes: queue.Queue[tuple[int, bytes] | None] = queue.Queue()
        self._writer = threading.Thread(target=self._write_checkpoints, daemon=True,
                                         name="bow-gym-checkpoints")
        self._writer.start()
        self._png_cache: OrderedDict[int, bytes] = OrderedDict()
        t = time.time()
        self.engine = self._replay()
        self.replay_seconds = time.time() - t
        self._ckpt_seq = self.engine.seq

    def close(self) -> None:
        """Finish writing checkpoints and close the database."""
        self._writes.put(None)
        self._writer.join(timeout=30)
        self.store.close()

    # ------------------------------------------------------------------ rebuilding
    def _checkpoints(self) -> list[Path]:
        if not self.checkpoint_dir.is_dir():
            return []
        return sorted(self.checkpoint_dir.glob("*.pt"), reverse=True)

    def _replay(self, exclude: frozenset[int] = frozenset()) -> Engine:
        """A new engine: the newest checkpoint before the first excluded event whose hash is
        that of the stored log, then every live event after it except ``exclude``.

        Raises:
            Divergence: A replayed proposal is not the stored click.
        """
        with one_thread():
            return self._replay_events(exclude)

    def _replay_events(self, exclude: frozenset[int]) -> Engine:
        first = min(exclude) if exclude else math.inf
        engine = Engine(self.config, dataset=self._dataset, backbone=self._backbone,
                        device=self.device)
        events = self.store.live_events()
        start = 0
        for path in self._checkpoints():
            try:
                seq = int(path.stem)
            except ValueError:
                continue
            if seq >= first:
                continue
            data = path.read_bytes()
            try:
                cseq, digest, version = Engine.snapshot_header(data)
            except Exception:  # noqa: BLE001 - an unreadable checkpoint is only skipped
                continue
            upto = [e for e in events if e["seq"] <= cseq]
            if cseq != seq or version != 1 or log_digest(upto) != digest:
                continue
            answers: dict[int, list[tuple[int, int]]] = defaultdict(list)
            for e in upto:
                if e["kind"] == "answer":
                    answers[int(e["pos"])].append((int(e["action"]), int(e["answer"])))
                elif e["kind"] == "start":
                    answers[int(e["pos"])] = []  # an image started again after an undo
            engine.restore(data, answers)
            start = cseq
            break
        for e in events:
            if e["seq"] > start and e["seq"] not in exclude:
                engine.apply(e)
        return engine

    def _mutate(self, fn: Any) -> Any:
        """``fn()`` inside one transaction; on any failure the engine is rebuilt from the
        database (which the rollback left as it was)."""
        try:
            with one_thread(), self.store.transaction():
                return fn()
        except BaseException:
            self.engine = self._replay()
            raise

    def _maybe_checkpoint(self) -> None:
        if self.checkpoint_every and self.engine.seq - self._ckpt_seq >= self.checkpoint_every:
            self._ckpt_seq = self.engine.seq
            self._writes.put((self.engine.seq, self.engine.snapshot()))

    def _write_checkpoints(self) -> None:
        # Off the request path: the snapshot was taken under the lock, the file is written here.
        while (item := self._writes.get()) is not None:
            seq, data = item
            try:
                atomic_write_bytes(self.checkpoint_dir / f"{seq:012d}.pt", data)
                for old in self._checkpoints()[self.keep_checkpoints:]:
                    old.unlink(missing_ok=True)
            except OSError as e:  # a missing checkpoint costs replay time, never answers
                print(f"bow-gym annotate: checkpoint {seq} not written: {e}")
            finally:
                self._writes.task_done()
        self._writes.task_done()

    def flush_checkpoints(self) -> None:
        """Write a checkpoint of the current state now and wait for it (tests, shutdown)."""
        with self.lock:
            self._ckpt_seq = self.engine.seq
            self._writes.put((self.engine.seq, self.engine.snapshot()))
        self._writes.join()

    # ------------------------------------------------------------------ engine + database
    def _start(self, annotator: Annotator, pos: int) -> None:
        seq = self.store.add_event("start", pos, annotator.id)
        self.engine.start(seq, pos)
        self.store.update_image(pos, status="active", holder=annotator.id,
                                lease_until=time.time() + self.lease_seconds, clicks=0,
                                mask=pack_mask(self.engine.mask(pos)))
        self._propose(annotator, pos)

    def _propose(self, annotator: Annotator, pos: int) -> None:
        seq = self.store.add_event("propose", pos, annotator.id)
        p = self.engine.propose(seq, pos)
        self.store.conn.execute(
            "UPDATE events SET click = ?, action = ?, label = ?, y = ?, x = ?, patch = ?, "
            "confidence = ? WHERE seq = ?",
            (self.engine.slots[pos].clicks + 1, p.action, p.label, p.y, p.x, p.patch,
             None if math.isnan(p.confidence) else p.confidence, seq))

    def _lease_next(self, annotator: Annotator) -> int | None:
        """The annotator's image: the one they hold, else a new lease (None: nothing left)."""
        row = self.store.held_by(annotator.id)
        if row is not None:
            self.store.update_image(row["pos"], lease_until=time.time() + self.lease_seconds)
            return int(row["pos"])
        row = self.store.free_image(time.time())
        if row is None:
            return None
        pos = int(row["pos"])
        if row["status"] == "active":  # a lease that ran out: the episode continues here
            self.store.update_image(pos, holder=annotator.id,
                                    lease_until=time.time() + self.lease_seconds)
        else:
            self._start(annotator, pos)
        return pos

    # ------------------------------------------------------------------ requests
    def authenticate(self, token: str | None) -> Annotator:
        """The annotator of a bearer token.

        Raises:
            ApiError: 401 without a token or with an unknown one; 403 for a disabled account.
        """
        if not token:
            raise ApiError(401, "missing token: send 'Authorization: Bearer <token>' (create "
                           "one with: bow-gym annotate user add NAME)")
        if len(token) > 256:
            raise ApiError(401, "unknown token")
        with self.lock:
            found = self.store.annotator_by_token(token)
        if found is None:
            raise ApiError(401, "unknown token")
        annotator, active = found
        if not active:
            raise ApiError(403, f"annotator {annotator.name!r} is disabled")
        return annotator

    def next_task(self, annotator: Annotator) -> dict[str, Any]:
        """The annotator's current image and open proposal (leasing a new image if they hold
        none); the same proposal until it is answered, across reloads and restarts."""
        with self.lock:
            pos = self._mutate(lambda: self._lease_next(annotator))
            self._maybe_checkpoint()
            return self._task(annotator, pos)

    def answer(self, annotator: Annotator, body: Any) -> dict[str, Any]:
        """Answer a proposal (``{"proposal": id, "answer": "better" | "worse"}``); returns the
        next task. Idempotent per proposal: a second answer to it is refused (409)."""
        if not isinstance(body, dict) or set(body) - {"proposal", "answer"}:
            raise ApiError(400, "body must be a JSON object {\"proposal\": <id>, \"answer\": "
                           "\"better\" | \"worse\"}")
        pid, ans = body.get("proposal"), body.get("answer")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid < 1:
            raise ApiError(400, f"'proposal' must be a positive integer id, got {pid!r}")
        if isinstance(ans, bool) or not isinstance(ans, (str, int)) or ans not in ANSWERS:
            raise ApiError(400, f"'answer' must be \"better\" or \"worse\", got {ans!r}")
        value = ANSWERS[ans]
        with self.lock:
            ev = self.store.event(pid)
            if ev is None or ev["kind"] != "propose":
                raise ApiError(404, f"no proposal {pid}")
            pos = int(ev["pos"])
            image = self.store.image(pos)
            done = self.store.answer_of(pid)
            if done is not None:
                raise ApiError(409, f"proposal {pid} was already answered "
                               f"({'better' if done['answer'] > 0 else 'worse'}, by "
                               f"{self.store.annotator_name(done['annotator'])} at "
                               f"{done['created_at']}); nothing was changed")
            if image["holder"] != annotator.id:
                raise ApiError(403, f"proposal {pid} is for image {image['image_id']!r}, which "
                               "is not in your queue")
            if ev["undone_at"] is not None:
                raise ApiError(409, f"proposal {pid} was withdrawn (an undo changed the agent); "
                               "ask for the current one (POST /api/next)")
            slot = self.engine.slots.get(pos)
            if (image["status"] != "active" or slot is None or slot.proposal is None
                    or slot.proposal.seq != pid):
                raise ApiError(409, f"proposal {pid} is not open; ask for the current one "
                               "(POST /api/next)")

            def run() -> int | None:
                seq = self.store.add_event("answer", pos, annotator.id, proposal=pid,
                                           click=slot.clicks + 1, action=slot.proposal.action,
                                           answer=value)
                finished = self.engine.answer(seq, pos, value)
                self.store.update_image(pos, clicks=slot.clicks,
                                        mask=pack_mask(self.engine.mask(pos)),
                                        **({"status": "done", "lease_until": None}
                                           if finished else
                                           {"lease_until": time.time() + self.lease_seconds}))
                if not finished:
                    self._propose(annotator, pos)
                    return pos
                return self._lease_next(annotator)

            nxt = self._mutate(run)
            self._maybe_checkpoint()
            return self._task(annotator, nxt)

    def skip(self, annotator: Annotator, body: Any) -> dict[str, Any]:
        """Skip an image (``{"image": id}``): it is closed with the clicks answered so far,
        marked skipped (left out of exports), and the next image is leased."""
        if not isinstance(body, dict) or set(body) != {"image"}:
            raise ApiError(400, "body must be a JSON object {\"image\": <image id>}")
        with self.lock:
            pos = self._own_image(annotator, body["image"], active=True)

            def run() -> int | None:
                seq = self.store.add_event("skip", pos, annotator.id)
                self.engine.skip(seq, pos)
                self.store.update_image(pos, status="skipped", lease_until=None)
                return self._lease_next(annotator)

            nxt = self._mutate(run)
            return self._task(annotator, nxt)

    def undo(self, annotator: Annotator) -> dict[str, Any]:
        """Undo the annotator's last answer (see ``docs/annotate.md``): the project is rebuilt
        from its log without that answer, so the mask and everything the agent learned are as if
        it had never been given; the same proposal is open again. Refused (409) when another
        annotator's answer came after it and the agent would have proposed differently there
        without it."""
        with self.lock:
            conn = self.store.conn
            last = conn.execute("SELECT * FROM events WHERE annotator = ? AND kind IN "
                                "('answer', 'skip') AND undone_at IS NULL ORDER BY seq DESC "
                                "LIMIT 1", (annotator.id,)).fetchone()
            if last is None:
                raise ApiError(409, "nothing to undo: you have no answer yet")
            if last["kind"] == "skip":
                raise ApiError(409, "nothing to undo: you skipped an image after your last "
                               "answer")
            pos = int(last["pos"])
            image = self.store.image(pos)
            if image["status"] == "active" and image["holder"] != annotator.id:
                raise ApiError(409, f"image {image['image_id']!r} is now in another annotator's "
                               "queue")
            # The answer, and what this annotator was shown after it (the next click, or the
            # next image), are taken back; the rest of the log is replayed without them.
            later = conn.execute("SELECT seq, kind, pos FROM events WHERE annotator = ? AND "
                                 "seq > ? AND undone_at IS NULL", (annotator.id,
                                                                   last["seq"])).fetchall()
            exclude = {int(last["seq"])} | {int(r["seq"]) for r in later}
            released = {int(r["pos"]) for r in later if r["kind"] == "start"}
            for _ in range(len(self.engine.slots) + 2):
                try:
                    engine = self._replay(frozenset(exclude))
                    break
                except Divergence as d:
                    if self.store.answer_of(d.seq) is not None:
                        ev = self.store.event(d.seq)
                        raise ApiError(409, "cannot undo: an answer by "
                                       f"{self.store.annotator_name(ev['annotator'])} came after "
                                       "yours, and without yours the agent would have proposed "
                                       "another click there") from None
                    exclude.add(d.seq)  # another annotator's open proposal: proposed again
            else:  # pragma: no cover - each retry withdraws one more open proposal
                raise ApiError(409, "cannot undo: the log does not replay without the answer")
            first = min(exclude)
            for path in self._checkpoints():
                if int(path.stem) >= first:
                    path.unlink(missing_ok=True)
            self._ckpt_seq = min(self._ckpt_seq, first - 1)

            def run() -> None:
                self.store.mark_undone(sorted(exclude), annotator.id)
                self.engine = engine
                # Any other image this annotator holds is let go (the undone image is theirs).
                self.store.conn.execute("UPDATE images SET lease_until = 0 WHERE status = "
                                        "'active' AND holder = ? AND pos != ?",
                                        (annotator.id, pos))
                for p in released:
                    self.store.update_image(p, status="open", holder=None, lease_until=None,
                                            clicks=0, mask=None)
                slot = engine.slots[pos]
                self.store.update_image(pos, status="active", holder=annotator.id,
                                        lease_until=time.time() + self.lease_seconds,
                                        clicks=slot.clicks, mask=pack_mask(engine.mask(pos)))
                for p, s in sorted(engine.slots.items()):
                    if s.proposal is None:  # withdrawn above: its holder gets a new one
                        holder = self.store.image(p)["holder"]
                        self._propose(Annotator(holder, ""), p)

            self._mutate(run)
            return self._task(annotator, pos)

    def image_png(self, annotator: Annotator, image_id: Any) -> bytes:
        """The image (PNG, at most 1024 px a side), if it is in the annotator's queue (held by
        them, or answered by them before)."""
        with self.lock:
            pos = self._own_image(annotator, image_id, active=False)
            cached = self._png_cache.get(pos)
        if cached is not None:
            return cached
        import cv2

        image = self._dataset[int(self.engine.order[pos])].image
        h, w = image.shape[:2]
        scale = min(1.0, 1024 / max(h, w))
        if scale < 1.0:
            image = cv2.resize(image, (round(w * scale), round(h * scale)),
                               interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        data = buf.tobytes()
        with self.lock:
            self._png_cache[pos] = data
            while len(self._png_cache) > 32:
                self._png_cache.popitem(last=False)
        return data

    def me(self, annotator: Annotator) -> dict[str, Any]:
        with self.lock:
            return {"annotator": annotator.name, "project": self.config.name,
                    "dataset": self.config.dataset, "agent": self.config.agent,
                    "images": len(self.ids), "clicks_per_image": self.config.clicks_per_image,
                    "progress": self._progress(annotator)}

    # ------------------------------------------------------------------ views
    def _own_image(self, annotator: Annotator, image_id: Any, *, active: bool) -> int:
        if not isinstance(image_id, str) or not image_id or len(image_id) > MAX_ID_LENGTH:
            raise ApiError(400, f"image id must be a non-empty string of at most "
                           f"{MAX_ID_LENGTH} characters, got {str(image_id)[:80]!r}")
        if (image_id.startswith(("/", "~", ".")) or "\\" in image_id or ".." in image_id
                or any(ord(c) < 32 for c in image_id)):
            raise ApiError(400, f"image id {image_id[:80]!r} looks like a file path; ids are "
                           "the names the app shows, never paths")
        pos = self._pos_of.get(image_id)
        if pos is None:
            raise ApiError(404, f"no image {image_id!r} in this project")
        row = self.store.image(pos)
        if active:
            if row["holder"] != annotator.id:
                raise ApiError(403, f"image {image_id!r} is not in your queue")
            if row["status"] != "active":
                raise ApiError(409, f"image {image_id!r} is {row['status']}, not under way")
            return pos
        if row["holder"] == annotator.id:
            return pos
        mine = self.store.conn.execute("SELECT 1 FROM events WHERE pos = ? AND annotator = ? "
                                       "LIMIT 1", (pos, annotator.id)).fetchone()
        if mine is None:
            raise ApiError(403, f"image {image_id!r} is not in your queue")
        return pos

    def _progress(self, annotator: Annotator) -> dict[str, Any]:
        counts = self.store.counts()
        mine = self.store.conn.execute("SELECT COUNT(*) FROM events WHERE kind = 'answer' AND "
                                       "annotator = ? AND undone_at IS NULL",
                                       (annotator.id,)).fetchone()[0]
        return {"images": len(self.ids), "done": counts["done"], "skipped": counts["skipped"],
                "active": counts["active"], "open": counts["open"], "my_answers": mine}

    def _task(self, annotator: Annotator, pos: int | None) -> dict[str, Any]:
        progress = self._progress(annotator)
        can_undo = self.store.conn.execute(
            "SELECT kind FROM events WHERE annotator = ? AND kind IN ('answer', 'skip') AND "
            "undone_at IS NULL ORDER BY seq DESC LIMIT 1", (annotator.id,)).fetchone()
        can_undo = can_undo is not None and can_undo[0] == "answer"
        if pos is None:
            return {"done": True, "progress": progress, "can_undo": can_undo}
        slot = self.engine.slots[pos]
        prop = slot.proposal
        assert prop is not None
        env = slot.env
        mask = env.current_mask()
        sel = env.propagation_graph()[prop.patch]
        (ch, cw), (gh, gw) = env.cell, env.grid
        cells = np.repeat(np.repeat(sel.reshape(gh, gw), ch, 0), cw, 1)
        after = np.where(cells, bool(prop.label), mask)
        history = [{"click": int(r["click"]), "answer": "better" if r["answer"] > 0 else "worse",
                    "by": r["name"], "at": r["created_at"]}
                   for r in self.store.conn.execute(
                       "SELECT e.click, e.answer, e.created_at, a.name FROM events e JOIN "
                       "annotators a ON a.id = e.annotator WHERE e.pos = ? AND e.kind = 'answer' "
                       "AND e.undone_at IS NULL ORDER BY e.seq", (pos,))]
        k = self.config.clicks_per_image
        return {
            "done": False,
            "image": {"id": self.ids[pos], "number": pos + 1, "of": len(self.ids)},
            "click": slot.clicks + 1, "clicks_per_image": k, "clicks_left": k - slot.clicks,
            "proposal": {"id": prop.seq, "label": "foreground" if prop.label else "background",
                         "y": prop.y, "x": prop.x, "patch": prop.patch,
                         "confidence": None if math.isnan(prop.confidence) else prop.confidence},
            "size": int(env.obs_size), "grid": [int(gh), int(gw)],
            "mask": base64.b64encode(pack_mask(mask)).decode(),
            "after": base64.b64encode(pack_mask(after)).decode(),
            "pixels_changed": int(np.count_nonzero(after != mask)),
            "history": history, "progress": progress, "can_undo": can_undo,
            "served_at": utc_now(),
        }
