"""The method's ablation table: full vs no LoRA vs random clicking, with a ceiling and an upper bound.

Every variant runs the multi-round pipeline (:mod:`bow_gym.rounds`) from the same config, data,
split and seeds, changing one thing:

* ``full``: the REINFORCE agent learning online, with LoRA adaptation of DINOv2 each round;
* ``no_lora``: the same without adaptation;
* ``random``: random clicking instead of the agent (no LoRA);
* ``gt``: the ground-truth-guided clicker (a ceiling: it reads the ground truth to click);
* ``*_top50``: the same with only the best half of the pseudo-masks kept for the segmenter, by
  the ``auto`` quality score (the share of "better" answers in round 1, agreement with the
  previous segmenter later; :mod:`bow_gym.pseudo_labels`);
* ``answer_model_lab``: the model-based answer-model agent (:mod:`agents.answer_model`) instead of
  REINFORCE, learning online in the same way;
* ``supervised``: the segmenter trained on the ground-truth masks of the labelling images (the
  upper bound; no clicks).

With the weight-free ``lab_texture`` backbone (the CPU default) there is nothing to adapt, so the
DINOv2 rows print "not run" and the table gains ``lab_texture`` rows: REINFORCE (the method
without LoRA, on the weight-free backbone), random clicking, and the ceiling. ``--dinov2-checkpoint
FILE`` (weights of ``--dinov2``, default dinov2_vits14) runs the DINOv2 rows instead.

Reported: segmenter-prediction Dice on the evaluation images after rounds 3 and 5 (in %), mean over
seeds with a 95% Student-t interval over seeds (with one seed: a bootstrap interval over images),
the pseudo-mask Dice, HD95, and wall time per round. Writes ``ablation.csv``/``.json``, the
figures of :mod:`bow_gym.figures` overlaid for the first seed, ``ablation.png`` and ``run.json``
to ``benchmarks/results/ablation/<run>/``. Runs live in ``<out>/runs/<variant>-s<seed>`` and are
resumed, so an interrupted benchmark continues.

Last line: ``full_minus_random_round3: <value>`` (Dice points, prediction, round 3): the DINOv2
``full`` row minus its ``random`` row when they ran, else lab_texture REINFORCE minus lab_texture
random clicking (the line before it says which).

Run: ``python -m benchmarks.ablation`` (Kvasir-SEG from ``$BOW_GYM_SHARED_DATA``, CPU defaults);
``--help`` for seeds, limits and protocols.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import lib
from bow_gym.sweep import (
    SweepUnit,
    add_sweep_arguments,
    run_sweep,
    sweep_file_argv,
    sweep_options,
)

#: variant -> (label, config overrides); DINOv2 variants need weights.
DINO_VARIANTS = {
    "full": ("full method (DINOv2 + LoRA)", {"agent": "reinforce", "lora": True}),
    "no_lora": ("without LoRA (DINOv2)", {"agent": "reinforce", "lora": False}),
    "random": ("random clicking (DINOv2)", {"agent": "random", "lora": False}),
}
CPU_VARIANTS = {
    "reinforce_lab": ("REINFORCE, lab_texture (no LoRA: no weights)", {"agent": "reinforce"}),
    "random_lab": ("random clicking, lab_texture", {"agent": "random"}),
    "gt_lab": ("GT-guided clicker, lab_texture (ceiling)", {"agent": "gt"}),
    "reinforce_lab_top50": ("REINFORCE, lab_texture, top-50% pseudo-masks (quality auto)",
                            {"agent": "reinforce", "top_k": 0.5, "quality": "auto"}),
    "random_lab_top50": ("random clicking, lab_texture, top-50% pseudo-masks (quality auto)",
                         {"agent": "random", "top_k": 0.5, "quality": "auto"}),
    "reinforce_patches_lab": ("REINFORCE, patch policy, lab_texture",
                              {"agent": "reinforce", "agent_kwargs": {"policy": "patches"}}),
    "answer_model_lab": ("answer-model agent, lab_texture (learns to predict the answers)",
                         {"agent": "answer_model"}),
}
#: Every row --variants may name.
VARIANT_NAMES = [*DINO_VARIANTS, *CPU_VARIANTS, "supervised"]
#: Sweep-file keys (``--sweep FILE``) and the flags they stand for.
SWEEP_KEYS = {"config": "--config", "seeds": "--seeds", "rounds": "--rounds", "limit": "--limit",
              "variants": "--variants", "protocol": "--protocol"}


def variant_unit(config: str, overrides: dict[str, Any], run_dir: str,
                 supervised: bool = False) -> dict[str, Any]:
    """One variant x seed of the ablation (a :mod:`bow_gym.sweep` unit): its metric rows.

    ``supervised``: the segmenter is trained on the ground truth (the upper bound); the others
    run the multi-round pipeline in ``run_dir`` (resumed if it holds a run of the same config).
    """
    from bow_gym.rounds import load_config, run_rounds, train_supervised

    cfg = load_config(config, **overrides)
    if supervised:
        rows = train_supervised(cfg, run_dir)
        return {"rows": [{**r, "round": rr, "target": "prediction"} for r in rows
                         for rr in (3, 5)]}
    return {"rows": run_rounds(cfg, run_dir)}


def ablation_units(config: str, base: dict[str, Any], variants: dict[str, tuple], wanted: list[str],
                   seeds: list[int], out: Path) -> list[SweepUnit]:
    """The sweep units of the rows that run: one per variant and seed, result beside its run
    folder (``<out>/runs/<variant>-s<seed>.json``)."""
    units = []
    for key in wanted:
        over = variants[key][1]
        if over is None:  # "not run" rows
            continue
        for seed in seeds:
            name = f"{key}-s{seed}"
            overrides = {**base, **over, "seed": seed, "name": name, "progress": False}
            units.append(SweepUnit(f"runs/{name}", variant_unit, {
                "config": config, "overrides": overrides, "run_dir": str(out / "runs" / name),
                "supervised": key == "supervised"},
                {"config": config, "overrides": overrides}))
    return units


def _summary(rows: list[dict[str, Any]], r: int, target: str, key: str) -> float:
    for row in rows:
        if row["round"] == r and row["target"] == target and not row["fill_holes"]:
            return float(row[key])
    return math.nan


def aggregate(per_seed: list[list[dict[str, Any]]], r: int, target: str = "prediction"
              ) -> dict[str, float]:
    """Mean and 95% interval (over seeds, or over images with one seed) of Dice in %."""
    means = [_summary(rows, r, target, "dice_mean") * 100 for rows in per_seed]
    means = [m for m in means if np.isfinite(m)]
    if not means:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "ci": "none"}
    if len(means) == 1:
        rows = per_seed[0]
        return {"mean": means[0], "low": _summary(rows, r, target, "dice_ci_low") * 100,
                "high": _summary(rows, r, target, "dice_ci_high") * 100, "ci": "images"}
    m, lo, hi = lib.t_interval(means)
    return {"mean": m, "low": lo, "high": hi, "ci": "seeds"}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ablation", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="kvasir-cpu", help="base config (shipped name or TOML)")
    p.add_argument("--root", help="data folder (default: the config's)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds")
    p.add_argument("--rounds", type=int, default=5, help="rounds per run (default 5)")
    p.add_argument("--limit", type=int, help="use only the first N images")
    p.add_argument("--protocol", choices=["heldout", "transductive"], help="default: config's")
    p.add_argument("--variants", default="full,no_lora,random,reinforce_lab,random_lab,gt_lab,"
                   "answer_model_lab,supervised",
                   help="comma-separated rows to run, among: " + ", ".join(
                       VARIANT_NAMES))
    p.add_argument("--dinov2", default="dinov2_vits14", help="DINOv2 backbone of the DINOv2 rows")
    p.add_argument("--dinov2-checkpoint", help="local weights file: runs the DINOv2 rows")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config field for every variant (TOML value), repeatable")
    lib.add_output_arguments(p, "ablation")
    add_sweep_arguments(p, file_keys=list(SWEEP_KEYS))
    argv = sweep_file_argv(lib.results.command_argv(argv), SWEEP_KEYS)
    args = p.parse_args(argv)
    options = sweep_options(p, args)

    from bow_gym.figures import make_figures
    from bow_gym.rounds import load_config, parse_set

    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not wanted or any(v not in VARIANT_NAMES for v in wanted):
        p.error(f"--variants: expected a comma-separated subset of {', '.join(VARIANT_NAMES)}, "
                f"got {args.variants!r}")
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    extra: dict[str, Any] = {}
    for item in args.set:
        try:
            key, value = parse_set(item)
        except ValueError as e:
            p.error(str(e))
        extra[key] = value
    base: dict[str, Any] = {k: v for k, v in {"rounds": args.rounds, "limit": args.limit,
                                              "protocol": args.protocol}.items() if v is not None}
    base.update(extra)
    dataset = load_config(args.config).dataset
    if args.root:
        base["root"] = args.root
    elif dataset in lib.DEFAULT_FOLDERS and (data := lib.data_folder(p, None)):
        base["root"] = str(data / lib.DEFAULT_FOLDERS[dataset])

    variants: dict[str, tuple[str, dict[str, Any] | None, str]] = {}
    for key, (label, over) in DINO_VARIANTS.items():
        if args.dinov2_checkpoint:
            variants[key] = (label, {**over, "backbone": args.dinov2, "backbone_kwargs": {
                "checkpoint": args.dinov2_checkpoint}}, "")
        else:
            variants[key] = (label, None, "not run: no DINOv2 weights here (--dinov2-checkpoint)")
    for key, (label, over) in CPU_VARIANTS.items():
        variants[key] = (label, {**over, "backbone": "lab_texture", "lora": False}, "")
    variants["supervised"] = ("supervised segmenter (upper bound)", {}, "")
    run = lib.start_run("ablation", argv, args.out, args.run)
    out = run.out

    table, per_variant, run_dirs, t0 = [], {}, {}, time.time()
    # Every variant x seed is a unit of one sweep (sequentially, a process pool or Ray:
    # --jobs, --backend, --ray-address); finished units are reused on a re-run.
    units = ablation_units(args.config, base, variants, wanted, seeds, out)
    done = {unit.key: result["rows"] for unit, result in zip(
        units, run_sweep(units, out, options, on_result=lambda u, r, reused: print(
            f"{u.key}: done" + (" (reused)" if reused else ""))), strict=True)}
    for key in wanted:
        label, over, why = variants[key]
        if over is None:
            table.append({"variant": key, "label": label, "note": why})
            print(f"{label}: {why}")
            continue
        results, seconds = [], []
        for seed in seeds:
            rows = done[f"runs/{key}-s{seed}"]
            if key != "supervised":
                run_dirs.setdefault(key, out / "runs" / f"{key}-s{seed}")
                seconds += [float(r["seconds_total"]) for r in rows
                            if r["target"] == "prediction" and not r["fill_holes"]]
            results.append(rows)
        per_variant[key] = results
        row: dict[str, Any] = {"variant": key, "label": label, "seeds": len(seeds)}
        for r in (1, 3, 5):
            for target in ("prediction", "pseudo"):
                if key == "supervised" and (target == "pseudo" or r == 1):
                    continue
                a = aggregate(results, r, target)
                row.update({f"{target}_r{r}": a["mean"], f"{target}_r{r}_low": a["low"],
                            f"{target}_r{r}_high": a["high"]})
                row["ci_over"] = a["ci"]
        hd95 = [h for x in results if np.isfinite(h := _summary(x, 5, "prediction", "hd95_mean"))]
        row["hd95_r5"] = float(np.mean(hd95)) if hd95 else math.nan  # nan with --rounds < 5
        row["seconds_per_round"] = float(np.median(seconds)) if seconds else math.nan
        table.append(row)

    print(f"\nDice (%) of segmenter predictions on the evaluation images; mean [95% CI over "
          f"seeds {seeds}]")
    print(f"{'variant':<48} {'round 3':>22} {'round 5':>22} {'pseudo r5':>10} {'s/round':>8}")
    for row in table:
        if "note" in row:
            print(f"{row['label']:<48} {row['note']}")
            continue
        cells = [f"{row[f'prediction_r{r}']:6.2f} [{row[f'prediction_r{r}_low']:5.1f},"
                 f"{row[f'prediction_r{r}_high']:5.1f}]" for r in (3, 5)]
        print(f"{row['label']:<48} {cells[0]:>22} {cells[1]:>22} "
              f"{row.get('pseudo_r5', math.nan):>10.2f} {row['seconds_per_round']:>8.0f}")
    print("original work, polyps, round 3: full 80.45, without LoRA 76.51, random 68.87")

    result = {"table": table, "seeds": seeds, "config": args.config, "base": base,
              "machine": lib.machine(), "seconds": time.time() - t0}
    lib.write_json(out / "ablation.json", result)
    lib.write_csv(out / "ablation.csv", table)
    if run_dirs:
        figs = make_figures(list(run_dirs.values()), out, labels=list(run_dirs))
        print("figures: " + ", ".join(str(f) for f in figs))
        _plot(table, out / "ablation.png")

    got = {row["variant"]: row for row in table if "note" not in row}
    if "full" in got and "random" in got:
        pair, which = ("full", "random"), "DINOv2 full minus DINOv2 random clicking"
    else:
        pair, which = ("reinforce_lab", "random_lab"), (
            "lab_texture REINFORCE (the method without LoRA) minus lab_texture random clicking")
    a, b = (got.get(k, {}).get("prediction_r3", math.nan) for k in pair)
    config = load_config(args.config, **base)
    run.record(seeds=seeds, protocol=config.protocol,
               datasets=[config.dataset, *(e["dataset"] for e in config.extra_datasets)])
    print(f"difference in round-3 prediction Dice (points): {which}")
    print(f"full_minus_random_round3: {a - b:.2f}")


def _plot(table: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table if "note" not in r]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.5))
    for i, row in enumerate(rows):
        for j, r in enumerate((3, 5)):
            m = row.get(f"prediction_r{r}", math.nan)
            lo, hi = row.get(f"prediction_r{r}_low", m), row.get(f"prediction_r{r}_high", m)
            ax.errorbar(m, i + (j - 0.5) * 0.3, xerr=[[m - lo], [hi - m]], fmt="os"[j],
                        color=f"C{j}", label=f"round {r}" if i == 0 else None, capsize=3)
    ax.set_yticks(range(len(rows)), [r["label"] for r in rows])
    ax.set_xlabel("prediction Dice (%) on the evaluation images, 95% CI")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Ablation (python -m benchmarks.ablation)")
    lib.save_figure(fig, path)


if __name__ == "__main__":
    main()
