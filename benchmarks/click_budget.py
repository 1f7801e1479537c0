"""How many expert answers a learner needs: held-out Dice against the training budget.

Each learner named in ``--agents`` (any trainable agent of :mod:`bow_gym.agent_registry`, with
``NAME:field=value`` overrides) is trained from scratch for every budget in ``--budgets`` (expert
answers, one per click) on the training part of the seeded 80/20 split of each ``--dataset`` and
evaluated greedily on the held-out part, exactly as in :mod:`benchmarks.compare_policies` (same
data, seeds and evaluation; ``--eval-dataset`` adds cross-data-set transfer). Random clicking and
the ground-truth-guided clicker give the floor and the ceiling. Reported per data set, learner and
budget: Dice after 5 clicks (mean over seeds, 95% t-interval), share of "better" answers, the gap
closed between random and the ground-truth clicker, and training time.

A data set with empty ground truth (BUSI's ``normal`` images) is also reported as
``<name>[non-empty-gt]`` and ``<name>[empty-gt]`` (:mod:`benchmarks.lib.groundtruth`).

Run: ``python -m benchmarks.click_budget`` (``--help``); a quick look:
``python -m benchmarks.click_budget --dataset synthetic --budgets 100,200 --seeds 1``.
Writes ``click_budget.csv``/``.json`` (per run and summary), ``click_budget.png`` and ``run.json``
to ``benchmarks/results/click_budget/<run>/``. Last line:
``best_gap_closed: <value> (<learner> at <budget> answers, <data set>)``: the largest gap closed
(Kvasir-SEG when it was evaluated).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import lib
from bow_gym.metrics import ground_truth_label
from bow_gym.sweep import (
    SweepUnit,
    add_sweep_arguments,
    run_sweep,
    sweep_file_argv,
    sweep_options,
)

#: Sweep-file keys (``--sweep FILE``) and the flags they stand for.
SWEEP_KEYS = {"agents": "--agents", "budgets": "--budgets", "seeds": "--seeds",
              "datasets": "--dataset", "eval_datasets": "--eval-dataset"}


def _evaluation_envs(ds_name: str, cfg: dict[str, Any]) -> list[tuple[str, Any]]:
    import gymnasium as gym

    import bow_gym  # noqa: F401 - registers the envs

    return [(label, gym.make("BetterWorseSeg-v0", **kw))
            for label, kw in lib.evaluation_sets(ds_name, cfg)]


def reference_unit(ds_name: str, cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    """Random and ground-truth clicking on every evaluation set of a data set (a sweep unit)."""
    from bow_gym.agent_registry import make_agent

    runs = []
    for label, env in _evaluation_envs(ds_name, cfg):
        for name in ("random", "gt"):
            # with the ground-truth groups of a data set with empty ground truth (lib.groundtruth)
            for group, res in lib.evaluate_by_ground_truth(make_agent(name), env, seed).items():
                runs.append({"dataset": ground_truth_label(label, group), "policy": name,
                             "budget": 0, "seed": seed, "dice@5": res["dice"][-1],
                             "better_share": res["better_share"], "train_s": 0.0})
        env.close()
    return {"runs": runs}


def learner_unit(ds_name: str, cfg: dict[str, Any], seed: int, name: str, budget: int,
                 folder: str) -> dict[str, Any]:
    """One learner trained on ``budget`` answers, then evaluated greedily (a sweep unit)."""
    t0 = time.time()
    policy, _ = lib.train_learner(name, cfg["trainer"], seed, budget, Path(folder), False)
    train_s = time.time() - t0
    runs = []
    for label, env in _evaluation_envs(ds_name, cfg):
        for group, res in lib.evaluate_by_ground_truth(policy, env, seed).items():
            runs.append({"dataset": ground_truth_label(label, group), "policy": name,
                         "budget": budget, "seed": seed, "dice@5": res["dice"][-1],
                         "better_share": res["better_share"], "train_s": train_s})
        env.close()
    return {"runs": runs}


def _report(unit: SweepUnit, result: dict[str, Any], reused: bool) -> None:
    from tqdm.auto import tqdm

    for r in result["runs"]:
        if r["budget"]:
            tqdm.write(f"  seed {r['seed']} {r['dataset']:<12} {r['policy']:<22} "
                       f"{r['budget']:>6} answers  dice@5 {r['dice@5']:.3f}  better "
                       f"{r['better_share']:.2f}  train {r['train_s']:5.0f}s"
                       + ("  (reused)" if reused else ""), file=sys.stdout)


def _positive_ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise SystemExit(f"{flag}: comma-separated positive integers expected, got {text!r}")
    return sorted(set(values))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.click_budget", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    lib.add_data_arguments(p, default=("kvasir-seg",), transfer=True)
    p.add_argument("--agents", default="answer_model,reinforce_patches",
                   help=lib.learners_help("answer_model,reinforce_patches"))
    p.add_argument("--budgets", default="500,1000,2000,4000",
                   help="training budgets to try, in expert answers (default 500,1000,2000,4000)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per budget (default 3)")
    lib.add_output_arguments(p, "click_budget")
    # A unit is one learner x budget x seed of one data set (trained, then evaluated), or the
    # reference clickers of one seed; results in OUT/runs/<data set>/<learner>-<budget>-seed<s>.json.
    add_sweep_arguments(p, file_keys=list(SWEEP_KEYS))
    p.add_argument("--no-progress", action="store_true")
    argv = sweep_file_argv(lib.results.command_argv(argv), SWEEP_KEYS)
    args = p.parse_args(argv)
    options = sweep_options(p, args, progress=not args.no_progress)
    budgets = _positive_ints(args.budgets, "--budgets")
    learners = lib.learner_specs(args.agents)
    if args.seeds < 1:
        p.error(f"--seeds must be positive, got {args.seeds}")

    sources, evals = lib.data_sources(p, args)
    cfgs = lib.data_configs(sources, evals=evals)
    run = lib.start_run("click_budget", argv, args.out, args.run)
    out = run.out
    units = []
    for ds_name, cfg in cfgs.items():
        print(f"== {ds_name}: budgets {budgets}, {args.seeds} seeds, learners {', '.join(learners)}")
        settings = {"data": json.loads(json.dumps(cfg, default=str))}
        for seed in range(args.seeds):
            units.append(SweepUnit(f"runs/{ds_name}/reference-seed{seed}", reference_unit,
                                   {"ds_name": ds_name, "cfg": cfg, "seed": seed}, settings))
            for name in learners:
                for budget in budgets:
                    key = f"runs/{ds_name}/{lib.run_name(name)}-{budget}-seed{seed}"
                    units.append(SweepUnit(key, learner_unit, {
                        "ds_name": ds_name, "cfg": cfg, "seed": seed, "name": name,
                        "budget": budget, "folder": str(out / key)},
                        {**settings, "learner": name}))
    results = run_sweep(units, out, options, on_result=_report)
    runs: list[dict[str, Any]] = [row for result in results for row in result["runs"]]
    labels = list(dict.fromkeys(r["dataset"] for r in runs))

    # With the ground-truth groups of data sets that have empty ground truth (lib.groundtruth).
    labels = list(dict.fromkeys(r["dataset"] for r in runs))
    summary: list[dict[str, Any]] = []
    for ds_name in labels:
        ref = {}
        for name in ("random", "gt"):
            ref[name] = float(np.mean([r["dice@5"] for r in runs
                                       if r["dataset"] == ds_name and r["policy"] == name]))
        for name in ("random", "gt", *learners):
            for budget in ([0] if name in ("random", "gt") else budgets):
                rows = [r for r in runs if r["dataset"] == ds_name and r["policy"] == name
                        and r["budget"] == budget]
                mean, lo, hi = lib.t_interval([r["dice@5"] for r in rows])
                gap = ((mean - ref["random"]) / (ref["gt"] - ref["random"])
                       if ref["gt"] > ref["random"] else float("nan"))
                summary.append({"dataset": ds_name, "policy": name, "budget": budget,
                                "seeds": len(rows), "dice@5": mean, "dice@5_ci_low": lo,
                                "dice@5_ci_high": hi, "gap_closed": gap,
                                "better_share": float(np.mean([r["better_share"] for r in rows])),
                                "train_s_median": float(np.median([r["train_s"] for r in rows]))})

    w = max(10, *(len(n) for n in learners))
    dw = max(11, *(len(d) for d in labels))
    print(f"\n{'dataset':<{dw}} {'policy':<{w}} {'answers':>7} {'dice@5 [95% CI]':>22} "
          f"{'gap':>6} {'better':>7} {'train s':>8}")
    for s in summary:
        print(f"{s['dataset']:<{dw}} {s['policy']:<{w}} {s['budget'] or '-':>7} {s['dice@5']:>7.3f} "
              f"[{s['dice@5_ci_low']:.3f},{s['dice@5_ci_high']:.3f}] {s['gap_closed']:>6.2f} "
              f"{s['better_share']:>7.2f} {s['train_s_median']:>8.0f}")

    lib.write_csv(out / "click_budget.csv", summary)
    lib.write_csv(out / "runs.csv", runs)
    lib.write_json(out / "click_budget.json", {
        "summary": summary, "runs": runs,
        "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "machine": lib.machine()})
    _figure(out, summary, labels, learners)
    run.record(seeds=range(args.seeds), protocol=lib.protocol_name(transfer=bool(evals)),
               datasets=[src.name for src in sources + evals])
    print(f"wrote {out}/click_budget.csv, runs.csv, click_budget.json, click_budget.png, run.json")
    ds = "kvasir-seg" if "kvasir-seg" in cfgs else next(iter(cfgs))
    # Learners trained on a ground-truth reward (reward=dice_gain) are references, not results.
    learned = [s for s in summary if s["dataset"] == ds and s["budget"] > 0
               and not lib.is_reference(s["policy"])]
    if learned:
        best = max(learned, key=lambda s: s["gap_closed"])
        print(f"best_gap_closed: {best['gap_closed']:.3f} ({best['policy']} at {best['budget']} "
              f"answers, {ds})")
    else:
        print("best_gap_closed: nan")


def _figure(out, summary, datasets, learners) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 3.8), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        rows = [s for s in summary if s["dataset"] == ds]
        for name, style in (("random", ":"), ("gt", "--")):
            ref = next(s for s in rows if s["policy"] == name)
            ax.axhline(ref["dice@5"], ls=style, color="gray", label=f"{name} clicker")
        for name in learners:
            pts = sorted((s for s in rows if s["policy"] == name), key=lambda s: s["budget"])
            x = [s["budget"] for s in pts]
            ax.plot(x, [s["dice@5"] for s in pts], marker="o", label=name)
            ax.fill_between(x, [s["dice@5_ci_low"] for s in pts],
                            [s["dice@5_ci_high"] for s in pts], alpha=0.2)
        ax.set_xscale("log")
        ax.set_xticks(sorted({s["budget"] for s in rows if s["budget"] > 0}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"{ds}: held-out Dice after 5 clicks (95% CI)")
        ax.set_xlabel("training budget (expert answers)")
        ax.set_ylabel("Dice")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    lib.save_figure(fig, out / "click_budget.png")
    plt.close(fig)


if __name__ == "__main__":
    main()
