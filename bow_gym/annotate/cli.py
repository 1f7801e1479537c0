"""``bow-gym annotate``: serve, accounts, export, a simulated annotator, status."""

from __future__ import annotations

import argparse
import sys
from typing import Any

#: The annotation project's defaults where they differ from ``bow-gym rounds``: the person labels
#: every image given (transductive), and the agent is the answer model (the best online learner
#: recorded in docs/results.md, about 20 ms per answer on a CPU).
DEFAULTS = {"agent": "answer_model", "protocol": "transductive"}

_CONFIG_FLAGS = ("config", "dataset", "root", "agent", "clicks_per_image", "limit", "protocol",
                 "backbone", "checkpoint", "seed", "set")


def _config(args: argparse.Namespace) -> Any:
    """The configuration the options name, or ``None`` when none is given and the database
    already holds a project (it is then used as stored)."""
    from bow_gym.annotate.store import Store
    from bow_gym.rounds import load_config, parse_set

    given = any(getattr(args, k) is not None for k in _CONFIG_FLAGS)
    if not given:
        store = Store(args.db)
        try:
            if store.config() is not None:
                return None
        finally:
            store.close()
    overrides: dict[str, Any] = dict(DEFAULTS)
    for key in ("dataset", "root", "agent", "clicks_per_image", "limit", "protocol",
                "backbone", "seed"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.checkpoint:
        overrides["backbone_kwargs"] = {"checkpoint": args.checkpoint}
    if args.dataset:
        overrides["dataset_kwargs"] = {}
        overrides.setdefault("root", None)
    for item in args.set or []:
        key, value = parse_set(item)
        overrides[key] = value
    overrides["progress"] = False
    if args.dataset and not any(k == "name" for k, _ in map(parse_set, args.set or [])):
        overrides["name"] = args.dataset
    return load_config(args.config, **overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    """Start the annotation app (creating the project on first use)."""
    import torch

    from bow_gym.annotate.app import serve
    from bow_gym.annotate.project import Project

    # One thread: requests are served one at a time anyway, and the agent's floating-point
    # results then do not depend on the machine's core count when the log is replayed.
    torch.set_num_threads(1)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"bow-gym annotate: warning: serving on {args.host}: tokens and images travel "
              "unencrypted to anyone who can reach it", file=sys.stderr)
    project = Project(args.db, _config(args), device=args.device,
                      lease_seconds=args.lease_minutes * 60,
                      checkpoint_every=args.checkpoint_every)
    n_users = len(project.store.annotators())
    if not n_users:
        print(f"bow-gym annotate: no annotator yet: bow-gym annotate user add NAME --db {args.db}")
    serve(project, args.host, args.port, port_file=args.port_file, quiet=args.quiet)
    return 0


def cmd_user(args: argparse.Namespace) -> int:
    """Manage annotator accounts."""
    from bow_gym.annotate.store import Store

    store = Store(args.db)
    try:
        if args.action == "add":
            token = store.add_annotator(args.name)
            print(f"annotator {args.name!r} added. Token (shown once, keep it secret):\n{token}")
            print(f"open: http://127.0.0.1:{args.port}/#token={token}")
        elif args.action in ("disable", "enable"):
            store.set_active(args.name, args.action == "enable")
            print(f"annotator {args.name!r} {args.action}d")
        else:
            for a in store.annotators():
                print(f"{a['name']:<24} {'active' if a['active'] else 'disabled':<9} "
                      f"created {a['created_at']}")
    finally:
        store.close()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export finished masks (folder layout) and/or round 1 of a rounds run."""
    from bow_gym.annotate.export import export_folder, export_round
    from bow_gym.annotate.project import Project

    if not (args.folder or args.round):
        raise ValueError("give --folder OUT and/or --round RUN")
    project = Project(args.db, checkpoint_every=0)
    try:
        if args.folder:
            ids = export_folder(project, args.folder)
            print(f"{len(ids)} images and masks in {args.folder} (images/, masks/, "
                  "annotations.csv)")
        if args.round:
            try:
                toml = export_round(project, args.round, force=args.force)
            except FileExistsError as e:
                raise ValueError(str(e)) from None
            print(f"round 1 in {args.round}; continue with: bow-gym rounds --config {toml} "
                  f"--out {args.round}")
    finally:
        project.close()
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """A simulated annotator (Dice oracle on the ground truth) answering over HTTP."""
    import numpy as np

    from bow_gym.annotate.client import Client, ground_truth_lookup, read_config, simulate

    gt = ground_truth_lookup(read_config(args.db))
    log = simulate(Client(args.url, args.token), gt, max_answers=args.answers,
                   think_s=args.think)
    lat = np.array(log.latency_s) * 1e3
    print(f"{len(log.answers)} answers ({np.mean(np.array(log.answers) > 0):.2f} better)"
          + (f"; latency p50 {np.percentile(lat, 50):.1f} ms, p95 {np.percentile(lat, 95):.1f} ms"
             if len(lat) else ""))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Progress of a project: images per status, answers per annotator."""
    from bow_gym.annotate.client import read_config
    from bow_gym.annotate.store import Store

    cfg = read_config(args.db)
    store = Store(args.db)
    try:
        counts = store.counts()
        print(f"{cfg['name']}: {cfg['dataset']}, agent {cfg['agent']}, "
              f"{cfg['clicks_per_image']} clicks per image")
        print("images: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        for name, n, last in store.conn.execute(
                "SELECT a.name, COUNT(e.seq), MAX(e.created_at) FROM annotators a LEFT JOIN "
                "events e ON e.annotator = a.id AND e.kind = 'answer' AND e.undone_at IS NULL "
                "GROUP BY a.id ORDER BY a.id"):
            print(f"  {name:<24} {n:>6} answers, last {last or '-'}")
    finally:
        store.close()
    return 0


def add_parser(sub: Any) -> None:
    """Add ``annotate`` and its subcommands to the ``bow-gym`` parser."""
    from bow_gym.agent_registry import list_agents

    p = sub.add_parser("annotate", help="a person answers better/worse in the browser "
                       "(serve, user, export, simulate, status)")
    asub = p.add_subparsers(dest="annotate_command", required=True)

    s = asub.add_parser("serve", help=cmd_serve.__doc__)
    s.add_argument("--db", required=True, help="project database (SQLite; created if missing)")
    g = s.add_argument_group("project (first start; later starts must match or omit them)")
    g.add_argument("--config", help="rounds config name or TOML file (default synthetic)")
    g.add_argument("--dataset", help="data set name (images: a folder of images without masks)")
    g.add_argument("--root", help="data set folder")
    g.add_argument("--agent", choices=list_agents(buildable=True),
                   help="clicking agent (default answer_model; it learns online)")
    g.add_argument("--clicks-per-image", type=int, help="clicks per image (default 5)")
    g.add_argument("--limit", type=int, help="only the first N images")
    g.add_argument("--protocol", choices=["heldout", "transductive"],
                   help="transductive (default): every image; heldout: the rounds' train part")
    g.add_argument("--backbone", help="backbone name (default lab_texture)")
    g.add_argument("--checkpoint", help="local DINOv2 weights file")
    g.add_argument("--seed", type=int, help="seed (order of images, agent)")
    g.add_argument("--set", action="append", metavar="KEY=VALUE", help="any rounds config field")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: a free one)")
    s.add_argument("--port-file", help="write the port there once listening")
    s.add_argument("--lease-minutes", type=float, default=30.0,
                   help="an idle annotator's image goes to another after this (default 30)")
    s.add_argument("--checkpoint-every", type=int, default=64,
                   help="checkpoint the agent every N events (default 64)")
    s.add_argument("--device", default="cpu", help="torch device of the agent (default cpu)")
    s.add_argument("--quiet", action="store_true", help="no request log")
    s.set_defaults(func=cmd_serve)

    u = asub.add_parser("user", help=cmd_user.__doc__)
    u.add_argument("action", choices=["add", "list", "disable", "enable"])
    u.add_argument("name", nargs="?", help="annotator name (add, disable, enable)")
    u.add_argument("--db", required=True, help="project database")
    u.add_argument("--port", type=int, default=8765, help="port shown in the link (add)")
    u.set_defaults(func=cmd_user)

    e = asub.add_parser("export", help=cmd_export.__doc__)
    e.add_argument("--db", required=True, help="project database")
    e.add_argument("--folder", help="write images/ and masks/ (folder layout) here")
    e.add_argument("--round", help="write a rounds run folder whose round 1 is the person's")
    e.add_argument("--force", action="store_true", help="replace an earlier export's round 1")
    e.set_defaults(func=cmd_export)

    m = asub.add_parser("simulate", help=cmd_simulate.__doc__)
    m.add_argument("--db", required=True, help="project database (read-only: its config)")
    m.add_argument("--url", default="http://127.0.0.1:8765", help="the app's address")
    m.add_argument("--token", required=True, help="the simulated annotator's token")
    m.add_argument("--answers", type=int, help="stop after N answers (default: until done)")
    m.add_argument("--think", type=float, default=0.0, help="seconds before each answer")
    m.set_defaults(func=cmd_simulate)

    t = asub.add_parser("status", help=cmd_status.__doc__)
    t.add_argument("--db", required=True, help="project database")
    t.set_defaults(func=cmd_status)


def check_args(args: argparse.Namespace) -> None:
    """Argument combinations argparse cannot check."""
    if getattr(args, "annotate_command", None) == "user" and args.action != "list" \
            and not args.name:
        raise ValueError(f"annotate user {args.action} needs a NAME")
