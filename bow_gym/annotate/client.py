"""A client of the annotation app, and a simulated annotator that answers over HTTP.

The simulated annotator stands in for the person: it asks for the current task, judges the
proposed change with a simulated expert (the Dice oracle by default, against the ground truth of
the project's data set, which only it reads) and answers over HTTP, exactly as the page does. With
the same seeds it gives the masks of the in-process env (a test checks it); the load test
(``benchmarks/annotate_latency.py``) runs several at once.
"""

from __future__ import annotations

import base64
import http.client
import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np

from bow_gym.oracles import DiceOracle, Oracle


class HttpError(RuntimeError):
    """A refused request (status 4xx/5xx) with the app's message."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


class Client:
    """The JSON API over one keep-alive connection (reconnecting when it drops).

    Args:
        url: The app's address, e.g. ``http://127.0.0.1:8765``.
        token: The annotator's token.
        timeout: Seconds per request.
    """

    def __init__(self, url: str, token: str, timeout: float = 30.0):
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"url must be http://HOST:PORT, got {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.token, self.timeout = token, timeout
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One request; returns the decoded JSON (or bytes for images).

        Raises:
            HttpError: A 4xx/5xx answer.
            OSError: The server cannot be reached (the connection is dropped first).
        """
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            self._conn.request(method, path, body=data, headers=headers)
            resp = self._conn.getresponse()
            payload = resp.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise ConnectionError(f"no answer from http://{self.host}:{self.port}") from None
        if resp.getheader("Connection", "").lower() == "close":
            self.close()
        if resp.getheader("Content-Type", "").startswith("image/"):
            return payload
        result = json.loads(payload or b"{}")
        if resp.status >= 400:
            raise HttpError(resp.status, result.get("error", ""))
        return result

    def next(self) -> dict[str, Any]:
        return self.request("POST", "/api/next", {})

    def answer(self, proposal: int, answer: str) -> dict[str, Any]:
        return self.request("POST", "/api/answer", {"proposal": proposal, "answer": answer})

    def skip(self, image: str) -> dict[str, Any]:
        return self.request("POST", "/api/skip", {"image": image})

    def undo(self) -> dict[str, Any]:
        return self.request("POST", "/api/undo", {})

    def image(self, image: str) -> bytes:
        return self.request("GET", f"/api/image?id={quote(image)}")


def task_masks(task: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The current mask and the mask after the proposed click, ``(size, size)`` bool each."""
    from bow_gym.annotate.project import unpack_mask

    size = int(task["size"])
    return (unpack_mask(base64.b64decode(task["mask"]), size),
            unpack_mask(base64.b64decode(task["after"]), size))


def read_config(db: str | Path) -> dict[str, Any]:
    """A project's configuration, read without writing to its database.

    Raises:
        FileNotFoundError: No database, or one without a project.
    """
    if not Path(db).is_file():
        raise FileNotFoundError(f"no annotation database {db}")
    conn = sqlite3.connect(f"file:{Path(db).resolve()}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
    finally:
        conn.close()
    if row is None:
        raise FileNotFoundError(f"{db} holds no project yet")
    return json.loads(row[0])


def ground_truth_lookup(config: dict[str, Any], size: int = 128
                        ) -> Callable[[str], np.ndarray]:
    """``image_id -> ground truth at working resolution`` for a project's data set (what only
    a simulated annotator may read).

    Raises:
        ValueError: The data set has no ground truth (a person must answer).
    """
    from bow_gym.metrics import resize_mask
    from bow_gym.rounds import RoundsConfig, build_datasets

    dataset = build_datasets(RoundsConfig(**config))[0]
    if not dataset.has_ground_truth:
        raise ValueError(f"data set {dataset.name!r} has no ground truth: only a person can "
                         "answer for it")
    cache: dict[str, np.ndarray] = {}

    def lookup(image_id: str) -> np.ndarray:
        if image_id not in cache:
            mask = dataset[dataset.index_of(image_id)].mask
            cache[image_id] = resize_mask(mask, (size, size))
        return cache[image_id]

    return lookup


@dataclass
class SimulationLog:
    """What a simulated annotator did: per answer the proposal, the answer and the latency."""

    proposals: list[int] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    reconnects: int = 0


def simulate(client: Client, ground_truth: Callable[[str], np.ndarray], *,
             oracle: Oracle | None = None, max_answers: int | None = None,
             think_s: float = 0.0, reconnect_s: float = 60.0,
             log: SimulationLog | None = None) -> SimulationLog:
    """Answer proposals over HTTP until the project is done or ``max_answers`` were given.

    A request that finds no server (it was killed) is retried for up to ``reconnect_s``: the
    annotator then asks for the current task, and answers again only if its last answer was
    not committed (the open proposal is still the one it answered), so no answer is lost or
    given twice.

    Args:
        client: The annotator's client.
        ground_truth: ``image_id -> (size, size)`` bool ground truth.
        oracle: The simulated expert (default :class:`~bow_gym.oracles.DiceOracle`).
        max_answers: Stop after this many committed answers.
        think_s: Seconds to wait before each answer (a person's thinking time).
        reconnect_s: How long to wait for a killed server to come back.
        log: Append to this log.

    Returns:
        The log (committed answers only).
    """
    oracle = oracle or DiceOracle()
    log = log or SimulationLog()

    def call(fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        deadline = time.monotonic() + reconnect_s
        while True:
            try:
                return fn()
            except ConnectionError:
                if time.monotonic() > deadline:
                    raise
                log.reconnects += 1
                time.sleep(0.05)
            except HttpError as e:
                if e.status in (404, 409):  # answered before the kill, or withdrawn by an undo
                    return None
                raise

    task = call(client.next)
    while task is not None and not task["done"]:
        if max_answers is not None and len(log.answers) >= max_answers:
            break
        before, after = task_masks(task)
        gt = ground_truth(task["image"]["id"])
        answer = oracle.judge_masks(before, after, gt)
        pid = int(task["proposal"]["id"])
        if think_s:
            time.sleep(think_s)
        t = time.perf_counter()
        result = call(lambda pid=pid, answer=answer: client.answer(
            pid, "better" if answer > 0 else "worse"))
        elapsed = time.perf_counter() - t
        if result is None:  # the server restarted: was the answer committed before the kill?
            result = call(client.next)
            assert result is not None
            if not result["done"] and int(result["proposal"]["id"]) == pid:
                task = result  # not committed: the same click is open; answer it again
                continue
            # committed: it counts once (the next task is the one after it)
        log.proposals.append(pid)
        log.answers.append(answer)
        log.latency_s.append(elapsed)
        task = result
    return log
