"""Where the segmenter's output becomes a mask: 0.5 against ``match_area``, on recorded runs.

The multi-round pipeline stores each round's segmenter output as probabilities
(``round_NN/predictions.npz``) beside the masks it trained on (``labels.npz``). This script
re-scores those stored probabilities, without training anything, at

* the fixed threshold 0.5 (the pipeline's only rule before ``mask_threshold``),
* ``match_area`` (:func:`bow_gym.metrics.match_area_level`: the threshold at which the output on
  the labelling images covers the share of pixels of the masks the segmenter trained on; no
  ground truth),
* the level the run itself used (stored with the predictions; 0.5 in runs recorded before),
* a sweep of fixed thresholds, for the curve (the best of which reads the ground truth: an
  oracle, shown for reference only).

The same segmenter, the same images: the difference ``match_area - 0.5`` is paired per image
and seed (:func:`benchmarks.lib.paired`). It does not include what a threshold changes in later
rounds (their start masks): for that, run the loop with ``--set mask_threshold=...``
(:mod:`benchmarks.ablation` ``--lever``).

Input: the run folders of an ablation (``<ablation out>/runs/<protocol>``, whose children are
``<row>-s<seed>``; the supervised row stores no probabilities and is skipped) or of any
``bow-gym rounds`` run. Ground truth is read for scoring only. Writes ``mask_threshold.json``,
``mask_threshold.csv`` (one line per row, seed and round), ``curves.csv`` and
``mask_threshold.png`` with ``run.json``.

Run: ``python -m benchmarks.mask_threshold --runs PATH [--rows full] [--run NAME]``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks import lib

#: Fixed thresholds of the curve.
SWEEP = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _run_dirs(root: Path, rows: list[str] | None) -> dict[str, list[tuple[int, Path]]]:
    """``row -> [(seed, folder)]`` of the rounds runs under ``root`` (or ``root`` itself)."""
    found: dict[str, list[tuple[int, Path]]] = {}
    candidates = [root] if (root / "config.json").is_file() else sorted(root.iterdir())
    for d in candidates:
        if not (d / "config.json").is_file() or not any(d.glob("round_*/predictions.npz")):
            continue
        m = re.fullmatch(r"(.+)-s(\d+)", d.name)
        row, seed = (m.group(1), int(m.group(2))) if m else (d.name, 0)
        if rows is None or row in rows:
            found.setdefault(row, []).append((seed, d))
    return {k: sorted(v) for k, v in found.items()}


def _dice_at(probs: list[np.ndarray], gts: list[np.ndarray], levels: list[int]
             ) -> np.ndarray:
    """``(len(levels), n)`` Dice of each probability map, cut at each level, against its
    ground truth at the ground truth's size (linear resize first, as the pipeline scores)."""
    from bow_gym.metrics import dice

    out = np.empty((len(levels), len(probs)))
    for j, (p, gt) in enumerate(zip(probs, gts, strict=True)):
        if p.shape != gt.shape[:2]:
            p = cv2.resize(p, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
        for i, level in enumerate(levels):
            out[i, j] = dice(p >= level, gt)
    return out


def score_run(run: Path) -> tuple[Any, list[dict[str, Any]]]:
    """One rounds run's config and, per round, its levels and per-image Dice at each rule."""
    from bow_gym.metrics import match_area_level, probability_level
    from bow_gym.rounds import (
        Labels,
        RoundsConfig,
        _load_kept,
        build_datasets,
        load_in_memory,
        training_targets,
    )

    stored = json.loads((run / "config.json").read_text())
    known = RoundsConfig.__dataclass_fields__
    config = RoundsConfig(**{k: v for k, v in stored.items() if k in known})
    label_lazy, eval_lazy = build_datasets(config)
    eval_ds = load_in_memory(eval_lazy, progress=False)
    out = []
    for rd in sorted(run.glob("round_*")):
        if not (rd / "predictions.npz").is_file() or not (rd / "labels.npz").is_file():
            continue
        with np.load(rd / "predictions.npz") as z:
            pred = {k: z[k] for k in z.files}
        labels = Labels.load(rd / "labels.npz")
        side = int(round(np.sqrt(labels.evidence.shape[1]))) if labels.evidence is not None \
            else 16
        targets, _ = training_targets(labels, config, (side, side))
        # label_prob is in labels.ids order, as the run wrote it; the level matches the kept images
        kept = (_load_kept(rd / "quality.csv", labels.ids) if (rd / "quality.csv").is_file()
                else np.ones(len(labels.ids), bool))
        idx = np.flatnonzero(kept)
        matched = match_area_level(list(pred["label_prob"][idx]), [targets[k] for k in idx])
        own = int(pred["level"]) if "level" in pred else 128
        ids = [str(i) for i in pred["eval_ids"]]
        gts = [eval_ds[eval_ds.index_of(i)].mask for i in ids]
        sweep = [probability_level(t) for t in SWEEP]
        d = _dice_at(list(pred["eval_prob"]), gts, [128, matched, own, *sweep])
        out.append({"round": int(rd.name.split("_")[1]), "level_match_area": matched,
                    "level_run": own, "ids": ids, "half": d[0], "match_area": d[1],
                    "run": d[2], "sweep": d[3:]})
    return config, out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mask_threshold",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True,
                   help="a folder of rounds runs named <row>-s<seed> (an ablation's "
                        "runs/<protocol>), or one rounds run")
    p.add_argument("--rows", default=None,
                   help="comma-separated rows to score (default: every row with predictions)")
    lib.add_output_arguments(p, "mask_threshold")
    args = p.parse_args(argv)
    root = Path(args.runs)
    if not root.is_dir():
        p.error(f"--runs: {str(root)!r} is not a folder")
    rows_wanted = args.rows.split(",") if args.rows else None
    dirs = _run_dirs(root, rows_wanted)
    if not dirs:
        p.error(f"--runs: no rounds run with stored predictions (config.json and "
                f"round_NN/predictions.npz) in {str(root)!r}"
                + (f" for rows {rows_wanted}" if rows_wanted else ""))
    from tqdm.auto import tqdm

    run = lib.start_run("mask_threshold", argv, args.out, args.run)
    configs, scored = [], {}
    for row, runs in dirs.items():
        scored[row] = []
        for seed, d in tqdm(runs, desc=row, unit="seed"):
            config, res = score_run(d)
            configs.append(config)
            scored[row].append((seed, res))

    lines, curves, summary = [], [], {}
    for row, per_seed in scored.items():
        rounds = sorted({x["round"] for _, res in per_seed for x in res})
        summary[row] = {}
        for r in rounds:
            at = [(seed, x) for seed, res in per_seed for x in res if x["round"] == r]
            if len(at) != len(per_seed):
                continue  # a seed that has not reached this round
            as_dicts = {k: [dict(zip(x["ids"], x[k], strict=True)) for _, x in at]
                        for k in ("half", "match_area", "run")}
            d = lib.paired(as_dicts["match_area"], as_dicts["half"], seed=r)
            summary[row][r] = {"match_area_minus_half": d,
                               "half": float(np.mean([x["half"].mean() for _, x in at]) * 100),
                               "match_area": float(np.mean([x["match_area"].mean()
                                                            for _, x in at]) * 100),
                               "run": float(np.mean([x["run"].mean() for _, x in at]) * 100)}
            for seed, x in at:
                lines.append({"row": row, "seed": seed, "round": r,
                              "threshold_match_area": round(x["level_match_area"] / 255, 4),
                              "threshold_run": round(x["level_run"] / 255, 4),
                              "dice_half": float(x["half"].mean()),
                              "dice_match_area": float(x["match_area"].mean()),
                              "dice_run": float(x["run"].mean())})
            mean_sweep = np.mean([x["sweep"].mean(axis=1) for _, x in at], axis=0)
            curves += [{"row": row, "round": r, "threshold": t, "dice": float(v)}
                       for t, v in zip(SWEEP, mean_sweep, strict=True)]
    seeds = sorted({seed for runs in dirs.values() for seed, _ in runs})
    lib.write_json(run.out / "mask_threshold.json",
                   {"runs": str(root), "seeds": seeds, "sweep": list(SWEEP), "rows": summary})
    lib.write_csv(run.out / "mask_threshold.csv", lines)
    lib.write_csv(run.out / "curves.csv", curves)
    _plot(summary, curves, lines, run.out / "mask_threshold.png")
    run.record(seeds=seeds, protocol=",".join(sorted({c.protocol for c in configs})),
               datasets=sorted({c.dataset for c in configs}))

    print("prediction Dice (%) on the evaluation images, mean over seeds; match_area - 0.5: "
          "mean [95% CI over images] [95% CI over seeds] (seeds ahead)")
    for row, by_round in summary.items():
        for r, s in by_round.items():
            d = s["match_area_minus_half"]
            print(f"{row:<14} round {r}: 0.5 {s['half']:6.2f}  match_area {s['match_area']:6.2f}"
                  f"  as run {s['run']:6.2f}  diff {d['mean']:+.2f} [{d['images_low']:+.2f}, "
                  f"{d['images_high']:+.2f}] [{d['seeds_low']:+.2f}, {d['seeds_high']:+.2f}] "
                  f"({d['wins']}/{d['n_seeds']})")
    print(f"wrote {run.out}/: mask_threshold.json, mask_threshold.csv, curves.csv, "
          "mask_threshold.png, run.json")


