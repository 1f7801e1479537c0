"""How well does each quality signal rank pseudo-masks? Read from finished ``bow-gym rounds`` runs.

The pipeline can keep only the best ``top_k`` share of pseudo-masks by a score built from the
expert's answers and model signals (:mod:`bow_gym.pseudo_labels`), never the ground truth. This
benchmark checks the signals against the ground truth afterwards (evaluation only): per round and
signal, the Spearman rank correlation between the signal and the pseudo-mask's Dice, and the mean
Dice of the pseudo-masks a ``top_k`` filter on that signal would keep, against all of them.

Run: ``python -m benchmarks.pseudo_label_quality RUN_DIR [RUN_DIR ...]`` (e.g. the runs that
``python -m benchmarks.ablation --out OUT`` leaves under ``OUT/runs``; they are not committed).
Writes ``pseudo_label_quality.csv``/``.json``, a PNG and ``run.json`` to
``benchmarks/results/pseudo_label_quality/<run>/``; last line: ``best_round1_signal_top50_gain: <Dice gain of the best signal in round 1>``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from benchmarks import lib
from bow_gym.io_utils import read_csv
from bow_gym.pseudo_labels import SIGNALS, average_ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho (Pearson correlation of average ranks); NaN for fewer than 3 pairs.

    Ranks scaled to [0, 1] give the same correlation as raw ranks.
    """
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return math.nan

    rx, ry = average_ranks(x[ok]), average_ranks(y[ok])
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def analyse(run: Path, top_ks: tuple[float, ...]) -> list[dict]:
    rows = []
    for rd in sorted(run.glob("round_*")):
        if not (rd / "done.json").is_file():
            continue
        quality = {row["image_id"]: row for row in read_csv(rd / "quality.csv")}
        dice = {row["image_id"]: float(row["dice"]) for row in read_csv(rd / "per_image.csv")
                if row["target"] == "pseudo" and row["fill_holes"] == "0"}
        ids = [i for i in quality if i in dice]
        d = np.array([dice[i] for i in ids])
        for signal in SIGNALS:
            v = np.array([float(quality[i][signal]) for i in ids])
            ok = np.isfinite(v)
            row = {"run": run.name, "round": int(rd.name[6:]), "signal": signal,
                   "n": int(ok.sum()), "spearman": spearman(v, d), "dice_all": float(d.mean())}
            for k in top_ks:
                if ok.sum() < 3:
                    row[f"dice_top{int(k * 100)}"] = math.nan
                    continue
                n_keep = int(math.ceil(k * ok.sum()))
                keep = np.argsort(-v[ok], kind="stable")[:n_keep]
                row[f"dice_top{int(k * 100)}"] = float(d[ok][keep].mean())
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pseudo_label_quality", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+", help="finished run folders")
    p.add_argument("--top-k", default="0.5,0.7",
                   help="shares kept, each in (0, 1] (comma-separated; default 0.5,0.7)")
    lib.add_output_arguments(p, "pseudo_label_quality")
    args = p.parse_args(argv)
    try:
        top_ks = tuple(float(k) for k in args.top_k.split(","))
    except ValueError:
        top_ks = ()
    if not top_ks or not all(0 < k <= 1 for k in top_ks):
        p.error(f"--top-k: expected comma-separated shares in (0, 1], got {args.top_k!r}")
    rows = [row for run in args.runs for row in analyse(Path(run), top_ks)]
    if not rows:
        raise SystemExit("no finished rounds found in " + ", ".join(args.runs))
    run = lib.start_run("pseudo_label_quality", argv, args.out, args.run)
    out = run.out
    keys = [f"dice_top{int(k * 100)}" for k in top_ks]
    print(f"{'run':<22} {'round':>5} {'signal':<11} {'n':>5} {'rho':>6} {'all':>6} "
          + " ".join(f"{k:>10}" for k in keys))
    for r in rows:
        print(f"{r['run']:<22} {r['round']:>5} {r['signal']:<11} {r['n']:>5} "
              f"{r['spearman']:>6.2f} {r['dice_all']:>6.3f} "
              + " ".join(f"{r[k]:>10.3f}" for k in keys))
    lib.write_csv(out / "pseudo_label_quality.csv", rows)
    lib.write_json(out / "pseudo_label_quality.json", {"runs": args.runs, "rows": rows})
    _plot(rows, out / "pseudo_label_quality.png")
    configs = [json.loads((Path(r) / "config.json").read_text()) for r in args.runs
               if (Path(r) / "config.json").is_file()]
    run.record(seeds=sorted({int(c["seed"]) for c in configs}),
               protocol="+".join(sorted({c["protocol"] for c in configs})) or None,
               datasets=sorted({c["dataset"] for c in configs}) or None)
    first = [r for r in rows if r["round"] == 1 and "dice_top50" in r
             and np.isfinite(r["dice_top50"])]
    gain = max((r["dice_top50"] - r["dice_all"] for r in first), default=math.nan)
    print(f"best_round1_signal_top50_gain: {gain:.3f}")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for j, signal in enumerate(SIGNALS):
        for run in dict.fromkeys(r["run"] for r in rows):
            sel = [r for r in rows if r["signal"] == signal and r["run"] == run]
            ax.plot([r["round"] for r in sel], [r["spearman"] for r in sel], "o-", color=f"C{j}",
                    alpha=0.8, label=f"{signal} ({run})")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("round")
    ax.set_ylabel("Spearman rho with pseudo-mask Dice")
    ax.set_title("Quality signals vs pseudo-mask Dice (python -m benchmarks.pseudo_label_quality)",
                 fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    lib.save_figure(fig, path)


if __name__ == "__main__":
    main()
