"""Answer-to-next-proposal latency of ``bow-gym annotate`` under load, and answers kept across kills.

A real server process (``bow-gym annotate serve`` on 127.0.0.1) with the default agent (the
answer model, learning online from every answer) on synthetic images; ``--annotators``
simulated annotators (threads of this process, each its own account and keep-alive connection)
answer ``--answers`` proposals each at once over loopback, judging with the Dice oracle
(:func:`bow_gym.annotate.client.simulate`). Latency is the wall time of one ``POST /api/answer``
as the client sees it: the answer committed, the agent's update, the next proposal computed and
committed, the response received. Two modes, run one after the other:

* ``latency``: each annotator waits ``--think`` seconds before each answer (a person reads the
  proposal first; ``--think 0`` is the saturated worst case, every annotator always waiting);
* ``kills`` (``--kills N > 0``): the same load while the server is killed with SIGKILL N times
  at random moments and started again with the same command; latencies of answers that met a
  kill are not counted. Checked after it: every answer an annotator saw committed is in the
  database exactly once, in that annotator's order, and nothing else is.

Run: ``python -m benchmarks.annotate_latency`` (``--help`` for options). Writes
``benchmarks/results/annotate_latency/<run>/``: ``run.json``, ``annotate_latency.json``
(summary), ``latency.csv`` (every answer), ``annotate_latency.png`` (latency distribution).
Last line: ``answer_latency_p95_ms: <p95 of the latency mode>``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks import lib

SCRIPT = "annotate_latency"
ROOT = Path(__file__).resolve().parent.parent


class Server:
    """``bow-gym annotate serve`` as a child process on 127.0.0.1, always stopped."""

    def __init__(self, db: Path, args: argparse.Namespace):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.port_file = db.parent / "port"
        self.cmd = [sys.executable, "-m", "bow_gym.cli", "annotate", "serve", "--db", str(db),
                    "--port", str(self.port), "--port-file", str(self.port_file), "--quiet",
                    "--agent", args.agent, "--clicks-per-image", str(args.clicks),
                    "--set", f"dataset_kwargs={{n_images={args.images}}}",
                    "--set", "feature_cache='none'", "--checkpoint-every",
                    str(args.checkpoint_every)]
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.log = db.parent / "server.log"
        self.proc: subprocess.Popen | None = None
        self.restart_s: list[float] = []

    def start(self, timeout: float = 300.0) -> None:
        t = time.monotonic()
        self.port_file.unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env)
        while not self.port_file.is_file():
            if self.proc.poll() is not None or time.monotonic() - t > timeout:
                self.stop()
                raise RuntimeError(f"server did not start: {self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        self.restart_s.append(time.monotonic() - t)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()


def run_mode(mode: str, args: argparse.Namespace, workdir: Path) -> dict:
    from bow_gym.annotate.client import Client, SimulationLog, ground_truth_lookup, simulate
    from bow_gym.annotate.store import Store

    db = workdir / mode / "p.db"
    db.parent.mkdir(parents=True)
    store = Store(db)
    tokens = [store.add_annotator(f"sim{i}") for i in range(args.annotators)]
    store.close()
    server = Server(db, args)
    server.start()
    logs = [SimulationLog() for _ in tokens]
    errors: list[BaseException] = []
    try:
        gt = ground_truth_lookup(json.loads(Store(db).get_meta("config")))

        def work(i: int) -> None:
            try:
                simulate(Client(f"http://127.0.0.1:{server.port}", tokens[i], timeout=120), gt,
                         max_answers=args.answers, think_s=args.think, reconnect_s=600,
                         log=logs[i])
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,), daemon=True)
                   for i in range(len(tokens))]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        kills = args.kills if mode == "kills" else 0
        rng = np.random.default_rng(args.seed)
        expected = args.answers * (args.think + 0.05) * 1.5 + 10
        for k in range(kills):
            time.sleep(float(rng.uniform(0.2, expected / max(kills, 1))))
            if not any(t.is_alive() for t in threads):
                break
            server.kill()
            server.start()
            print(f"  kill {k + 1}/{kills}: restarted in {server.restart_s[-1]:.1f} s",
                  flush=True)
        for t in threads:
            t.join(timeout=3600)
        wall = time.monotonic() - t0
    finally:
        server.stop()
    if errors:
        raise errors[0]
    store = Store(db)
    rows = store.conn.execute(
        "SELECT a.name, e.proposal, e.answer FROM events e JOIN annotators a ON a.id = "
        "e.annotator WHERE e.kind = 'answer' AND e.undone_at IS NULL ORDER BY e.seq").fetchall()
    store.close()
    stored: dict[str, list[tuple[int, int]]] = {}
    for r in rows:
        stored.setdefault(r["name"], []).append((r["proposal"], r["answer"]))
    lost = dup = 0
    for i, log in enumerate(logs):
        seen = list(zip(log.proposals, log.answers, strict=True))
        mine = stored.get(f"sim{i}", [])
        lost += len(set(seen) - set(mine))
        dup += len(mine) - len(set(mine)) + len(set(mine) - set(seen))
        if mine != seen:
            print(f"  sim{i}: {len(seen)} answers seen committed, {len(mine)} stored, differ")
    lat = np.array([x for log in logs for x in log.latency_s]) * 1e3
    if mode == "kills":  # an answer that met a kill waited for the restart: not a latency
        lat = lat[lat < 1000 * min(server.restart_s or [1.0])]
    return {"mode": mode, "annotators": len(tokens), "answers": int(sum(len(g.answers) for g in logs)),
            "stored": len(rows), "lost": int(lost), "duplicated_or_unknown": int(dup),
            "kills": len(server.restart_s) - 1, "wall_s": round(wall, 1),
            "restart_s_median": (float(np.median(server.restart_s[1:]))
                                 if len(server.restart_s) > 1 else None),
            "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
            "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max()),
            "latencies": lat.tolist(),
            "per_annotator": [[round(x * 1e3, 2) for x in log.latency_s] for log in logs]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--annotators", type=int, default=8)
    p.add_argument("--answers", type=int, default=200, help="answers per annotator")
    p.add_argument("--think", type=float, default=0.5,
                   help="seconds each annotator waits before answering (default 0.5)")
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs in the kills mode (0: skip)")
    p.add_argument("--agent", default="answer_model", help="agent (default answer_model)")
    p.add_argument("--clicks", type=int, default=5, help="clicks per image")
    p.add_argument("--checkpoint-every", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    lib.add_output_arguments(p, SCRIPT)
    args = p.parse_args(argv)
    args.images = args.annotators * -(-args.answers // args.clicks) + args.annotators
    run = lib.start_run(SCRIPT, argv, args.out, args.run)
    modes = ["latency"] + (["kills"] if args.kills > 0 else [])
    results = []
    with tempfile.TemporaryDirectory(prefix="annotate-latency-") as tmp:
        for mode in modes:
            print(f"{mode}: {args.annotators} annotators x {args.answers} answers, think "
                  f"{args.think} s, agent {args.agent}", flush=True)
            results.append(run_mode(mode, args, Path(tmp)))
    rows = []
    for res in results:
        for i, lat in enumerate(res.pop("per_annotator")):
            rows += [{"mode": res["mode"], "annotator": f"sim{i}", "answer": k + 1,
                      "latency_ms": x} for k, x in enumerate(lat)]
    lib.write_csv(run.out / "latency.csv", rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for res in results:
        lat = np.sort(res["latencies"])
        ax.plot(lat, np.arange(1, len(lat) + 1) / len(lat),
                label=f"{res['mode']} (p95 {res['p95_ms']:.0f} ms)")
    ax.axvline(100, color="grey", ls="--", lw=1, label="target 100 ms")
    ax.set_xscale("log")
    ax.set_xlabel("answer-to-next-proposal latency (ms, log)")
    ax.set_ylabel("share of answers")
    ax.set_title(f"bow-gym annotate: {args.annotators} annotators x {args.answers} answers, "
                 f"agent {args.agent}", fontsize=9)
    ax.legend(fontsize=8)
    lib.save_figure(fig, run.out / "annotate_latency.png")
    for res in results:
        res.pop("latencies")
    lib.write_json(run.out / "annotate_latency.json", {
        "args": vars(args), "cpu_count": os.cpu_count(), "results": results})
    run.record(seeds=[args.seed], protocol="loopback HTTP, synthetic images, Dice-oracle "
               "simulated annotators", datasets=["synthetic"])
    print(f"{'mode':<8} {'answers':>7} {'stored':>6} {'lost':>4} {'dup':>3} {'kills':>5} "
          f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7}")
    for r in results:
        print(f"{r['mode']:<8} {r['answers']:>7} {r['stored']:>6} {r['lost']:>4} "
              f"{r['duplicated_or_unknown']:>3} {r['kills']:>5} {r['p50_ms']:>7.1f} "
              f"{r['p95_ms']:>7.1f} {r['p99_ms']:>7.1f}")
    print(f"wrote {run.out}")
    print(f"answer_latency_p95_ms: {results[0]['p95_ms']:.1f}")


if __name__ == "__main__":
    main()
