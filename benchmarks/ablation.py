"""The method's ablation, as a user would run it: does each part of the method earn its place?

Every row runs the multi-round pipeline (:mod:`bow_gym.rounds`) from one base config, on the same
data, split and seeds, changing one thing:

* ``full``: the project's best clicking agent (``--agent``, default the answer model) learning
  online, with the backbone adapted each round (q/v LoRA on DINOv2; on the weight-free
  ``lab_texture`` backbone its CPU stand-in, a feature head trained with the same triplet loss on
  the same pseudo-masks: :mod:`bow_gym.backbones.head`);
* ``full_reinforce``: the same with the method's own agent, REINFORCE with a U-Net policy;
* ``no_adapt``: ``full`` without adaptation;
* ``random``: random clicking instead of the agent, with adaptation as in ``full`` (the one
  change is the agent; the published row's adaptation setting is not stated);
* ``gt``: the ground-truth-guided clicker with adaptation (a ceiling: it reads the truth to click);
* ``supervised``: the segmenter trained on the ground truth of the labelling images (the upper
  bound: no clicks).

Levers (``--lever NAME KEY=VALUE ...``, repeatable): each adds a row ``lever_NAME``, the ``full``
row with those config fields changed, paired against ``full`` (one change at a time, the same
seeds and images), e.g. ``--lever half_trust 'label_trust={untouched=0.5}'`` or ``--lever published_start
start=prediction``.

Protocols (``--protocols``, both by default): ``heldout`` (the agent labels the seeded training
part, predictions are scored on the held-out part; groups such as video sequences are kept whole)
and ``transductive`` (the method's: every image is labelled and scored).

Reported per protocol, row and round 1..R: the segmenter's prediction Dice on the evaluation
images and the pseudo-mask Dice on the labelling images (%, mean over seeds with a 95% Student-t
interval over seeds), HD95, and the wall time per round and stage; paired differences between rows
(``full - no_adapt``, ``no_adapt - random``, ``full - random``, ``full - full_reinforce``) and
between rounds (``full``: round R - round 1): the mean difference with two 95% intervals, one over
images (bootstrap of each image's difference averaged over the seeds: every row and seed scores
the same images) and one over seeds (Student t of the per-seed mean differences); and ``full``
after round R as a share of ``supervised``. Images with empty ground truth are reported apart when
a data set has them. Writes ``ablation.json``/``.csv``, ``paired.csv``, ``ablation.png`` (Dice by
round, every row) and the method's figures 1-4 (:mod:`bow_gym.figures`, the first seed's runs of
each protocol) to ``benchmarks/results/ablation/<run>/`` with ``run.json``. Runs live in
``<out>/runs/<protocol>/<row>-s<seed>`` and are resumed: an interrupted benchmark continues.

Last lines (the held-out protocol when it ran, else the transductive one):
``full_round5_minus_round1: <points>`` (prediction Dice, round R minus round 1, R = ``--rounds``)
and ``full_round5_over_supervised: <ratio>``; ``ablation.json`` stores them under the same keys
with their intervals and ``seeds``.

Run: ``python -m benchmarks.ablation`` (Kvasir-SEG from ``$BOW_GYM_SHARED_DATA``, the CPU config
``kvasir-cpu``); any data set with ``--dataset NAME --root PATH``; ``--dinov2-checkpoint FILE``
runs DINOv2 (with LoRA) in place of the weight-free backbone; ``--help`` for the rest.
"""

from __future__ import annotations

import argparse
import csv
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

