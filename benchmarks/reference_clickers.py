"""Dice after 1..5 clicks: random clicking vs the ground-truth-guided (RITM-style) clicker.

For each data set (the embedded synthetic one; the first N Kvasir-SEG images when the real data
is present) and each backbone that can run here, every image is labelled once by the
ground-truth-guided clicker and by the random clicker under several seeds, each episode starting
from an empty mask, with the environment's defaults (threshold 0.8, revert on "worse", 128 px
working resolution; Dice is measured at that resolution). Reported: mean Dice after k clicks with a
95% bootstrap confidence interval over images (random: averaged over seeds first), and the median.

DINOv2 backbones need pretrained weights, which cannot be downloaded here: pass
``--dinov2-checkpoint FILE`` (a local ``vit_small_patch14_dinov2`` state dict) to include them;
without it their rows say "not run" instead of showing a number.

Run: ``python -m benchmarks.reference_clickers`` (``--help`` for options). Last line:
``kvasir_gt_clicker_dice_at_5: <value>`` (``nan`` when Kvasir-SEG is not available).
"""

from __future__ import annotations

import argparse
import math

import numpy as np


def evaluate(env, policy_name: str, seeds: list[int], progress: bool) -> np.ndarray:
    """(images, clicks) Dice after each click; random: mean over seeds."""
    from tqdm.auto import tqdm

    from agents import make_policy, run_episode

    n = len(env.unwrapped.dataset)
    runs = []
    for seed in seeds if policy_name == "random" else [0]:
        policy = make_policy(policy_name)
        per_image = []
        for i in tqdm(range(n), desc=f"{policy_name} seed {seed}", disable=not progress,
                      leave=False):
            rec = run_episode(env, policy, seed=seed * 100003 + i, options={"index": i})
            per_image.append(rec.dice)
        runs.append(per_image)
    return np.mean(np.array(runs, dtype=np.float64), axis=0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--synthetic-images", type=int, default=96)
    p.add_argument("--kvasir-images", type=int, default=200, help="first N Kvasir-SEG images")
    p.add_argument("--data", help="real-data folder (default $BOW_GYM_SHARED_DATA or ../shared/data)")
    p.add_argument("--seeds", type=int, default=3, help="random-clicker seeds (default 3)")
    p.add_argument("--dinov2-checkpoint", help="local DINOv2 ViT-S/14 weights file")
    p.add_argument("--out", help="output folder (default benchmarks/results/reference_clickers)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    import gymnasium as gym

    import bow_gym  # noqa: F401
    from benchmarks._common import (
        bootstrap_ci,
        machine,
        out_dir,
        save_figure,
        shared_data,
        write_csv,
        write_json,
    )

    out = out_dir("reference_clickers", args.out)
    data = shared_data(args.data)
    datasets = {"synthetic": {"dataset": "synthetic",
                              "dataset_kwargs": {"n_images": args.synthetic_images}}}
    if data is not None and (data / "kvasir-seg").is_dir():
        datasets["kvasir-seg"] = {"dataset": "kvasir-seg", "root": str(data / "kvasir-seg"),
                                  "dataset_kwargs": {"limit": args.kvasir_images}}
    else:
        print("Kvasir-SEG not found: pass --data or set BOW_GYM_SHARED_DATA")
    backbones = {"lab_texture": {}}
    skipped = []
    if args.dinov2_checkpoint:
        backbones["dinov2_vits14"] = {"checkpoint": args.dinov2_checkpoint}
    else:
        skipped.append({"backbone": "dinov2_vits14",
                        "reason": "not run: no pretrained weights here (--dinov2-checkpoint)"})

    rows, curves = [], {}
    for ds_name, ds_kwargs in datasets.items():
        for bb_name, bb_kwargs in backbones.items():
            env = gym.make("BetterWorseSeg-v0", backbone=bb_name, backbone_kwargs=bb_kwargs,
                           **ds_kwargs)
            n = len(env.unwrapped.dataset)
            for policy in ("random", "gt"):
                dice = evaluate(env, policy, list(range(args.seeds)), not args.no_progress)
                curves[(ds_name, bb_name, policy)] = dice
                for k in range(dice.shape[1]):
                    lo, hi = bootstrap_ci(dice[:, k])
                    rows.append({"dataset": ds_name, "images": n, "backbone": bb_name,
                                 "policy": policy, "clicks": k + 1,
                                 "mean_dice": float(dice[:, k].mean()), "ci95_low": lo,
                                 "ci95_high": hi, "median_dice": float(np.median(dice[:, k]))})

    print(f"\n{'dataset':<11} {'backbone':<14} {'policy':<7} "
          + " ".join(f"{'@' + str(k):>16}" for k in range(1, 6)))
    for key in curves:
        sel = [r for r in rows if (r["dataset"], r["backbone"], r["policy"]) == key]
        cells = " ".join(f"{r['mean_dice']:.3f} [{r['ci95_low']:.2f},{r['ci95_high']:.2f}]"
                         for r in sel)
        print(f"{key[0]:<11} {key[1]:<14} {key[2]:<7} {cells}")
    for s in skipped:
        print(f"{'all':<11} {s['backbone']:<14} {'-':<7} {s['reason']}")

    write_csv(out / "reference_clickers.csv", rows)
    write_json(out / "reference_clickers.json", {"rows": rows, "skipped": skipped,
                                                 "seeds": args.seeds, "machine": machine()})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(datasets)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False)
    for ax, ds_name in zip(axes[0], names, strict=True):
        for (d, bb, pol), dice in curves.items():
            if d != ds_name:
                continue
            ks = np.arange(1, dice.shape[1] + 1)
            sel = [r for r in rows if (r["dataset"], r["backbone"], r["policy"]) == (d, bb, pol)]
            ax.plot(ks, dice.mean(0), marker="o", label=f"{pol} ({bb})",
                    color="tab:green" if pol == "gt" else "tab:gray")
            ax.fill_between(ks, [r["ci95_low"] for r in sel], [r["ci95_high"] for r in sel],
                            alpha=0.2, color="tab:green" if pol == "gt" else "tab:gray")
        n_img = next(r["images"] for r in rows if r["dataset"] == ds_name)
        ax.set_title(f"{ds_name} ({n_img} images)")
        ax.set_xlabel("clicks")
        ax.set_ylabel("Dice (mean, 95% CI)")
        ax.set_ylim(0, 1)
        ax.set_xticks(range(1, 6))
        ax.legend(loc="lower right")
    save_figure(fig, out / "reference_clickers.png")
    print(f"wrote {out}/reference_clickers.csv, .json, .png")
    kv = curves.get(("kvasir-seg", "lab_texture", "gt"))
    value = float(kv[:, -1].mean()) if kv is not None else math.nan
    print(f"kvasir_gt_clicker_dice_at_5: {value:.4f}")


if __name__ == "__main__":
    main()
