"""Paired comparison of two policies from ``benchmarks.compare_policies`` result folders.

Two runs of ``compare_policies`` with the same ``--splits``/``--seeds`` and protocol evaluate on
the same images with the same seeds, so their results pair up by (data set, split, seed). Much
of the run-to-run spread is shared by both policies (which split is hard, which seed's envs draw
which images), so the paired difference is a sharper test than two overlapping intervals::

    python -m benchmarks.paired \\
        --a benchmarks/results/compare_policies/<run A> \\
        --b benchmarks/results/compare_policies/<run B>

``--a`` and ``--b`` may be the same folder, with ``--a-policy`` and ``--b-policy`` naming two
learners of one run. It prints, per data set, the mean difference B - A of Dice after k = 1..5
clicks with its 95% Student-t interval over the pairs and how many pairs B wins, and writes
``paired.json``, ``paired.csv`` (one row per pair) and ``paired.png`` (B against A per pair, and
the mean difference against clicks) and ``run.json`` to ``benchmarks/results/paired/<run>/``
(``--run``, ``--out``). Pairs are checked to be the same evaluation: the random
and ground-truth-guided clickers, which both folders run, must give the same Dice in both.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import lib

METRICS = tuple(f"dice@{k}" for k in range(1, 6))
# Settings that decide which images a run evaluates on; runs that differ here do not pair.
PROTOCOL = ("transductive", "validation")


def load_run(folder: Path, arg: str) -> dict[str, Any]:
    """The ``compare_policies.json`` of a result folder, with a clear error when it is not one."""
    path = Path(folder) / "compare_policies.json"
    if not path.is_file():
        raise SystemExit(f"{arg}: {path} not found (a benchmarks.compare_policies result folder "
                         "is expected)")
    try:
        res = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{arg}: {path} is not valid JSON ({exc})") from exc
    if not isinstance(res, dict) or "per_seed" not in res:
        raise SystemExit(f"{arg}: {path} has no 'per_seed' results")
    return res


def pick_policy(res: dict[str, Any], policy: str | None, arg: str) -> str:
    """``policy``, or the run's best learned agent when it is None; must be in the run."""
    names = list(dict.fromkeys(r["policy"] for r in res["per_seed"]))
    if policy is None:
        bests = set((res.get("best_agent") or {}).values())  # one per data set
        if len(bests) != 1:
            raise SystemExit(f"{arg}: the run names {len(bests)} best agents ({sorted(bests)}); "
                             f"pick one with {arg}-policy from {names}")
        policy = bests.pop()
    if policy not in names:
        raise SystemExit(f"{arg}-policy: {policy!r} is not in that run; it has {names}")
    return policy


def _key(row: dict[str, Any]) -> tuple[str, int, int]:
    return row["dataset"], int(row.get("split", 0)), int(row["seed"])


def pair_rows(a: dict[str, Any], pa: str, b: dict[str, Any], pb: str,
              tol: float = 1e-6) -> list[dict[str, Any]]:
    """One row per (data set, split, seed) that both runs evaluated, with both policies' metrics.

    Raises:
        SystemExit: when the runs share no pair, differ in protocol, or their reference clickers
            disagree on a shared pair (then they did not evaluate the same images).
    """
    sa, sb = a.get("settings", {}), b.get("settings", {})
    for k in PROTOCOL:
        if bool(sa.get(k)) != bool(sb.get(k)):
            raise SystemExit(f"--a and --b differ in --{k} ({sa.get(k)} against {sb.get(k)}): "
                             "they evaluate on different images and do not pair")
    rows_a = {(_key(r), r["policy"]): r for r in a["per_seed"]}
    rows_b = {(_key(r), r["policy"]): r for r in b["per_seed"]}
    keys = sorted({k for k, p in rows_a if p == pa} & {k for k, p in rows_b if p == pb})
    if not keys:
        raise SystemExit("--a and --b share no (data set, split, seed): run them with the same "
                         "--datasets, --splits and --seeds")
    out = []
    for key in keys:
        for ref in ("random", "gt"):
            ra, rb = rows_a.get((key, ref)), rows_b.get((key, ref))
            if ra and rb and abs(ra["dice@5"] - rb["dice@5"]) > tol:
                raise SystemExit(f"{key[0]} split {key[1]} seed {key[2]}: the {ref} clicker gives "
                                 f"Dice@5 {ra['dice@5']:.4f} in --a and {rb['dice@5']:.4f} in "
                                 "--b, so the runs did not evaluate the same images")
        row: dict[str, Any] = {"dataset": key[0], "split": key[1], "seed": key[2]}
        for m in METRICS:
            row[f"a_{m}"] = rows_a[(key, pa)][m]
            row[f"b_{m}"] = rows_b[(key, pb)][m]
            row[f"diff_{m}"] = row[f"b_{m}"] - row[f"a_{m}"]
        out.append(row)
    return out


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per data set and metric: mean difference B - A, its 95% t-interval and B's wins."""
    out = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        sub = [r for r in rows if r["dataset"] == ds]
        for m in METRICS:
            d = [r[f"diff_{m}"] for r in sub]
            mean, lo, hi = lib.t_interval(d)
            out.append({"dataset": ds, "metric": m, "pairs": len(d),
                        "a": float(np.mean([r[f"a_{m}"] for r in sub])),
                        "b": float(np.mean([r[f"b_{m}"] for r in sub])),
                        "diff": mean, "diff_ci_low": lo, "diff_ci_high": hi,
                        "b_wins": sum(x > 0 for x in d), "ties": sum(x == 0 for x in d)})
    return out