#: Rows: name -> (label, config overrides); ``None`` marks the supervised upper bound. ``AGENT``
#: stands for ``--agent``.
AGENT = "<agent>"
ROWS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "full": ("full method: {agent} + adaptation", {"agent": AGENT, "adapt": True}),
    "full_reinforce": ("full method, REINFORCE U-Net (as published) + adaptation",
                       {"agent": "reinforce", "adapt": True}),
    "no_adapt": ("without adaptation: {agent}", {"agent": AGENT, "adapt": False}),
    "random": ("random clicking + adaptation", {"agent": "random", "adapt": True}),
    "gt": ("ground-truth-guided clicker + adaptation (ceiling)", {"agent": "gt", "adapt": True}),
    "supervised": ("segmenter on the ground truth (upper bound)", None),
}
#: Prefix of the rows ``--lever`` adds: the full row with some config fields changed.
LEVER = "lever_"
#: Paired row differences reported (a - b); each lever row is also paired against ``full``.
PAIRS = (("full", "no_adapt"), ("no_adapt", "random"), ("full", "random"),
         ("full", "full_reinforce"))
PROTOCOLS = ("heldout", "transductive")
#: Sweep-file keys (``--sweep FILE``) and the flags they stand for.
SWEEP_KEYS = {"config": "--config", "seeds": "--seeds", "rounds": "--rounds", "limit": "--limit",
              "rows": "--rows", "protocols": "--protocols", "agent": "--agent"}


def lever_rows(levers: list[list[str]]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Rows of ``--lever NAME KEY=VALUE ...``: the full row with those fields changed.

    Raises:
        ValueError: a lever without a name or a setting, a name that is not a plain word or
            given twice, a setting that is not ``KEY=VALUE`` (TOML), or one that changes the
            row's agent or adaptation (those are the ablation's own rows).
    """
    from bow_gym.rounds import parse_set

    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for lever in levers:
        if len(lever) < 2:
            raise ValueError(f"expected NAME KEY=VALUE [KEY=VALUE ...], got {lever!r}")
        name, *settings = lever
        if not name.replace("_", "").isalnum():
            raise ValueError(f"a lever's name must be a word (letters, digits, _), got {name!r}")
        key = LEVER + name
        if key in out:
            raise ValueError(f"lever {name!r} given twice")
        changes = dict(parse_set(item) for item in settings)
        fixed = sorted(set(changes) & {"agent", "adapt"})
        if fixed:
            raise ValueError(f"lever {name!r} changes {fixed}, which the ablation's rows vary "
                             "(full, no_adapt, random, ...); a lever changes something else")
        # Labels are format strings ({agent}): the settings' own braces are escaped.
        text = ", ".join(f"{k}={v!r}" for k, v in changes.items()).replace("{", "{{").replace(
            "}", "}}")
        out[key] = (ROWS["full"][0] + ", with " + text,
                    {**ROWS["full"][1], **changes})  # type: ignore[dict-item]
    return out


def row_unit(config: str, overrides: dict[str, Any], run_dir: str,
             supervised: bool = False) -> dict[str, Any]:
    """One protocol x row x seed of the ablation (a :mod:`bow_gym.sweep` unit): its metric rows.

    ``supervised``: the segmenter trained on the ground truth (the upper bound); the other rows
    run the multi-round pipeline in ``run_dir`` (resumed if it holds a run of the same config).
    """
    from bow_gym.rounds import load_config, run_rounds, train_supervised

    cfg = load_config(config, **overrides)
    if supervised:
        return {"rows": train_supervised(cfg, run_dir)}
    return {"rows": run_rounds(cfg, run_dir)}


def read_per_image(run: Path, r: int, target: str = "prediction") -> dict[str, float]:
    """``image id -> Dice`` of one round's ``per_image.csv`` (without hole filling)."""
    path = run / f"round_{r:02d}" / "per_image.csv"
    out: dict[str, float] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["target"] == target and row["fill_holes"] == "0":
                out[row["image_id"]] = float(row["dice"])
    return out


def supervised_per_image(run: Path) -> dict[str, float]:
    """``image id -> Dice`` of a supervised run's ``per_image.csv``."""
    with open(run / "per_image.csv", newline="") as f:
        return {row["image_id"]: float(row["dice"]) for row in csv.DictReader(f)}


def _summary(rows: list[dict[str, Any]], r: int, target: str, key: str) -> float:
    for row in rows:
        if row.get("round") == r and row["target"] == target and not int(row["fill_holes"]):
            return float(row[key])
    return math.nan


