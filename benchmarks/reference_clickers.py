"""Dice after 1..5 clicks: random clicking vs the clickers that read the ground truth.

For each data set (``--dataset``, repeatable; by default the embedded synthetic one and the first
N Kvasir-SEG images when the real data is present) and each backbone that can run here, every image is labelled once by the
ground-truth-guided clicker (``gt``, RITM-style), by the propagation-aware greedy clicker
(``gt_greedy``: each click the one with the largest Dice after it, :class:`agents.GreedyDiceClicker`)
and by the random clicker under several seeds, each episode starting from an empty mask, with the
environment's defaults (threshold 0.8, revert on "worse", 128 px working resolution; Dice is
measured at that resolution). Reported: mean Dice after k clicks with a 95% bootstrap confidence
interval over images (random: averaged over seeds first), and the median.

``--splits N`` evaluates instead on the held-out 20% of the seeded splits 0..N-1 that
``benchmarks.compare_policies --splits N`` uses (images pooled over the splits), so its rows sit
beside the learned agents'. ``greedy_gap_closed`` is then the share of the random-to-``gt`` gap
that ``gt_greedy`` closes: what a learned agent with the greedy rule and a perfect belief about the
lesion would score on the issue's ``gap_closed`` scale.

DINOv2 backbones need pretrained weights, which cannot be downloaded here: pass
``--dinov2-checkpoint FILE`` (a local ``vit_small_patch14_dinov2`` state dict) to include them;
without it their rows say "not run" instead of showing a number.

Run: ``python -m benchmarks.reference_clickers`` (``--help`` for options). Writes to
``benchmarks/results/reference_clickers/<run>/``. Last line:
``kvasir_gt_clicker_dice_at_5: <value>`` (``nan`` when Kvasir-SEG is not available).
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from benchmarks import lib
from bow_gym.cli import add_renamed_flag

POLICIES = ("random", "gt", "gt_greedy")
COLOURS = {"random": "tab:gray", "gt": "tab:green", "gt_greedy": "tab:blue"}


def evaluate(env, policy_name: str, seeds: list[int], progress: bool) -> np.ndarray:
    """(images, clicks) Dice after each click; random: mean over seeds."""
    from tqdm.auto import tqdm

    from bow_gym.agent_registry import make_agent
    from bow_gym.policy import run_episode

    n = len(env.unwrapped.dataset)
    runs = []
    for seed in seeds if policy_name == "random" else [0]:
        policy = make_agent(policy_name)
        per_image = []
        for i in tqdm(range(n), desc=f"{policy_name} seed {seed}", disable=not progress,
                      leave=False):
            rec = run_episode(env, policy, seed=seed * 100003 + i, options={"index": i})
            per_image.append(rec.dice)
        runs.append(per_image)
    return np.mean(np.array(runs, dtype=np.float64), axis=0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reference_clickers", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    lib.add_data_arguments(p)
    p.add_argument("--synthetic-images", type=int, default=96,
                   help="images of the synthetic data set (default 96; with --splits: 200, as in "
                        "compare_policies)")
    p.add_argument("--limit", type=int, default=200,
                   help="first N images of each real data set (default 200; with --splits: all)")
    add_renamed_flag(p, "--kvasir-images", "--limit", "limit", type=int)
    p.add_argument("--splits", type=int, default=0,
                   help="evaluate on the held-out parts of compare_policies' seeded splits "
                        "0..N-1 instead (default 0: the first images)")
    p.add_argument("--seeds", type=int, default=3, help="random-clicker seeds (default 3)")
    p.add_argument("--dinov2-checkpoint", help="local DINOv2 ViT-S/14 weights file")
    lib.add_output_arguments(p, "reference_clickers")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    import gymnasium as gym

    import bow_gym  # noqa: F401

    if args.splits < 0:
        p.error(f"--splits must be >= 0, got {args.splits}")
    if args.limit < 1 or args.synthetic_images < 1:
        p.error(f"--limit and --synthetic-images must be >= 1, got {args.limit} and "
                f"{args.synthetic_images}")
    # Without splits: the first images (the synthetic set's size, the real sets' first N).
    first = {"synthetic": {"n_images": args.synthetic_images},
             **{name: {"limit": args.limit} for name in lib.DEFAULT_FOLDERS}}
    sources, _ = lib.data_sources(p, args, kwargs=None if args.splits else first)
    run = lib.start_run("reference_clickers", argv, args.out, args.run)
    out = run.out
    # Per data set, the env kwargs of each part evaluated (one part, or one per split).
    datasets: dict[str, list[dict]] = {}
    if args.splits:
        for k in range(args.splits):
            for name, cfg in lib.data_configs(sources, split_seed=k).items():
                datasets.setdefault(name, []).append(cfg["test"])
    else:
        datasets = {s.name: [s.env_kwargs()] for s in sources}
    backbones = {"lab_texture": {}}
    skipped = []
    if args.dinov2_checkpoint:
        backbones["dinov2_vits14"] = {"checkpoint": args.dinov2_checkpoint}
    else:
        skipped.append({"backbone": "dinov2_vits14",
                        "reason": "not run: no pretrained weights here (--dinov2-checkpoint)"})

    rows, curves, split_means = [], {}, []
    for ds_name, parts in datasets.items():
        for bb_name, bb_kwargs in backbones.items():
            envs = [gym.make("BetterWorseSeg-v0", backbone=bb_name, backbone_kwargs=bb_kwargs,
                             **kw) for kw in parts]
            n = sum(len(e.unwrapped.dataset) for e in envs)
            for policy in POLICIES:
                per_part = [evaluate(e, policy, list(range(args.seeds)), not args.no_progress)
                            for e in envs]
                if args.splits:
                    split_means += [{"dataset": ds_name, "backbone": bb_name, "policy": policy,
                                     "split": k, "dice@5": float(d[:, -1].mean())}
                                    for k, d in enumerate(per_part)]
                dice = np.concatenate(per_part)
                curves[(ds_name, bb_name, policy)] = dice
                for k in range(dice.shape[1]):
                    lo, hi = lib.bootstrap_ci(dice[:, k])
                    rows.append({"dataset": ds_name, "images": n, "backbone": bb_name,
                                 "policy": policy, "clicks": k + 1,
                                 "mean_dice": float(dice[:, k].mean()), "ci95_low": lo,
                                 "ci95_high": hi, "median_dice": float(np.median(dice[:, k]))})

    print(f"\n{'dataset':<11} {'backbone':<14} {'policy':<9} "
          + " ".join(f"{'@' + str(k):>16}" for k in range(1, 6)))
    for key in curves:
        sel = [r for r in rows if (r["dataset"], r["backbone"], r["policy"]) == key]
        cells = " ".join(f"{r['mean_dice']:.3f} [{r['ci95_low']:.2f},{r['ci95_high']:.2f}]"
                         for r in sel)
        print(f"{key[0]:<11} {key[1]:<14} {key[2]:<9} {cells}")
    for s in skipped:
        print(f"{'all':<11} {s['backbone']:<14} {'-':<9} {s['reason']}")
    gaps = {}
    for ds_name in datasets:
        at5 = {pol: curves[(ds_name, "lab_texture", pol)][:, -1].mean() for pol in POLICIES}
        gaps[ds_name] = float((at5["gt_greedy"] - at5["random"]) / (at5["gt"] - at5["random"]))
        print(f"{ds_name}: gt_greedy closes {gaps[ds_name]:.2f} of the random-to-gt gap")
    if split_means:
        print("Dice@5 per split: " + "; ".join(
            f"{r['dataset']} {r['policy']} split {r['split']} {r['dice@5']:.3f}"
            for r in split_means))

    lib.write_csv(out / "reference_clickers.csv", rows)
    lib.write_json(out / "reference_clickers.json", {
        "rows": rows, "split_means": split_means, "greedy_gap_closed": gaps,
        "skipped": skipped, "seeds": args.seeds, "splits": args.splits, "machine": lib.machine()})
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
            ax.plot(ks, dice.mean(0), marker="o", label=f"{pol} ({bb})", color=COLOURS[pol])
            ax.fill_between(ks, [r["ci95_low"] for r in sel], [r["ci95_high"] for r in sel],
                            alpha=0.2, color=COLOURS[pol])
        n_img = next(r["images"] for r in rows if r["dataset"] == ds_name)
        where = f", held out, {args.splits} splits" if args.splits else ""
        ax.set_title(f"{ds_name} ({n_img} images{where})")
        ax.set_xlabel("clicks")
        ax.set_ylabel("Dice (mean, 95% CI)")
        ax.set_ylim(0, 1)
        ax.set_xticks(range(1, 6))
        ax.legend(loc="lower right")
    lib.save_figure(fig, out / "reference_clickers.png")
    run.record(seeds=range(args.seeds), datasets=list(datasets),
               protocol="heldout" if args.splits else "first-images")
    print(f"wrote {out}/reference_clickers.csv, .json, .png, run.json")
    kv = curves.get(("kvasir-seg", "lab_texture", "gt"))
    value = float(kv[:, -1].mean()) if kv is not None else math.nan
    print(f"kvasir_gt_clicker_dice_at_5: {value:.4f}")


if __name__ == "__main__":
    main()