def _figure(rows, summary, a: tuple[str, str], b: tuple[str, str], path: Path) -> None:
    """Per data set: B against A per pair (Dice@5), and the mean difference against clicks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(len(datasets), 2, figsize=(10, 4 * len(datasets)), squeeze=False)
    for (ax_s, ax_d), ds in zip(axes, datasets, strict=True):
        sub = [r for r in rows if r["dataset"] == ds]
        xa = np.array([r["a_dice@5"] for r in sub])
        xb = np.array([r["b_dice@5"] for r in sub])
        lo, hi = float(min(xa.min(), xb.min())) - 0.01, float(max(xa.max(), xb.max())) + 0.01
        ax_s.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
        for split in sorted({r["split"] for r in sub}):
            idx = [i for i, r in enumerate(sub) if r["split"] == split]
            ax_s.scatter(xa[idx], xb[idx], label=f"split {split}")
        ax_s.set(xlabel=f"A: {a[0]}", ylabel=f"B: {b[0]}", xlim=(lo, hi), ylim=(lo, hi),
                 title=f"{ds}: Dice@5 per (split, seed)")
        ax_s.legend(fontsize=8)
        s = [x for x in summary if x["dataset"] == ds]
        k = np.arange(1, len(s) + 1)
        mean = np.array([x["diff"] for x in s])
        ax_d.axhline(0, color="grey", lw=1)
        ax_d.errorbar(k, mean, yerr=[mean - [x["diff_ci_low"] for x in s],
                                     [x["diff_ci_high"] for x in s] - mean], marker="o", capsize=4)
        ax_d.set(xlabel="clicks", ylabel="Dice, B - A (mean, 95% t-interval)", xticks=k,
                 title=f"{ds}: paired difference over {len(sub)} pairs")
    fig.suptitle(f"A: {a[0]} in {a[1]}\nB: {b[0]} in {b[1]}", fontsize=9)
    fig.tight_layout()
    lib.save_figure(fig, path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.paired", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--a", required=True, type=Path, help="first result folder (the baseline)")
    p.add_argument("--b", required=True, type=Path, help="second result folder (the challenger)")
    p.add_argument("--a-policy", help="policy in --a (default: that run's best learned agent)")
    p.add_argument("--b-policy", help="policy in --b (default: that run's best learned agent)")
    lib.add_output_arguments(p, "paired")
    args = p.parse_args(argv)

    a, b = load_run(args.a, "--a"), load_run(args.b, "--b")
    pa, pb = pick_policy(a, args.a_policy, "--a"), pick_policy(b, args.b_policy, "--b")
    rows = pair_rows(a, pa, b, pb)
    summary = summarise(rows)
    run = lib.start_run("paired", argv, args.out, args.run)
    out = run.out
    label_a, label_b = f"{pa} ({args.a.name})", f"{pb} ({args.b.name})"
    lib.write_csv(out / "paired.csv", rows)
    lib.write_json(out / "paired.json", {"a": {"folder": str(args.a), "policy": pa},
                                     "b": {"folder": str(args.b), "policy": pb},
                                     "summary": summary, "pairs": rows})
    _figure(rows, summary, (pa, args.a.name), (pb, args.b.name), out / "paired.png")

    print(f"A: {label_a}\nB: {label_b}")
    for s in summary:
        print(f"  {s['dataset']:<12} {s['metric']}  A {s['a']:.3f}  B {s['b']:.3f}  "
              f"B - A {s['diff']:+.4f} [{s['diff_ci_low']:+.4f}, {s['diff_ci_high']:+.4f}]  "
              f"B wins {s['b_wins']}/{s['pairs']}")
    last = [s for s in summary if s["metric"] == "dice@5"]
    for s in last:
        verdict = ("one pair: no interval, nothing shown" if s["pairs"] < 2 else
                   "B better" if s["diff_ci_low"] > 0 else
                   "A better" if s["diff_ci_high"] < 0 else "no difference shown")
        print(f"{s['dataset']}: dice@5 B - A {s['diff']:+.4f} "
              f"[{s['diff_ci_low']:+.4f}, {s['diff_ci_high']:+.4f}], {verdict}")
    settings = a.get("settings", {})
    protocol = ("transductive" if settings.get("transductive") else
                "validation" if settings.get("validation") else "heldout")
    run.record(seeds=sorted({r["seed"] for r in rows}), protocol=protocol,
               datasets=list(dict.fromkeys(r["dataset"] for r in rows)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
