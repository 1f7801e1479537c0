"""Train and compare click policies on the same data, seeds and budget of expert answers.

For each data set (``--dataset``, repeatable, any registered one; by default the embedded
synthetic set and Kvasir-SEG when the real data is present) and each seed, every learning agent
named in ``--agents`` (any trainable agent of :mod:`bow_gym.agent_registry`: REINFORCE, SB3's
PPO/A2C/DQN, the model-based answer-model agent of :mod:`agents.answer_model`, and their
registered variants such as ``reinforce_patches``, ``dqn_features``, ``answer_model_no_offset``,
so an ablation is one command) is trained on ``--answers`` expert answers on the training part
of a seeded 80/20 split, from better/worse answers alone, then evaluated greedily on the held-out
part (``--transductive``: the method's protocol, training and evaluating on all images). Random
clicking and the ground-truth-guided clicker are evaluated on the same images. ``--splits N``
repeats everything on N seeded splits (how much the held-out figure owes to the split);
``--validation`` is for choosing settings: it trains on 80% of the training part and evaluates on
the other 20%, never on the held-out images. ``--eval-dataset NAME`` also evaluates the agents
trained on each data set on every image of another one (cross-data-set transfer: ``--dataset
kvasir-seg --eval-dataset cvc-clinicdb`` is the method's polyp setting); those rows are labelled
``kvasir-seg->cvc-clinicdb``.

Reported per data set and policy (mean over seeds, 95% t-interval over seeds):

* Dice after k = 1..5 clicks (each episode starts from an empty mask);
* share of "better" answers during evaluation;
* NoC@0.80/0.85/0.90: clicks until Dice first reaches the level, counting 6 when 5 clicks do not
  reach it (interactive segmentation's NoC with a budget of 5), and the share of images that reach it;
* learning curves (reward against training answers) and clicks-to-90%: the first answer count at
  which the smoothed training reward has covered 90% of the way from its first to its final level
  (final = mean of the last 10% of training).

Images with empty ground truth (BUSI's ``normal`` images) are reported apart: such a data set
also gets rows and figure panels ``<name>[non-empty-gt]`` and ``<name>[empty-gt]``
(:mod:`benchmarks.lib.groundtruth`).

Last line: ``gap_closed: <value>``: the share of the gap in Dice after 5 clicks between random
clicking and the ground-truth-guided clicker that the best learned agent closes on held-out
Kvasir-SEG images (on the first other data set when Kvasir-SEG is absent, and the line says so).

Writes to ``benchmarks/results/compare_policies/<run>/`` (``--run``, ``--out``): ``summary.csv``,
``per_seed.csv``, ``compare_policies.json``, figures and ``run.json``.

Run: ``python -m benchmarks.compare_policies`` (``--help``); a quick look:
``python -m benchmarks.compare_policies --seeds 1 --answers 400 --dataset synthetic``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import lib
from bow_gym.metrics import ground_truth_label
from bow_gym.sweep import (
    SweepOptions,
    SweepUnit,
    add_sweep_arguments,
    run_sweep,
    sweep_file_argv,
    sweep_options,
)

#: Sweep-file keys (``--sweep FILE``) and the flags they stand for.
SWEEP_KEYS = {"agents": "--agents", "seeds": "--seeds", "splits": "--splits",
              "datasets": "--dataset", "eval_datasets": "--eval-dataset", "answers": "--answers",
              "transductive": "--transductive", "validation": "--validation"}


def gaps_closed(summary: list[dict[str, Any]], learners: list[str]) -> dict[str, tuple[str, float]]:
    """Per data set, the best learner by mean Dice@5 and the share of the random-to-gt gap it closes.

    Data sets where the ground-truth clicker does not beat random (no gap) are left out.
    """
    out: dict[str, tuple[str, float]] = {}
    for ds in dict.fromkeys(s["dataset"] for s in summary):
        by = {s["policy"]: s["dice@5"] for s in summary if s["dataset"] == ds}
        if not learners or by["gt"] <= by["random"]:
            continue
        best = max(learners, key=lambda a: by[a])
        out[ds] = (best, (by[best] - by["random"]) / (by["gt"] - by["random"]))
    return out


def gaps_closed_per_split(per_seed: list[dict[str, Any]], best: dict[str, str],
                          splits: int) -> dict[str, list[float]]:
    """Per data set, the share of the random-to-gt gap that its overall best agent ``best[ds]``
    closes on each split (mean Dice@5 over that split's seeds; NaN where gt does not beat random).

    The overall best agent's, not each split's own best: with several learners those can differ,
    and the values are reported beside one agent's name.
    """
    out: dict[str, list[float]] = {}
    for ds, agent in best.items():
        out[ds] = []
        for split in range(splits):
            rows = [r for r in per_seed if r["dataset"] == ds and r["split"] == split]
            by = {name: float(np.mean([r["dice@5"] for r in rows if r["policy"] == name]))
                  for name in ("random", "gt", agent)}
            span = by["gt"] - by["random"]
            out[ds].append((by[agent] - by["random"]) / span if span > 0 else float("nan"))
    return out


@dataclasses.dataclass(frozen=True)
class Unit:
    """One run of the benchmark: a data set, a split and a seed (every learner, then evaluation)."""

    dataset: str
    cfg: dict
    split: int
    seed: int

    def result_path(self, out: Path) -> Path:
        """Where the run's rows and learning curves are saved (what ``--resume`` reads)."""
        return out / "runs" / self.dataset / f"unit-split{self.split}-seed{self.seed}.json"


def run_unit(unit: Unit, learners: list[str], answers: int, out: Path, progress: bool
             ) -> tuple[list[dict[str, Any]], dict[str, dict]]:
    """Train every learner of ``unit``, evaluate them with random and gt on its test part and on
    each transfer data set: (rows, histories)."""
    import gymnasium as gym

    import bow_gym  # noqa: F401
    from bow_gym.agent_registry import make_agent

    policies: list[tuple[str, Any, float]] = [("random", make_agent("random"), 0.0),
                                              ("gt", make_agent("gt"), 0.0)]
    histories: dict[str, dict] = {}
    for name in learners:
        run = f"{lib.run_name(name)}-seed{unit.seed}" + (f"-split{unit.split}" if unit.split else "")
        t0 = time.time()
        policy, histories[name] = lib.train_learner(name, unit.cfg["trainer"], unit.seed, answers,
                                                out / "runs" / unit.dataset / run, progress)
        policies.append((name, policy, time.time() - t0))
    rows = []
    for label, env_kwargs in lib.evaluation_sets(unit.dataset, unit.cfg):
        env = gym.make("BetterWorseSeg-v0", **env_kwargs)
        for name, policy, train_s in policies:
            # A data set with empty ground truth also gets rows without and with only those
            # images (lib.groundtruth): labels busi, busi[non-empty-gt], busi[empty-gt].
            for group, res in lib.evaluate_by_ground_truth(policy, env, unit.seed).items():
                row = {"dataset": ground_truth_label(label, group), "policy": name,
                       "split": unit.split, "seed": unit.seed, "train_s": train_s,
                       **{f"dice@{k + 1}": v for k, v in enumerate(res.pop("dice"))}, **res}
                if name in learners:
                    row["clicks_to_90"] = lib.clicks_to_90(histories[name]["clicks"],
                                                           histories[name]["reward"])
                rows.append(row)
        env.close()
    return rows, histories


def unit_result(unit: Unit, learners: list[str], answers: int, out: str) -> dict[str, Any]:
    """One unit as a sweep unit (:mod:`bow_gym.sweep`): ``{"rows": ..., "histories": ...}``."""
    rows, histories = run_unit(unit, learners, answers, Path(out), progress=False)
    return {"rows": rows, "histories": histories}


def sweep_units(units: list[Unit], learners: list[str], answers: int, out: Path,
                fingerprint: dict) -> list[SweepUnit]:
    """The sweep units of ``units``: results at :meth:`Unit.result_path`, reused only with the
    same ``fingerprint``."""
    return [SweepUnit(key=unit.result_path(Path()).with_suffix("").as_posix(), fn=unit_result,
                      kwargs={"unit": unit, "learners": list(learners), "answers": answers,
                              "out": str(out)}, settings=fingerprint) for unit in units]


def _report(rows: list[dict[str, Any]], reused: bool = False) -> None:
    from tqdm.auto import tqdm

    for row in rows:
        # tqdm.write: above the sweep's bar, not through it
        tqdm.write(f"  {row['dataset']} split {row['split']} seed {row['seed']} "
                   f"{row['policy']:<22} dice@5 {row['dice@5']:.3f}  better "
                   f"{row['better_share']:.2f}  train {row['train_s']:5.0f}s"
                   + ("  (reused)" if reused else ""), file=sys.stdout)
    sys.stdout.flush()  # a long run's log file shows each run when it ends, not when buffers fill


def run_units(units: list[Unit], learners: list[str], answers: int, out: Path, fingerprint: dict,
              jobs: int = 1, resume: bool = False, progress: bool = True,
              threads: int | None = None, options: SweepOptions | None = None):
    """(rows, histories) of every unit, in the order of ``units``, scheduled by
    :func:`bow_gym.sweep.run_sweep`.

    ``options`` says how (sequentially, a process pool, Ray; retries); without it, ``jobs > 1``
    runs units in that many spawned processes with ``threads`` torch threads each (default
    ``cpu_count // jobs``). Each unit's result is saved to :meth:`Unit.result_path` as it ends;
    ``resume`` reuses those saved with the same ``fingerprint``.
    """
    if options is None:
        options = SweepOptions(jobs=jobs, threads=threads, resume=resume, progress=progress)
    results = run_sweep(sweep_units(units, learners, answers, out, fingerprint), out, options,
                        on_result=lambda _, result, reused: _report(result["rows"], reused))
    return [(r["rows"], r["histories"]) for r in results]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare_policies", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    lib.add_data_arguments(p, transfer=True)
    p.add_argument("--agents", default="reinforce,ppo,dqn,answer_model",
                   help=lib.learners_help("reinforce,ppo,dqn,answer_model"))
    p.add_argument("--seeds", type=int, default=3,
                   help="training and evaluation seeds 0..N-1 per split (default 3)")
    lib.add_answers_argument(p)
    p.add_argument("--transductive", action="store_true",
                   help="train and evaluate on all images (the method's protocol)")
    p.add_argument("--validation", action="store_true",
                   help="model selection: train on 80%% of the training part and evaluate on the "
                        "other 20%% (the held-out test images are not touched)")
    p.add_argument("--splits", type=int, default=1,
                   help="seeded 80/20 splits to repeat everything on (split seeds 0..N-1; "
                        "default 1): intervals then cover splits x seeds, and the gap closed is "
                        "also reported per split")
    lib.add_output_arguments(p, "compare_policies")
    # A unit is one split x seed of one data set (every learner, then evaluation); its result is
    # OUT/runs/<data set>/unit-split<k>-seed<s>.json, reused when --agents, --answers and the
    # protocol are the same.
    add_sweep_arguments(p, file_keys=list(SWEEP_KEYS))
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--replot", metavar="DIR",
                   help="only redraw the figures of an earlier run from DIR/compare_policies.json")
    argv = sweep_file_argv(lib.results.command_argv(argv), SWEEP_KEYS)
    args = p.parse_args(argv)
    if args.splits < 1:
        p.error(f"--splits must be at least 1, got {args.splits}")
    if args.transductive and args.validation:
        p.error("--transductive and --validation exclude each other")
    if args.transductive and args.splits > 1:
        p.error("--splits > 1 needs held-out evaluation: --transductive uses every image")
    if args.seeds < 1 or args.answers < 1:
        p.error("--seeds and --answers must be positive")
    options = sweep_options(p, args, progress=not args.no_progress)

    if args.replot:
        _replot(Path(args.replot))
        return

    learners = lib.learner_specs(args.agents)
    sources, evals = lib.data_sources(p, args)
    if evals and args.validation:
        p.error("--eval-dataset evaluates on other data sets' images: not with --validation "
                "(model selection never looks at test images)")
    run = lib.start_run("compare_policies", argv, args.out, args.run)
    out = run.out
    units = []
    datasets: list[str] = []
    for split in range(args.splits):
        cfgs = lib.data_configs(sources, args.transductive, split_seed=split,
                            validation=args.validation, evals=evals)
        datasets = [label for name, cfg in cfgs.items() for label, _ in lib.evaluation_sets(name, cfg)]
        units += [Unit(ds_name, cfg, split, seed) for ds_name, cfg in cfgs.items()
                  for seed in range(args.seeds)]
    where = ("all" if args.transductive else "validation" if args.validation else "held-out")
    print(f"== {', '.join(datasets)}: {len(units)} runs (data sets x "
          f"{args.splits} splits x {args.seeds} seeds), evaluated on {where} images, "
          f"{args.answers} training answers, {options.resolved_backend} "
          f"({options.ray_address or f'{args.jobs} at a time'})")
    fingerprint = {"agents": args.agents, "answers": args.answers,
                   "transductive": args.transductive, "validation": args.validation,
                   "eval_datasets": [e.name for e in evals]}
    results = run_units(units, learners, args.answers, out, fingerprint, options=options)
    per_seed: list[dict[str, Any]] = []
    curves: dict[tuple[str, str], list[dict]] = {}
    for unit, (rows, histories) in zip(units, results, strict=True):
        per_seed += rows
        for name in learners:
            curves.setdefault((unit.dataset, name), []).append(histories[name])
    # Every label evaluated, with the ground-truth groups of data sets that have empty ground
    # truth right after their own label.
    datasets = list(dict.fromkeys(r["dataset"] for r in per_seed))

    summary: list[dict[str, Any]] = []
    metrics = [f"dice@{k}" for k in range(1, 6)] + ["better_share"] + \
        [f"noc@{lv:.2f}" for lv in lib.LEVELS] + [f"reached@{lv:.2f}" for lv in lib.LEVELS]
    for ds_name in datasets:
        for name in ["random", "gt", *learners]:
            rows = [r for r in per_seed if r["dataset"] == ds_name and r["policy"] == name]
            s: dict[str, Any] = {"dataset": ds_name, "policy": name, "seeds": args.seeds,
                                 "splits": args.splits, "runs": len(rows)}
            for m in metrics:
                mean, lo, hi = lib.t_interval([r[m] for r in rows])
                s[m], s[f"{m}_ci_low"], s[f"{m}_ci_high"] = mean, lo, hi
            if name in learners:
                c90 = [r["clicks_to_90"] for r in rows if not math.isnan(r["clicks_to_90"])]
                s["clicks_to_90_median"] = float(np.median(c90)) if c90 else math.nan
                s["train_s_median"] = float(np.median([r["train_s"] for r in rows]))
            summary.append(s)

    w = max(10, *(len(n) for n in learners))
    dw = max(11, *(len(d) for d in datasets))
    print(f"\n{'dataset':<{dw}} {'policy':<{w}} {'dice@1':>7} {'dice@5 [95% CI]':>22} "
          f"{'better':>7} {'NoC@.85':>8} {'clicks→90%':>11}")
    for s in summary:
        print(f"{s['dataset']:<{dw}} {s['policy']:<{w}} {s['dice@1']:>7.3f} "
              f"{s['dice@5']:>7.3f} [{s['dice@5_ci_low']:.3f},{s['dice@5_ci_high']:.3f}] "
              f"{s['better_share']:>7.2f} {s['noc@0.85']:>8.2f} "
              f"{s.get('clicks_to_90_median', float('nan')):>11.0f}")

    # Learners trained on a ground-truth reward are references: they never count as "learned".
    learned = [name for name in learners if not lib.is_reference(name)]
    gap = gaps_closed(summary, learned)
    gap_per_split = gaps_closed_per_split(per_seed, {ds: best for ds, (best, _) in gap.items()},
                                          args.splits)
    for ds_name in gap:
        best, value = gap[ds_name]
        line = f"{ds_name}: best learned agent {best}, gap closed {value:.3f}"
        if args.splits > 1:
            line += " (per split: " + ", ".join(f"{g:.3f}" for g in gap_per_split[ds_name]) + ")"
        print(line)

    lib.write_csv(out / "per_seed.csv", per_seed)
    lib.write_csv(out / "summary.csv", summary)
    lib.write_json(out / "compare_policies.json", {
        "summary": summary, "per_seed": per_seed,
        "gap_closed": {ds: value for ds, (_, value) in gap.items()},
        "best_agent": {ds: best for ds, (best, _) in gap.items()},
        "gap_closed_per_split": gap_per_split,
        "curves": {f"{d}/{a}": h for (d, a), h in curves.items()},
        "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "machine": lib.machine()})
    _figures(out, summary, per_seed, curves, datasets, learners)
    run.record(seeds=range(args.seeds), datasets=[src.name for src in sources + evals],
               protocol=lib.protocol_name(args.transductive, args.validation, bool(evals)))
    print(f"wrote {out}/summary.csv, per_seed.csv, compare_policies.json, learning_curves.png, "
          "dice_vs_clicks.png, reward_vs_dice.png, run.json")
    # The figure is on held-out test images; other protocols say so on the same line.
    note = (" (validation images, not the test part)" if args.validation else
            " (transductive: evaluated on the training images)" if args.transductive else "")
    if "kvasir-seg" in gap:
        print(f"gap_closed: {gap['kvasir-seg'][1]:.3f}{note}")
    elif gap:
        ds = next(iter(gap))
        print(f"gap_closed: {gap[ds][1]:.3f} ({ds}; Kvasir-SEG not evaluated){note}")
    else:
        print(f"gap_closed: nan{note}")


def _replot(folder: Path) -> None:
    """Redraw the figures of an earlier run from its ``compare_policies.json``."""
    import json

    path = folder / "compare_policies.json"
    if not path.is_file():
        raise SystemExit(f"--replot: {path} not found (the folder of an earlier run is expected)")
    res = json.loads(path.read_text())
    curves = {tuple(k.split("/", 1)): v for k, v in res["curves"].items()}
    datasets = list(dict.fromkeys(s["dataset"] for s in res["summary"]))
    learners = list(dict.fromkeys(a for _, a in curves))
    _figures(folder, res["summary"], res["per_seed"], curves, datasets, learners)
    print(f"redrew the figures in {folder}")


def _figures(out: Path, summary, per_seed, curves, datasets, learners) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"random": "tab:gray", "gt": "tab:green", "reinforce": "tab:red",
               "reinforce_patches": "tab:pink", "reinforce_belief": "crimson",
               "reinforce_belief_aux": "maroon", "ppo": "tab:blue", "a2c": "tab:purple",
               "dqn": "tab:orange", "ppo_features": "navy", "dqn_features": "darkorange",
               "ppo_belief": "steelblue", "ppo_belief_aux": "midnightblue",
               "a2c_belief_aux": "indigo", "maskable_ppo": "deepskyblue",
               "maskable_ppo_features": "cadetblue", "maskable_ppo_belief_aux": "teal",
               "answer_model": "tab:brown",
               "answer_model_no_offset": "tab:olive", "answer_model_unet": "tab:cyan",
               "answer_model_context": "hotpink", "answer_model_hybrid": "darkgoldenrod",
               "answer_model_residual": "teal"}
    # Learning curves belong to the training data sets, not to the transfer evaluations.
    trained_on = list(dict.fromkeys(d for d, _ in curves)) or datasets
    fig, axes = plt.subplots(1, len(trained_on), figsize=(5.5 * len(trained_on), 3.8),
                             squeeze=False)
    for ax, ds in zip(axes[0], trained_on, strict=True):
        for name in learners:
            hs = curves.get((ds, name), [])
            if not hs:
                continue
            n = min(len(h["reward"]) for h in hs)
            r = np.array([h["reward"][:n] for h in hs])
            w = max(1, n // 25)
            smooth = np.array([np.convolve(x, np.ones(w) / w, mode="valid") for x in r])
            x = np.asarray(hs[0]["clicks"][w - 1:n])
            ax.plot(x, smooth.mean(0), label=name, color=colours.get(name))
            if len(hs) > 1:
                ax.fill_between(x, smooth.min(0), smooth.max(0), alpha=0.2, color=colours.get(name))
        ax.set_title(f"{ds}: training reward (min-max over seeds)")
        ax.set_xlabel("training answers")
        ax.set_ylabel("mean reward per click (+1/-1)")
        ax.legend()
    lib.save_figure(fig, out / "learning_curves.png")
    plt.close(fig)

    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 3.8), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        for s in [s for s in summary if s["dataset"] == ds]:
            ks = np.arange(1, 6)
            mean = [s[f"dice@{k}"] for k in ks]
            lo = [s[f"dice@{k}_ci_low"] for k in ks]
            hi = [s[f"dice@{k}_ci_high"] for k in ks]
            ax.plot(ks, mean, marker="o", label=s["policy"], color=colours.get(s["policy"]))
            ax.fill_between(ks, lo, hi, alpha=0.2, color=colours.get(s["policy"]))
        ax.set_title(f"{ds}: Dice (95% CI over runs)")
        ax.set_xlabel("clicks")
        ax.set_ylabel("Dice")
        ax.set_ylim(0, 1)
        ax.set_xticks(range(1, 6))
        ax.legend(loc="lower right", fontsize=8)
    lib.save_figure(fig, out / "dice_vs_clicks.png")
    plt.close(fig)

    # The reward a learner maximises against the Dice it is judged by: one point per run.
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 3.8), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        for name in dict.fromkeys(r["policy"] for r in per_seed if r["dataset"] == ds):
            rows = [r for r in per_seed if r["dataset"] == ds and r["policy"] == name]
            ax.scatter([r["better_share"] for r in rows], [r["dice@5"] for r in rows], s=25,
                       label=name, color=colours.get(name), alpha=0.8)
        ax.set_title(f"{ds}: reward earned vs Dice (one point per run)")
        ax.set_xlabel('share of "better" answers in evaluation (the reward)')
        ax.set_ylabel("Dice after 5 clicks")
        ax.set_ylim(0, 1)
        ax.legend(loc="lower right", fontsize=8)
    lib.save_figure(fig, out / "reward_vs_dice.png")
    plt.close(fig)


if __name__ == "__main__":
    main()
