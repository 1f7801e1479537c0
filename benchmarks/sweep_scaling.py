"""What scheduling a sweep on Ray costs, and whether a sweep survives lost workers.

Scaling (the default mode): the same sweep of ``--units`` real units (6 by default), each one
``compare_policies`` unit (REINFORCE trained on ``--answers`` expert answers on the training part
of the seeded 80/20 split of the synthetic set, then evaluated greedily with random and
ground-truth clicking on the held-out part; seeds 0..N-1), run through :func:`bow_gym.sweep.run_sweep`
in four modes:

* ``sequential``: one unit after another in this process;
* ``pool``: the no-Ray fallback, ``--jobs`` spawned processes;
* ``ray_local``: a local Ray started for the sweep (``ray.init(num_cpus=jobs)``) and stopped
  after it: its start-up is part of the time;
* ``ray_cluster``: through a Ray cluster on 127.0.0.1 (:class:`bow_gym.ray_cluster.LoopbackCluster`:
  a head and a second node, ``--jobs // 2`` CPUs each, separate ``ray start`` processes),
  started before the timing; connecting to it is part of the time.

Every unit gets 1 torch thread in every mode, so all modes do the same arithmetic: the script
checks that their results are identical. The modes are alternated (``sequential, pool,
ray_local, ray_cluster``, then again) ``--repeats`` times and medians are reported, because a
shared machine's load drifts. Last line: ``ray_overhead_vs_pool: <ratio>``, the median wall time
on the local Ray over the median with the pool (goal <= 1.1).

Fault injection (``--faults N``): a sweep of ``--fault-units`` short probe units
(:func:`probe_unit`: they sleep ``--fault-seconds`` and return a number computed from their key)
through the loopback cluster while the second node's raylet is killed (SIGKILL) ``N`` times,
each time as soon as one of its workers is running a unit, and a new node is started after each
kill. Checked: every unit has exactly one result file and one result, equal to the unit's value
computed here; units whose worker was killed were run again (their attempts are counted). Last
line: ``units_lost: <n> units_duplicated: <n> kills: <k>``.

Writes ``sweep_scaling.csv``/``.json`` (or ``faults.json``), ``sweep_scaling.png`` and
``run.json`` to ``benchmarks/results/sweep_scaling/<run>/``; each mode's sweep lives in
``<run>/sweeps/<mode>-r<k>/`` (results and per-unit logs).

Run: ``python -m benchmarks.sweep_scaling`` (needs ``pip install "bow-gym[ray]"``); a quick look:
``python -m benchmarks.sweep_scaling --answers 50 --repeats 1``; fault injection:
``python -m benchmarks.sweep_scaling --faults 10``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import lib

MODES = ("sequential", "pool", "ray_local", "ray_cluster")


def probe_unit(key: str, seconds: float, ledger: str) -> dict[str, Any]:
    """A fault-injection unit: appends this attempt's process id to ``<ledger>/<key>.txt``,
    sleeps ``seconds`` (so that it can be killed mid-way without loading a shared machine) and
    returns ``{"value": ...}``, a number that depends on ``key`` only."""
    path = Path(ledger) / f"{key.replace('/', '_')}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:  # one short append per attempt
        f.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return {"value": probe_value(key)}


def probe_value(key: str) -> float:
    """The value :func:`probe_unit` returns for ``key``."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    return float(np.linalg.slogdet(rng.standard_normal((64, 64)))[1])


def _units(args: argparse.Namespace) -> tuple[list, list[str], dict]:
    from benchmarks.compare_policies import Unit

    source = lib.DataSource("synthetic", None, {"n_images": args.images})
    cfg = lib.data_configs([source], transductive=False)["synthetic"]
    units = [Unit("synthetic", cfg, 0, seed) for seed in range(args.units)]
    fingerprint = {"agents": "reinforce", "answers": args.answers, "images": args.images}
    return units, ["reinforce"], fingerprint


def _strip(results: list[dict[str, Any]]) -> str:
    # Wall times differ from run to run; everything else must not.
    return json.dumps([[{k: v for k, v in row.items() if k != "train_s"} for row in r["rows"]]
                       for r in results])


