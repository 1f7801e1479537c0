"""A real server process killed with SIGKILL at random moments: every answer is kept, none is
doubled, and a restart with the same command resumes at the same click."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from bow_gym.annotate.client import Client, SimulationLog, ground_truth_lookup, simulate
from bow_gym.annotate.store import Store
from tests._annotate_support import PROJECT, ServerProcess, free_port

pytestmark = pytest.mark.slow


def _create(tmp_path, port):
    db = tmp_path / "p.db"
    store = Store(db)
    token = store.add_annotator("sim")
    store.close()
    server = ServerProcess(db, port, "--limit", str(PROJECT["limit"]), "--clicks-per-image",
                           str(PROJECT["clicks_per_image"]), "--set", "feature_cache='none'",
                           "--checkpoint-every", "5")
    return db, token, server


def test_kill_at_random_moments_loses_no_answer(tmp_path):
    db, token, server = _create(tmp_path, free_port())
    rng = np.random.default_rng(0)
    log = SimulationLog()
    with server:
        config = json.loads(Store(db).get_meta("config"))
        gt = ground_truth_lookup(config)
        worker = threading.Thread(target=simulate, args=(Client(server.url, token), gt),
                                  kwargs={"max_answers": 16, "reconnect_s": 120, "log": log},
                                  daemon=True)
        worker.start()
        for _ in range(3):
            time.sleep(float(rng.uniform(0.3, 1.5)))
            server.kill()
            server.start()
        worker.join(timeout=300)
        assert not worker.is_alive()
    assert len(log.answers) == 16 and len(set(log.proposals)) == 16
    store = Store(db)
    rows = store.conn.execute("SELECT proposal, answer FROM events WHERE kind = 'answer' AND "
                              "undone_at IS NULL ORDER BY seq").fetchall()
    store.close()
    assert [r["proposal"] for r in rows] == log.proposals  # all kept, none twice, in order
    assert [r["answer"] for r in rows] == log.answers


def test_restart_after_sigkill_resumes_at_the_same_click(tmp_path):
    db, token, server = _create(tmp_path, free_port())
    with server:
        client = Client(server.url, token)
        t = client.next()
        for _ in range(4):
            t = client.answer(t["proposal"]["id"], "better")
        server.kill()
        server.start()
        again = Client(server.url, token).next()
        assert again["proposal"] == t["proposal"] and again["mask"] == t["mask"]
        assert again["history"] == t["history"]