def _plot(summary: dict[str, Any], curves: list[dict[str, Any]], lines: list[dict[str, Any]],
          path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for row, by_round in summary.items():
        last = max(by_round) if by_round else None
        if last is None:
            continue
        pts = [c for c in curves if c["row"] == row and c["round"] == last]
        axes[0].plot([c["threshold"] for c in pts], [c["dice"] * 100 for c in pts], "o-",
                     label=f"{row}, round {last}: fixed thresholds")
        ma = [x for x in lines if x["row"] == row and x["round"] == last]
        axes[0].scatter([np.mean([x["threshold_match_area"] for x in ma])],
                        [np.mean([x["dice_match_area"] for x in ma]) * 100], marker="*", s=160,
                        zorder=3, label=f"{row}: match_area (threshold and Dice: seed means)")
        rs = sorted(by_round)
        d = [by_round[r]["match_area_minus_half"] for r in rs]
        axes[1].errorbar(rs, [x["mean"] for x in d],
                         yerr=[[x["mean"] - x["images_low"] for x in d],
                               [x["images_high"] - x["mean"] for x in d]],
                         fmt="o-", capsize=3, label=row)
    axes[0].set(xlabel="threshold on the segmenter's probability",
                ylabel="prediction Dice (%), mean over seeds", title="Last round")
    axes[0].legend(fontsize=8)
    axes[1].axhline(0, color="grey", lw=0.8)
    axes[1].xaxis.get_major_locator().set_params(integer=True)
    axes[1].set(xlabel="round", ylabel="match_area - 0.5 (Dice points)",
                title="Paired difference, 95% CI over images")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    lib.save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    main()
