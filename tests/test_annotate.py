"""The annotation app through Flask's test client: routes, accounts, bad input, undo, resume,
export, data without ground truth, and a simulated annotator over HTTP."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from bow_gym.annotate.app import create_app
from bow_gym.annotate.client import task_masks
from bow_gym.annotate.project import Project
from tests._annotate_support import project_config


@pytest.fixture
def project(tmp_path):
    p = Project(tmp_path / "p.db", project_config(), checkpoint_every=4)
    yield p
    p.close()


@pytest.fixture
def app(project):
    tokens = {n: project.store.add_annotator(n) for n in ("alice", "bob", "carol")}
    client = create_app(project).test_client()

    def call(method, path, who="alice", **kw):
        headers = kw.pop("headers", {})
        if who:
            headers["Authorization"] = f"Bearer {tokens[who]}"
        return client.open(path, method=method, headers=headers, **kw)

    call.tokens, call.client, call.project = tokens, client, project
    return call


def n_rows(project, table="events"):
    return project.store.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def answer(app, task, value="better", who="alice"):
    return app("POST", "/api/answer", who, json={"proposal": task["proposal"]["id"],
                                                  "answer": value})


def test_page_health_and_static_need_no_token(app):
    assert app("GET", "/", None).status_code == 200
    assert b"bow-gym" in app("GET", "/", None).data
    assert app("GET", "/static/app.js", None).status_code == 200
    assert app("GET", "/api/health", None).json == {"ok": True}


@pytest.mark.parametrize("headers, status, text", [
    ({}, 401, "missing token"),
    ({"Authorization": "Bearer nope"}, 401, "unknown token"),
    ({"Authorization": "Basic abc"}, 401, "Bearer"),
    ({"Authorization": "Bearer " + "x" * 300}, 401, "unknown token"),
])
def test_every_api_route_needs_a_valid_token(app, headers, status, text):
    for method, path in [("GET", "/api/me"), ("POST", "/api/next"), ("POST", "/api/answer"),
                         ("POST", "/api/skip"), ("POST", "/api/undo"),
                         ("GET", "/api/image?id=x")]:
        r = app(method, path, None, headers=dict(headers), json={})
        assert r.status_code == status, (path, r.json)
        assert text in r.json["error"]
    assert n_rows(app.project) == 0


def test_disabled_annotator_is_refused(app):
    app.project.store.set_active("bob", False)
    r = app("POST", "/api/next", "bob")
    assert r.status_code == 403 and "disabled" in r.json["error"]


def test_token_is_stored_only_as_a_hash(app):
    stored = [r[0] for r in app.project.store.conn.execute("SELECT token_hash FROM annotators")]
    assert all(h.startswith("sha256:") for h in stored)
    assert not set(app.tokens.values()) & set(stored)


def test_answer_is_recorded_with_who_and_when_and_the_next_click_follows(app):
    me = app("GET", "/api/me").json
    assert me["annotator"] == "alice" and me["images"] == 6
    t = app("POST", "/api/next").json
    assert t["click"] == 1 and t["clicks_left"] == 3 and t["image"]["number"] == 1
    assert app("POST", "/api/next").json["proposal"] == t["proposal"]  # same click until answered
    before, after = task_masks(t)
    assert int(np.count_nonzero(before != after)) == t["pixels_changed"]
    r = answer(app, t, "better")
    assert r.status_code == 200
    row = app.project.store.conn.execute(
        "SELECT e.answer, e.created_at, a.name FROM events e JOIN annotators a ON "
        "a.id = e.annotator WHERE e.kind = 'answer'").fetchone()
    assert tuple(row)[0] == 1 and row["name"] == "alice" and row["created_at"].endswith("+00:00")
    nxt = r.json
    assert nxt["click"] == 2 and nxt["proposal"]["id"] != t["proposal"]["id"]
    assert nxt["history"][0]["answer"] == "better"
    # "better": the env kept the click, the mask is the proposal's "after".
    assert np.array_equal(task_masks(nxt)[0], after)
    img = app("GET", f"/api/image?id={t['image']['id']}")
    assert img.status_code == 200 and img.mimetype == "image/png"
    assert cv2.imdecode(np.frombuffer(img.data, np.uint8), cv2.IMREAD_COLOR) is not None


def test_a_worse_answer_reverts_the_click(app):
    t = app("POST", "/api/next").json
    nxt = answer(app, t, "worse").json
    assert np.array_equal(task_masks(nxt)[0], task_masks(t)[0])


def test_two_annotators_never_hold_the_same_image_and_see_only_their_queue(app):
    a = app("POST", "/api/next", "alice").json
    b = app("POST", "/api/next", "bob").json
    assert a["image"]["id"] != b["image"]["id"]
    before = n_rows(app.project)
    r = answer(app, a, who="bob")
    assert r.status_code == 403 and "not in your queue" in r.json["error"]
    r = app("GET", f"/api/image?id={a['image']['id']}", "bob")
    assert r.status_code == 403
    r = app("POST", "/api/skip", "bob", json={"image": a["image"]["id"]})
    assert r.status_code == 403
    assert n_rows(app.project) == before


def test_an_expired_lease_passes_the_image_on_with_its_episode(app):
    a = app("POST", "/api/next", "alice").json
    a = answer(app, a).json  # click 2 of alice's image
    app.project.store.conn.execute("UPDATE images SET lease_until = 0")
    c = app("POST", "/api/next", "carol").json
    assert c["image"]["id"] == a["image"]["id"] and c["proposal"] == a["proposal"]
    assert c["click"] == 2
    r = answer(app, a, who="alice")
    assert r.status_code == 403
    assert answer(app, c, who="carol").status_code == 200


@pytest.mark.parametrize("path, body, status, text", [
    ("/api/answer", "{not json", 400, "not valid JSON"),
    ("/api/answer", [], 400, "JSON object"),
    ("/api/answer", {"proposal": 999, "answer": "better"}, 404, "no proposal 999"),
    ("/api/answer", {"proposal": "2", "answer": "better"}, 400, "positive integer"),
    ("/api/answer", {"proposal": True, "answer": "better"}, 400, "positive integer"),
    ("/api/answer", {"proposal": "OPEN", "answer": "maybe"}, 400, "better"),
    ("/api/answer", {"proposal": "OPEN", "answer": "better", "x": 1}, 400, "JSON object"),
    ("/api/answer", {"proposal": "START", "answer": "better"}, 404, "no proposal"),
    ("/api/skip", {"image": "../../etc/passwd"}, 400, "looks like a file path"),
    ("/api/skip", {"image": "/etc/passwd"}, 400, "looks like a file path"),
    ("/api/skip", {"image": "C:\\x"}, 400, "looks like a file path"),
    ("/api/skip", {"image": "no-such-image"}, 404, "no image"),
    ("/api/skip", {"image": 3}, 400, "string"),
    ("/api/skip", {}, 400, "JSON object"),
    ("/api/undo", {"answer": 1}, 400, "empty JSON object"),
])
def test_bad_input_is_refused_and_writes_nothing(app, path, body, status, text):
    t = app("POST", "/api/next").json
    if isinstance(body, dict):
        body = {k: (t["proposal"]["id"] if v == "OPEN" else t["proposal"]["id"] - 1
                    if v == "START" else v) for k, v in body.items()}
    before = (n_rows(app.project), n_rows(app.project, "images"), app.project.engine.digest)
    if isinstance(body, str):
        r = app("POST", path, data=body, content_type="application/json")
    else:
        r = app("POST", path, json=body)
    assert r.status_code == status, r.json
    assert text in r.json["error"]
    assert (n_rows(app.project), n_rows(app.project, "images"),
            app.project.engine.digest) == before


def test_wrong_content_type_and_oversized_bodies_are_refused(app):
    t = app("POST", "/api/next").json
    r = app("POST", "/api/answer", data="proposal=1", content_type="text/plain")
    assert r.status_code == 415
    r = app("POST", "/api/answer", data="x" * 20000, content_type="application/json")
    assert r.status_code == 413
    r = app("GET", "/api/image?id=x&path=/etc/passwd")
    assert r.status_code == 400
    assert app("GET", "/api/image?id=" + t["image"]["id"] + "x").status_code == 404
    assert n_rows(app.project) == 2  # the start and the proposal


def test_a_replayed_answer_is_refused(app):
    t = app("POST", "/api/next").json
    assert answer(app, t).status_code == 200
    before = n_rows(app.project)
    r = answer(app, t)
    assert r.status_code == 409 and "already answered" in r.json["error"]
    assert n_rows(app.project) == before


def test_skip_closes_the_image_and_leases_the_next(app):
    t = app("POST", "/api/next").json
    r = app("POST", "/api/skip", json={"image": t["image"]["id"]}).json
    assert r["image"]["id"] != t["image"]["id"] and r["progress"]["skipped"] == 1
    assert app("POST", "/api/undo").status_code == 409  # a skip is not undone


def test_undo_restores_mask_agent_and_proposal_as_if_never_answered(app, tmp_path):
    project = app.project
    t = app("POST", "/api/next").json
    digest_before = project.engine.digest
    nxt = answer(app, t, "better").json
    assert nxt["can_undo"]
    back = app("POST", "/api/undo").json
    assert back["proposal"] == t["proposal"] and back["click"] == 1
    assert np.array_equal(task_masks(back)[0], task_masks(t)[0])
    assert project.engine.digest == digest_before  # the engine replayed without the answer
    rows = project.store.conn.execute(
        "SELECT kind, undone_at FROM events WHERE undone_at IS NOT NULL").fetchall()
    assert sorted(r["kind"] for r in rows) == ["answer", "propose"]  # kept, marked undone
    # answering again is allowed; undo with nothing left is refused
    assert answer(app, back, "worse").status_code == 200
    assert app("POST", "/api/undo").status_code == 200
    r = app("POST", "/api/undo")
    assert r.status_code == 409 and "nothing to undo" in r.json["error"]


def test_undo_after_finishing_an_image_reopens_it(app):
    t = app("POST", "/api/next").json
    for _ in range(3):
        t = answer(app, t).json
    assert t["image"]["number"] == 2 and t["progress"]["done"] == 1
    back = app("POST", "/api/undo").json
    assert back["image"]["number"] == 1 and back["click"] == 3
    assert app.project.store.image(1)["status"] == "open"  # the next image was given back


def test_restart_resumes_at_the_same_click_with_every_answer(tmp_path, app):
    project = app.project
    t = app("POST", "/api/next").json
    for i in range(7):
        t = answer(app, t, "better" if i % 3 else "worse").json
    b = app("POST", "/api/next", "bob").json
    project.flush_checkpoints()
    t = answer(app, t).json  # after the checkpoint: replayed from the log
    digest, seq = project.engine.digest, project.engine.seq
    project.close()
    again = Project(tmp_path / "p.db", checkpoint_every=4)
    try:
        assert (again.engine.seq, again.engine.digest) == (seq, digest)
        client = create_app(again).test_client()
        for who, task in (("alice", t), ("bob", b)):
            r = client.post("/api/next", headers={"Authorization": f"Bearer {app.tokens[who]}"})
            assert r.json["proposal"] == task["proposal"] and r.json["mask"] == task["mask"]
        # the same replay without any checkpoint
        for f in (tmp_path / "p.db-checkpoints").glob("*.pt"):
            f.unlink()
        third = Project(tmp_path / "p.db", checkpoint_every=0)
        assert third.engine.digest == digest
        third.close()
    finally:
        again.close()


def test_a_project_keeps_its_configuration(tmp_path, project):
    with pytest.raises(ValueError, match="another configuration.*clicks_per_image"):
        Project(tmp_path / "p.db", project_config(clicks_per_image=4))
    with pytest.raises(ValueError, match="holds no project"):
        Project(tmp_path / "new.db")


def test_ground_truth_reading_agents_are_refused(tmp_path):
    with pytest.raises(ValueError, match="reads the ground truth"):
        Project(tmp_path / "g.db", project_config(agent="gt"))


def _image_folder(root, n=4):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    for i in range(n):
        img = rng.integers(0, 255, (96, 120, 3), np.uint8)
        cv2.circle(img, (60, 48), 20, (250, 40, 40), -1)
        cv2.imwrite(str(root / "images" / f"case{i}.png"), img)
    return root


def test_images_without_ground_truth_are_labelled_and_exported(tmp_path):
    import gymnasium as gym

    from bow_gym.annotate.export import export_folder
    from bow_gym.datasets import make_dataset

    root = _image_folder(tmp_path / "new")
    with pytest.raises(ValueError, match="no ground truth.*person"):
        gym.make("BetterWorseSeg-v0", dataset="images", root=str(root))
    env = gym.make("BetterWorseSeg-v0", dataset="images", root=str(root), oracle="person",
                   feature_cache=None).unwrapped
    _, info = env.reset(seed=0)
    assert all(math.isnan(v) for v in info["eval_only"].values())
    env.oracle.give(1)
    _, r, *_ , info = env.step(env.encode_action(1, 60, 60))
    assert r == 1.0 and math.isnan(info["eval_only"]["dice"])
    with pytest.raises(ValueError, match="no ground truth"):
        env.ground_truth_for_evaluation()
    with pytest.raises(RuntimeError, match="no answer"):
        env.step(0)

    p = Project(tmp_path / "p.db", project_config(dataset="images", root=str(root), limit=None,
                                                  name="new"))
    try:
        token = p.store.add_annotator("ann")
        c = create_app(p).test_client()
        h = {"Authorization": f"Bearer {token}"}
        t = c.post("/api/next", headers=h).json
        for _ in range(3):
            t = c.post("/api/answer", headers=h, json={"proposal": t["proposal"]["id"],
                                                        "answer": "better"}).json
        ids = export_folder(p, tmp_path / "out")
    finally:
        p.close()
    ds = make_dataset("folder", tmp_path / "out")
    assert ds.ids == ids and len(ids) == 1
    s = ds[0]
    assert s.mask.shape == s.image.shape[:2] == (96, 120) and s.mask.any()


@pytest.mark.slow
def test_simulated_annotator_over_http_gives_the_in_process_masks(tmp_path):
    """One simulated annotator over HTTP (Dice oracle) = label_round with the same config."""
    import torch

    from bow_gym.annotate.client import Client, ground_truth_lookup, simulate
    from bow_gym.annotate.engine import event_seed
    from bow_gym.annotate.export import export_round
    from bow_gym.envs.better_worse_seg import BetterWorseSegEnv
    from bow_gym.rounds import Labels, _seed, build_datasets, label_round, make_agent
    from tests._annotate_support import ThreadServer

    cfg = project_config()
    p = Project(tmp_path / "p.db", cfg)
    try:
        token = p.store.add_annotator("sim")
        with ThreadServer(p) as server:
            log = simulate(Client(server.url, token), ground_truth_lookup(p.store.config()))
        assert len(log.answers) == 6 * 3
        export_round(p, tmp_path / "run")
    finally:
        p.close()
    got = Labels.load(tmp_path / "run" / "round_01" / "labels.npz")

    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ds = build_datasets(cfg)[0]
        env = BetterWorseSegEnv(ds, clicks_per_episode=3, feature_cache=None,
                                image_order="sequential")
        agent = make_agent(cfg, env, "cpu")
        order = np.random.default_rng(_seed(cfg, 1, 1)).permutation(len(ds))
        seed = _seed(cfg, 1, 2)
        # The engine seeds torch's generator around each event; the agent's lazily built layers
        # take their weights from it at its first forward pass, the first proposal (event 2).
        torch.manual_seed(event_seed(seed, 2))
        want = label_round([env], agent, order, seed=seed, progress=False)
    finally:
        torch.set_num_threads(n_threads)
    assert got.ids == want.ids
    assert np.array_equal(got.rewards, want.rewards)
    assert np.array_equal(got.labels, want.labels)
    assert np.array_equal(got.pseudo, want.pseudo)


@pytest.mark.slow
def test_rounds_continue_from_the_exported_round(tmp_path, app):
    from bow_gym.annotate.export import export_round
    from bow_gym.rounds import Labels, load_config, run_rounds

    t = app("POST", "/api/next").json
    for i in range(6):  # two images
        t = answer(app, t, "better" if i % 2 else "worse").json
    toml = export_round(app.project, tmp_path / "run")
    labels_path = tmp_path / "run" / "round_01" / "labels.npz"
    exported = Labels.load(labels_path)
    assert len(exported.ids) == 2 and exported.rewards[0].tolist() == [-1, 1, -1]
    with pytest.raises(FileExistsError):
        export_round(app.project, tmp_path / "run")
    rows = run_rounds(load_config(toml, rounds=1), tmp_path / "run")
    assert {r["target"] for r in rows} >= {"pseudo", "prediction"}
    assert Labels.load(labels_path).ids == exported.ids  # taken as it was, not relabelled
    assert (tmp_path / "run" / "round_01" / "predictions.npz").is_file()