def over_seeds(values: list[float]) -> dict[str, float]:
    """Mean and 95% Student-t interval over seeds (NaN interval with one seed)."""
    values = [v for v in values if np.isfinite(v)]
    if not values:
        return {"mean": math.nan, "low": math.nan, "high": math.nan}
    m, lo, hi = lib.t_interval(values)
    return {"mean": m, "low": lo, "high": hi}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ablation", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="kvasir-cpu",
                   help="base config, shipped name or TOML (default kvasir-cpu)")
    lib.add_data_arguments(p, default=("kvasir-seg",))
    p.add_argument("--protocols", default=",".join(PROTOCOLS),
                   help="comma-separated: heldout, transductive (default both)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds (default 0,1,2)")
    p.add_argument("--rounds", type=int, default=5, help="rounds per run (default 5)")
    p.add_argument("--limit", type=int, help="use only the first N images")
    p.add_argument("--rows", default=",".join(ROWS),
                   help="comma-separated rows, among: " + ", ".join(ROWS))
    p.add_argument("--agent", default="answer_model",
                   help="the project's best agent, of the full and no_adapt rows "
                        "(default answer_model; any name of `bow-gym list`)")
    p.add_argument("--dinov2", default="dinov2_vits14", help="DINOv2 backbone of --dinov2-checkpoint")
    p.add_argument("--dinov2-checkpoint", help="local DINOv2 weights: run every row on DINOv2 "
                                               "(adapted with LoRA) instead of lab_texture")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config field for every row (TOML value), repeatable")
    p.add_argument("--lever", action="append", nargs="+", default=[],
                   metavar=("NAME", "KEY=VALUE"),
                   help="one more row, 'lever_NAME': the full row with these config fields "
                        "changed (TOML values), paired against full; repeatable, e.g. "
                        "--lever half_trust 'label_trust={untouched=0.5}' --lever six_epochs "
                        "'segmenter_kwargs={epochs=6}'")
    lib.add_output_arguments(p, "ablation")
    # A unit is one protocol x row x seed (run folder <out>/runs/<protocol>/<row>-s<seed>):
    # sequentially, on a process pool or on Ray (docs/scaling.md); finished units are reused.
    add_sweep_arguments(p, file_keys=list(SWEEP_KEYS))
    argv = sweep_file_argv(lib.results.command_argv(argv), SWEEP_KEYS)
    args = p.parse_args(argv)
    options = sweep_options(p, args)

    from bow_gym.agent_registry import list_agents
    from bow_gym.figures import make_figures
    from bow_gym.rounds import load_config, parse_set

    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) < len(seeds):
        p.error(f"--seeds: expected distinct comma-separated integers, got {args.seeds!r}")
    protocols = [x.strip() for x in args.protocols.split(",") if x.strip()]
    if not protocols or any(x not in PROTOCOLS for x in protocols):
        p.error(f"--protocols: expected a comma-separated subset of {', '.join(PROTOCOLS)}, "
                f"got {args.protocols!r}")
    rows_wanted = [v.strip() for v in args.rows.split(",") if v.strip()]
    if not rows_wanted or any(v not in ROWS for v in rows_wanted):
        p.error(f"--rows: expected a comma-separated subset of {', '.join(ROWS)}, "
                f"got {args.rows!r}")
    rows = dict(ROWS)
    try:
        rows.update(lever_rows(args.lever))
    except ValueError as e:
        p.error(f"--lever: {e}")
    if args.lever and "full" not in rows_wanted:
        p.error("--lever: a lever is paired against the full row; add full to --rows")
    rows_wanted += [k for k in rows if k not in ROWS]
    if args.agent not in list_agents():
        p.error(f"--agent: unknown agent {args.agent!r}; registered: {', '.join(list_agents())}")
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.limit is not None and args.limit < 2:
        p.error(f"--limit must be >= 2, got {args.limit}")
    if args.dinov2_checkpoint and not Path(args.dinov2_checkpoint).is_file():
        p.error(f"--dinov2-checkpoint: no such file {args.dinov2_checkpoint!r}")
    train, _ = lib.data_sources(p, args, kwargs={})
    if len(train) != 1:
        p.error(f"--dataset: name one data set per run, got {[s.name for s in train]}")
    source = train[0]
    base: dict[str, Any] = {"dataset": source.name, "root": source.root,
                            "dataset_kwargs": dict(source.kwargs), "rounds": args.rounds}
    if args.limit is not None:
        base["limit"] = args.limit
    for item in args.set:
        try:
            key, value = parse_set(item)
        except ValueError as e:
            p.error(f"--set: {e}")
        base[key] = value
    if args.dinov2_checkpoint:
        base.update(backbone=args.dinov2, backbone_kwargs={"checkpoint": args.dinov2_checkpoint})
    try:  # every config is checked before anything runs or is written
        for protocol in protocols:
            for key in rows_wanted:
                over = rows[key][1] or {}
                load_config(args.config, **{**base, **_agent(over, args.agent),
                                            "protocol": protocol, "seed": seeds[0]})
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))

    run = lib.start_run("ablation", argv, args.out, args.run)
    out = run.out
    t0 = time.time()
    result: dict[str, Any] = {"seeds": seeds, "config": args.config, "agent": args.agent,
                              "base": base, "rounds": args.rounds, "protocols": {}}
    units = []
    # Seed by seed: a run cut short has whole seeds finished (a re-run with fewer --seeds
    # reports them from the saved units).
    for protocol in protocols:
        for seed in seeds:
            for key in rows_wanted:
                over = rows[key][1]
                name = f"{key}-s{seed}"
                overrides = {**base, **_agent(over or {}, args.agent), "protocol": protocol,
                             "seed": seed, "name": name, "progress": False}
                units.append(SweepUnit(f"runs/{protocol}/{name}", row_unit, {
                    "config": args.config, "overrides": overrides,
                    "run_dir": str(out / "runs" / protocol / name), "supervised": over is None},
                    {"config": args.config, "overrides": overrides}))
    results = run_sweep(units, out, options, on_result=lambda u, r, reused: print(
        f"{u.key}: done" + (" (reused)" if reused else "")))
    done = {u.key: r["rows"] for u, r in zip(units, results, strict=True)}
    table, paired_rows = [], []
    for protocol in protocols:
        res = _run_protocol(protocol, rows, rows_wanted, seeds, args, out / "runs" / protocol,
                            done)
        result["protocols"][protocol] = res["summary"]
        table += res["table"]
        paired_rows += res["paired"]
        firsts = {k: d[0] for k, d in res["dirs"].items() if k != "supervised"}
        if firsts:
            folder = out / protocol
            folder.mkdir(parents=True, exist_ok=True)
            make_figures(list(firsts.values()), folder, labels=list(firsts))
    headline = protocols[0] if "heldout" not in protocols else "heldout"
    summary = result["protocols"][headline]
    for key in ("full_round5_minus_round1", "full_round5_over_supervised"):
        result[key] = summary.get(key, {}).get("mean", math.nan)
        result[f"{key}_detail"] = summary.get(key, {})
    result.update(headline_protocol=headline, machine=lib.machine(),
                  seconds=round(time.time() - t0, 1))
    lib.write_json(out / "ablation.json", result)
    lib.write_csv(out / "ablation.csv", table)
    lib.write_csv(out / "paired.csv", paired_rows)
    _plot(table, protocols, args.rounds, out / "ablation.png")
    run.record(seeds=seeds, protocol=",".join(protocols), datasets=[source.name])
    _print(table, paired_rows, protocols, args.rounds)
    print("original work (DINOv2 + HSNet, polyps, round 3, transductive): full 80.45, without "
          "LoRA 76.51, random clicking 68.87 -- not comparable (other backbone and segmenter)")
    print(f"wrote {out}/: ablation.json, ablation.csv, paired.csv, ablation.png, figures, run.json")
    print(f"({headline} protocol, rounds {args.rounds} vs 1, seeds {seeds})")
    print(f"full_round5_minus_round1: {result['full_round5_minus_round1']:.2f}")
    print(f"full_round5_over_supervised: {result['full_round5_over_supervised']:.3f}")


