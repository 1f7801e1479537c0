"""Export an annotation project: masks in the ``folder`` layout, and round 1 of ``bow-gym rounds``.

* :func:`export_folder`: ``OUT/images/<id>.png`` and ``OUT/masks/<id>.png`` (0/255, at the
  image's own size: the working-resolution mask resized with nearest neighbour), readable with
  ``make_dataset("folder", OUT)``, and ``OUT/annotations.csv`` (who answered, when, how).
* :func:`export_round`: a run folder whose round 1 is the person's labelling, so that
  ``bow-gym rounds --config RUN/rounds.toml --out RUN`` skips its simulated labelling stage of
  round 1 and goes on with the filter, the segmenter and the next rounds: ``RUN/rounds.toml``
  and ``RUN/config.json`` (the project's configuration), ``RUN/round_01/labels.npz`` (written
  through :class:`bow_gym.rounds.Labels`), ``clicks.csv`` and the agent's state
  (``agent.safetensors``) for round 2.

Only finished images are exported; skipped images and those still under way are left out.
"""

from __future__ import annotations

import copy
import json
import re
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bow_gym.annotate.project import Project, unpack_mask
from bow_gym.io_utils import atomic_write_bytes, write_csv, write_json

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _finished(project: Project) -> list[dict[str, Any]]:
    """The finished images in labelling order, with their mask and answered clicks."""
    store = project.store
    rows = store.conn.execute("SELECT pos, image_id, idx, mask FROM images WHERE status = 'done' "
                              "ORDER BY pos").fetchall()
    clicks: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in store.conn.execute(
            "SELECT a.pos, a.click, a.answer, a.created_at, n.name, p.label, p.confidence "
            "FROM events a JOIN events p ON p.seq = a.proposal JOIN annotators n ON "
            "n.id = a.annotator WHERE a.kind = 'answer' AND a.undone_at IS NULL ORDER BY a.seq"):
        clicks[int(r["pos"])].append(dict(r))
    return [{"pos": int(r["pos"]), "id": r["image_id"], "idx": int(r["idx"]),
             "mask": unpack_mask(r["mask"], project.size), "clicks": clicks[int(r["pos"])]}
            for r in rows]


def export_folder(project: Project, out: str | Path) -> list[str]:
    """Write the finished images and their masks in the ``folder`` layout; returns the ids.

    Raises:
        ValueError: An image id that is not a safe file name (letters, digits, ``._-``).
    """
    import cv2

    from bow_gym.metrics import resize_mask

    out = Path(out)
    done = _finished(project)
    bad = [d["id"] for d in done if not _SAFE.fullmatch(d["id"])]
    if bad:
        raise ValueError(f"image ids {bad[:5]} are not safe file names; export them as a round "
                         "(export --round) instead")
    rows = []
    for d in done:
        image = project._dataset[d["idx"]].image
        h, w = image.shape[:2]
        mask = resize_mask(d["mask"], (h, w))
        for folder, array in (("images", cv2.cvtColor(image, cv2.COLOR_RGB2BGR)),
                              ("masks", mask.astype(np.uint8) * 255)):
            ok, buf = cv2.imencode(".png", array)
            atomic_write_bytes(out / folder / f"{d['id']}.png", buf.tobytes())
        rows.append({"image_id": d["id"], "clicks": len(d["clicks"]),
                     "better": sum(c["answer"] > 0 for c in d["clicks"]),
                     "annotators": " ".join(sorted({c["name"] for c in d["clicks"]})),
                     "last_answer_at": d["clicks"][-1]["created_at"] if d["clicks"] else ""})
    write_csv(out / "annotations.csv", rows)
    return [d["id"] for d in done]


def toml_text(values: dict[str, Any]) -> str:
    """A flat TOML document of config values (``None`` values are left out: TOML has none)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)  # a JSON string is a TOML basic string
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(str(k))} = {value(x)}" for k, x in v.items()
                                   if x is not None) + "}"
        raise TypeError(f"cannot write {type(v).__name__} as TOML")

    return "".join(f"{k} = {value(v)}\n" for k, v in values.items() if v is not None)


def export_round(project: Project, run: str | Path, *, force: bool = False) -> Path:
    """Write round 1 of a ``bow-gym rounds`` run from the person's answers (module docstring).

    Args:
        project: The project.
        run: The run folder.
        force: Replace an earlier export's round 1 (only while the run has no later stage).

    Returns:
        The path of ``rounds.toml`` to pass to ``bow-gym rounds --config``.

    Raises:
        ValueError: No finished image yet.
        FileExistsError: ``run`` already holds a round 1 (without ``force``) or later stages.
    """
    from bow_gym.rounds import Labels, load_config, save_agent

    run = Path(run)
    rd = run / "round_01"
    done = _finished(project)
    if not done:
        raise ValueError("no finished image to export yet")
    later = [p.name for p in rd.glob("*") if p.name not in ("labels.npz", "clicks.csv",
                                                            "agent.safetensors",
                                                            "agent_optimizer.pt")]
    if later or (rd / "labels.npz").is_file() and not force:
        raise FileExistsError(f"{rd} already holds a round 1" + (
            f" and later stages ({', '.join(sorted(later))})" if later else "") +
            "; export into another folder" + ("" if later else " or pass --force"))
    cfg = asdict(project.config)
    if not project._dataset.has_ground_truth:
        # Later rounds' clicks also need a person: the env says so if they are attempted.
        cfg["env_kwargs"] = {**cfg["env_kwargs"], "oracle": "person"}
    toml = run / "rounds.toml"
    atomic_write_bytes(toml, toml_text(cfg).encode())
    config = load_config(toml)  # what `bow-gym rounds --config` will read, stored as the run's
    write_json(run / "config.json", asdict(config))

    k = project.config.clicks_per_image
    n, s = len(done), project.size
    rewards = np.zeros((n, k), np.int8)
    labels = np.zeros((n, k), np.int8)
    conf = np.full((n, k), np.nan, np.float32)
    rows = []
    for i, d in enumerate(done):
        for c in d["clicks"]:
            j = int(c["click"]) - 1
            rewards[i, j], labels[i, j] = c["answer"], c["label"]
            if c["confidence"] is not None:
                conf[i, j] = c["confidence"]
            rows.append({"step": i * k + j + 1, "round": 1, "image_id": d["id"],
                         "click": j + 1, "label": int(c["label"]), "reward": int(c["answer"]),
                         "annotator": c["name"], "answered_at": c["created_at"]})
    write_csv(rd / "clicks.csv", rows)
    with project.lock:
        agent = copy.deepcopy(project.engine.agent)
    agent.flush()  # as label_round ends a round
    save_agent(agent, rd)
    Labels([d["id"] for d in done], np.stack([d["mask"] for d in done]),
           np.zeros((n, s, s), bool), rewards, labels, conf).save(rd / "labels.npz")
    return toml