def run_mode(mode: str, args: argparse.Namespace, folder: Path, cluster) -> tuple[float, str]:
    """One timed sweep: (wall seconds, its results without wall times)."""
    from benchmarks.compare_policies import sweep_units
    from bow_gym.sweep import SweepOptions, run_sweep

    units, learners, fingerprint = _units(args)
    if folder.exists():
        shutil.rmtree(folder)
    options = {
        "sequential": SweepOptions(backend="sequential", threads=1),
        "pool": SweepOptions(backend="pool", jobs=args.jobs, threads=1),
        "ray_local": SweepOptions(backend="ray", jobs=args.jobs, threads=1),
        "ray_cluster": SweepOptions(backend="ray", ray_address=cluster.address if cluster else None,
                                    threads=1),
    }[mode]
    options.resume = False
    options.progress = not args.no_progress
    t0 = time.perf_counter()
    results = run_sweep(sweep_units(units, learners, args.answers, folder, fingerprint), folder,
                        options)
    return time.perf_counter() - t0, _strip(results)


def scaling(args: argparse.Namespace, run: lib.results.BenchmarkRun) -> None:
    import torch

    from bow_gym.ray_cluster import LoopbackCluster

    out = run.out
    torch.set_num_threads(1)  # the sequential mode's unit threads (the others set their own)
    per_node = max(1, args.jobs // 2)
    times: dict[str, list[float]] = {m: [] for m in args.modes}
    outputs: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    cluster = None
    t = time.perf_counter()
    if "ray_cluster" in args.modes:
        cluster = LoopbackCluster(head_cpus=per_node)
        cluster.add_node(num_cpus=args.jobs - per_node)
        print(f"loopback cluster {cluster.address}: head {per_node} CPU(s) + node "
              f"{args.jobs - per_node} CPU(s), started in {time.perf_counter() - t:.1f} s")
    try:
        for k in range(args.repeats):
            for mode in args.modes:
                seconds, result = run_mode(mode, args, out / "sweeps" / f"{mode}-r{k}", cluster)
                times[mode].append(seconds)
                outputs.setdefault(mode, result)
                same = result == outputs[args.modes[0]]
                rows.append({"repeat": k, "mode": mode, "seconds": seconds, "same_results": same})
                print(f"repeat {k} {mode:<12} {seconds:7.1f} s  results identical to "
                      f"{args.modes[0]}: {same}")
                load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
                rows[-1]["load_1min"] = load
    finally:
        if cluster is not None:
            cluster.stop()
    identical = all(r["same_results"] for r in rows)
    med = {m: float(np.median(v)) for m, v in times.items()}
    summary = [{"mode": m, "median_s": med[m], "min_s": float(min(times[m])),
                "max_s": float(max(times[m])), "repeats": len(times[m]),
                "speedup_vs_sequential": med.get("sequential", np.nan) / med[m],
                "ratio_vs_pool": med[m] / med["pool"] if "pool" in med else np.nan}
               for m in args.modes]
    print(f"\n{args.units} units x {args.answers} answers, {args.jobs} at a time (1 torch thread "
          f"each), medians of {args.repeats} alternated repeats")
    print(f"{'mode':<12} {'median s':>9} {'min':>7} {'max':>7} {'vs seq':>7} {'vs pool':>8}")
    for s in summary:
        print(f"{s['mode']:<12} {s['median_s']:9.1f} {s['min_s']:7.1f} {s['max_s']:7.1f} "
              f"{s['speedup_vs_sequential']:7.2f} {s['ratio_vs_pool']:8.3f}")
    print(f"identical results in every mode and repeat: {identical}")
    lib.write_csv(out / "sweep_scaling.csv", summary)
    lib.write_json(out / "sweep_scaling.json", {
        "summary": summary, "runs": rows, "identical_results": identical,
        "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "machine": lib.machine()})
    _figure(out / "sweep_scaling.png", summary, rows, args)
    run.record(seeds=range(args.units), protocol="heldout", datasets=["synthetic"])
    print(f"wrote {out}/sweep_scaling.csv, sweep_scaling.json, sweep_scaling.png, run.json")
    if "ray_cluster" in med and "pool" in med:
        print(f"ray_cluster_vs_pool: {med['ray_cluster'] / med['pool']:.3f}")
    ratio = med["ray_local"] / med["pool"] if {"ray_local", "pool"} <= set(med) else np.nan
    print(f"ray_overhead_vs_pool: {ratio:.3f}")


class NodeKiller(threading.Thread):
    """Kills the cluster's last node ``kills`` times, each time once one of its workers is
    running a :func:`probe_unit` that has not finished (seen in the ledger), a moment into it;
    starts a new node after each kill but the last. Bounded: gives up after ``wait`` seconds
    without a unit on the node. ``finished`` holds the keys of units whose result arrived."""

    def __init__(self, cluster, ledger: Path, kills: int, delay: float = 0.5,
                 wait: float = 120.0) -> None:
        super().__init__(daemon=True)
        self.cluster, self.ledger, self.target, self.delay, self.wait = (
            cluster, ledger, kills, delay, wait)
        self.node = cluster.nodes[-1]
        self.kills: list[dict[str, Any]] = []
        self.finished: set[str] = set()
        self.done = threading.Event()
        self.t0 = time.perf_counter()

    def _running_on_node(self) -> bool:
        import psutil

        try:
            pids = {p.pid for p in psutil.Process(self.node.process.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            return False
        for f in self.ledger.glob("*.txt"):
            lines = f.read_text().split()
            if lines and int(lines[-1]) in pids and f.stem.replace("_", "/") not in self.finished:
                return True
        return False

    def run(self) -> None:
        while len(self.kills) < self.target and not self.done.is_set():
            deadline = time.monotonic() + self.wait
            while not self._running_on_node():
                if self.done.is_set() or time.monotonic() > deadline:
                    return
                time.sleep(0.1)
            time.sleep(self.delay)  # into the unit, not at its start
            t = time.perf_counter()
            self.cluster.kill_node(self.node)
            self.kills.append({"kill": len(self.kills) + 1,
                               "at_s": round(time.perf_counter() - self.t0, 1)})
            print(f"  kill {len(self.kills)}: the node's raylet killed at "
                  f"{self.kills[-1]['at_s']} s", flush=True)
            if len(self.kills) < self.target:
                self.node = self.cluster.add_node(num_cpus=1)
                self.kills[-1]["restart_s"] = round(time.perf_counter() - t, 1)

    def stop(self, timeout: float = 180.0) -> None:
        self.done.set()
        self.join(timeout=timeout)


def probe_units(n: int, seconds: float, ledger: Path) -> list:
    """``n`` :func:`probe_unit` sweep units (keys ``probe/u000``...)."""
    from bow_gym.sweep import SweepUnit

    return [SweepUnit(f"probe/u{i:03d}", probe_unit,
                      {"key": f"probe/u{i:03d}", "seconds": seconds, "ledger": str(ledger)},
                      {"seconds": seconds}) for i in range(n)]


def check_exactly_once(units: list, results: list[dict[str, Any]], folder: Path,
                       ledger: Path) -> dict[str, Any]:
    """What a fault-injected probe sweep left: lost and duplicated units, wrong values,
    attempts per unit (from the ledger)."""
    keys = [u.key for u in units]
    files = sorted(p.relative_to(folder).with_suffix("").as_posix()
                   for p in folder.rglob("*.json"))
    saved = {k: json.loads((folder / f"{k}.json").read_text()) for k in keys if k in files}
    attempts = {}
    for k in keys:
        f = ledger / f"{k.replace('/', '_')}.txt"
        attempts[k] = len(f.read_text().split()) if f.is_file() else 0
    return {"units": len(keys), "results": len(results), "result_files": len(files),
            "lost": [k for k in keys if k not in saved],
            "duplicated": len(files) - len(set(files)) + len([f for f in files if f not in keys]),
            "wrong_values": [k for k, r in saved.items()
                             if r["value"] != probe_value(k) or r["unit"] != k]
            + [u.key for u, r in zip(units, results, strict=False)
               if r["value"] != probe_value(u.key)],
            "attempts_total": sum(attempts.values()),
            "units_run_again": {k: n for k, n in attempts.items() if n > 1}}


def faults(args: argparse.Namespace, run: lib.results.BenchmarkRun) -> None:
    from bow_gym.ray_cluster import LoopbackCluster
    from bow_gym.sweep import SweepOptions, run_sweep

    out = run.out
    folder, ledger = out / "sweep", out / "ledger"
    for d in (folder, ledger):
        if d.exists():
            shutil.rmtree(d)
    units = probe_units(args.fault_units, args.fault_seconds, ledger)
    with LoopbackCluster(head_cpus=1) as cluster:
        cluster.add_node(num_cpus=1)
        print(f"loopback cluster {cluster.address}: head 1 CPU + node 1 CPU; "
              f"{len(units)} units of {args.fault_seconds} s; {args.faults} kills")
        killer = NodeKiller(cluster, ledger, args.faults, delay=min(0.5, args.fault_seconds / 4))
        killer.start()
        try:
            results = run_sweep(units, folder, SweepOptions(
                backend="ray", ray_address=cluster.address, retries=args.faults + 5,
                resume=False, progress=not args.no_progress),
                on_result=lambda u, r, reused: killer.finished.add(u.key))
        finally:
            killer.stop()
    wall = time.perf_counter() - killer.t0
    res = {"kills": killer.kills, **check_exactly_once(units, results, folder, ledger),
           "wall_s": wall, "settings": {k: v for k, v in vars(args).items()
                                        if not k.startswith("_")}, "machine": lib.machine()}
    lib.write_json(out / "faults.json", res)
    run.record(seeds=[], protocol=None, datasets=None)
    print(f"{res['units']} units, {len(killer.kills)} kills in {wall:.0f} s: {res['results']} "
          f"results, {res['result_files']} result files, {res['attempts_total']} attempts, "
          f"{len(res['units_run_again'])} units run again, wrong values "
          f"{len(res['wrong_values'])}")
    print(f"wrote {out}/faults.json, run.json")
    print(f"units_lost: {len(res['lost'])} units_duplicated: {res['duplicated']} "
          f"kills: {len(killer.kills)}")


def _figure(path: Path, summary, rows, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    modes = [s["mode"] for s in summary]
    ax.bar(range(len(modes)), [s["median_s"] for s in summary], color="lightsteelblue",
           label="median")
    for i, mode in enumerate(modes):
        pts = [r["seconds"] for r in rows if r["mode"] == mode]
        ax.scatter([i] * len(pts), pts, color="k", s=12, zorder=3,
                   label="repeats" if i == 0 else None)
    ax.set_xticks(range(len(modes)), modes)
    ax.set_ylabel("wall time of the sweep (s)")
    ax.set_title(f"{args.units} compare_policies units x {args.answers} answers, "
                 f"{args.jobs} at a time")
    ax.legend()
    lib.save_figure(fig, path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep_scaling", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--units", type=int, default=6, help="units of the sweep (default 6)")
    p.add_argument("--answers", type=int, default=1000,
                   help="training answers of each unit (default 1000)")
    p.add_argument("--images", type=int, default=200, help="synthetic images (default 200)")
    p.add_argument("--jobs", type=int, default=2,
                   help="units at once: pool processes, local Ray CPUs, cluster CPUs (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="alternated repeats (default 3)")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"comma-separated modes (default {','.join(MODES)})")
    p.add_argument("--faults", type=int, default=0,
                   help="fault injection instead: kill the cluster's second node N times")
    p.add_argument("--fault-units", type=int, default=80,
                   help="probe units of the fault-injection sweep (default 80)")
    p.add_argument("--fault-seconds", type=float, default=2.0,
                   help="seconds each probe unit takes (default 2)")
    lib.add_output_arguments(p, "sweep_scaling")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or any(m not in MODES for m in args.modes):
        p.error(f"--modes: expected a comma-separated subset of {', '.join(MODES)}, got "
                f"{','.join(args.modes)!r}")
    for name in ("units", "answers", "images", "jobs", "repeats", "fault_units"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.jobs < 2 and "ray_cluster" in args.modes:
        p.error("--jobs must be at least 2 with the ray_cluster mode (one CPU per node)")
    if args.faults < 0 or args.fault_seconds <= 0:
        p.error("--faults must be >= 0 and --fault-seconds > 0")
    try:
        import ray  # noqa: F401
    except ImportError:
        p.error("needs Ray: pip install 'bow-gym[ray]'")
    run = lib.start_run("sweep_scaling", argv, args.out, args.run)
    if args.faults:
        faults(args, run)
    else:
        scaling(args, run)


if __name__ == "__main__":
    main()