def _agent(over: dict[str, Any], agent: str) -> dict[str, Any]:
    return {k: (agent if v == AGENT else v) for k, v in over.items()}


def _run_protocol(protocol: str, rows: dict[str, tuple[str, dict[str, Any] | None]],
                  rows_wanted: list[str], seeds: list[int],
                  args: argparse.Namespace, runs: Path,
                  done: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One protocol's table and paired differences from its units' metric rows (``done``)."""
    dirs: dict[str, list[Path]] = {}
    metrics: dict[str, list[list[dict[str, Any]]]] = {}
    for key in rows_wanted:
        for seed in seeds:
            dirs.setdefault(key, []).append(runs / f"{key}-s{seed}")
            metrics.setdefault(key, []).append(done[f"runs/{protocol}/{key}-s{seed}"])

    rounds = args.rounds
    table: list[dict[str, Any]] = []
    for key in rows_wanted:
        label = rows[key][0].format(agent=args.agent)
        per_seed = metrics[key]
        if rows[key][1] is None:
            dice = over_seeds([float(r[0]["dice_mean"]) * 100 for r in per_seed])
            hd = over_seeds([float(r[0]["hd95_mean"]) for r in per_seed])
            secs = [float(r[0]["seconds"]) for r in per_seed]
            table.append({"protocol": protocol, "row": key, "label": label, "round": rounds,
                          "prediction": dice["mean"], "prediction_low": dice["low"],
                          "prediction_high": dice["high"], "hd95": hd["mean"],
                          "seconds": float(np.median(secs)), "seeds": len(per_seed)})
            continue
        for r in range(1, rounds + 1):
            entry: dict[str, Any] = {"protocol": protocol, "row": key, "label": label,
                                     "round": r, "seeds": len(per_seed)}
            for target in ("prediction", "pseudo", "initial"):
                s = over_seeds([_summary(x, r, target, "dice_mean") * 100 for x in per_seed])
                entry.update({target: s["mean"], f"{target}_low": s["low"],
                              f"{target}_high": s["high"]})
                # a data set with empty ground truth (BUSI normal): the lesion images and the
                # empty ones apart too, as columns "prediction[non-empty-gt]", ...
                for _group, name in lib.rounds_targets(per_seed[0], target)[1:]:
                    entry[name] = over_seeds([_summary(x, r, name, "dice_mean") * 100
                                              for x in per_seed])["mean"]
            entry["hd95"] = over_seeds([_summary(x, r, "prediction", "hd95_mean")
                                        for x in per_seed])["mean"]
            entry["better_share"] = over_seeds([_summary(x, r, "prediction", "better_share")
                                                for x in per_seed])["mean"]
            for stage in ("label", "adapt", "train", "predict", "evaluate", "total"):
                vals = [_summary(x, r, "prediction", f"seconds_{stage}") for x in per_seed]
                vals = [v for v in vals if np.isfinite(v)]
                entry[f"seconds_{stage}"] = float(np.median(vals)) if vals else math.nan
            table.append(entry)

    def images(key: str, r: int) -> list[dict[str, float]]:
        if rows[key][1] is None:
            return [supervised_per_image(d) for d in dirs[key]]
        return [read_per_image(d, r) for d in dirs[key]]

    paired_rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"table": [t for t in table if t["protocol"] == protocol]}
    for r in range(1, rounds + 1):
        levers = [(k, "full") for k in rows_wanted if k.startswith(LEVER)]
        for a, b in (*PAIRS, *levers):
            if a in dirs and b in dirs:
                d = lib.paired(images(a, r), images(b, r), seed=r)
                paired_rows.append({"protocol": protocol, "round": r, "a": a, "b": b, **d})
    if "full" in dirs:
        d = lib.paired(images("full", rounds), images("full", 1))
        paired_rows.append({"protocol": protocol, "round": rounds, "a": f"full r{rounds}",
                            "b": "full r1", **d})
        summary["full_round5_minus_round1"] = d
        if "supervised" in dirs:
            full = np.array([np.mean(list(x.values())) for x in images("full", rounds)])
            sup = np.array([np.mean(list(x.values())) for x in images("supervised", rounds)])
            ratio = full / sup
            _, lo, hi = lib.t_interval(list(ratio))
            summary["full_round5_over_supervised"] = {
                "mean": float(full.mean() / sup.mean()), "seeds_low": lo, "seeds_high": hi,
                "full": float(full.mean() * 100), "supervised": float(sup.mean() * 100)}
    summary["paired"] = [x for x in paired_rows if x["protocol"] == protocol]
    return {"table": table, "paired": paired_rows, "summary": summary, "dirs": dirs}


def _print(table: list[dict[str, Any]], paired_rows: list[dict[str, Any]],
           protocols: list[str], rounds: int) -> None:
    for protocol in protocols:
        print(f"\n{protocol}: prediction Dice (%) on the evaluation images by round, mean over "
              "seeds [95% t-interval]; pseudo-mask Dice in round R; seconds per round")
        head = " ".join(f"{'round ' + str(r):>20}" for r in range(1, rounds + 1))
        print(f"{'row':<16} {head} {'pseudo R':>9} {'s/round':>8}")
        for key in dict.fromkeys(t["row"] for t in table if t["protocol"] == protocol):
            rows = [t for t in table if t["protocol"] == protocol and t["row"] == key]
            if len(rows) == 1 and "pseudo" not in rows[0]:
                t = rows[0]
                cell = f"{t['prediction']:6.2f} [{t['prediction_low']:5.1f},{t['prediction_high']:5.1f}]"
                print(f"{key:<16} {cell:>20} (upper bound, {t['seconds']:.0f} s)")
                continue
            cells = " ".join(f"{t['prediction']:6.2f} [{t['prediction_low']:5.1f},"
                             f"{t['prediction_high']:5.1f}]" for t in rows)
            print(f"{key:<16} {cells} {rows[-1]['pseudo']:9.2f} {rows[-1]['seconds_total']:8.0f}")
        print(f"paired differences ({protocol}), Dice points: mean [95% CI over images] "
              "[95% CI over seeds]")
        for x in paired_rows:
            if x["protocol"] == protocol and (x["round"] in (1, 3, rounds)):
                print(f"  round {x['round']}: {x['a']} - {x['b']}: {x['mean']:+.2f} "
                      f"[{x['images_low']:+.2f}, {x['images_high']:+.2f}] "
                      f"[{x['seeds_low']:+.2f}, {x['seeds_high']:+.2f}]")


def _plot(table: list[dict[str, Any]], protocols: list[str], rounds: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(protocols), figsize=(6.5 * len(protocols), 4.5),
                             squeeze=False, sharey=True)
    for ax, protocol in zip(axes[0], protocols, strict=True):
        keys = list(dict.fromkeys(t["row"] for t in table if t["protocol"] == protocol))
        for i, key in enumerate(keys):
            rows = [t for t in table if t["protocol"] == protocol and t["row"] == key]
            if len(rows) == 1 and "pseudo" not in rows[0]:
                t = rows[0]
                ax.axhspan(t["prediction_low"], t["prediction_high"], color="0.85", zorder=0)
                ax.axhline(t["prediction"], color="0.4", ls="--", label=t["label"])
                continue
            r = [t["round"] for t in rows]
            m = np.array([t["prediction"] for t in rows])
            lo = np.array([t["prediction_low"] for t in rows])
            hi = np.array([t["prediction_high"] for t in rows])
            ax.plot(r, m, "o-", color=f"C{i}", label=rows[0]["label"])
            if np.isfinite(lo).all():
                ax.fill_between(r, lo, hi, color=f"C{i}", alpha=0.15)
        ax.set_xticks(range(1, rounds + 1))
        ax.set_xlabel("round")
        ax.set_title(f"{protocol}: segmenter prediction Dice (95% CI over seeds)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("Dice (%)")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    lib.save_figure(fig, path)


if __name__ == "__main__":
    main()
