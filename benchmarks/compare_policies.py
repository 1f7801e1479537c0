"""Train and compare click policies on the same data, seeds and click budget.

For each data set (the embedded synthetic set; Kvasir-SEG when the real data is present) and each
seed, every learning agent (REINFORCE, SB3's PPO/A2C/DQN, and the model-based answer-model agent of
:mod:`agents.answer_model`) is trained for ``--clicks`` clicks on the training part of a seeded
80/20 split, from better/worse answers alone, then evaluated greedily on the held-out part
(``--transductive``: the method's protocol, training and evaluating on all images). Random clicking
and the ground-truth-guided clicker are evaluated on the same images. ``--agents`` picks learners
from :data:`LEARNERS`, which also names variants (the same trainer with other arguments:
``reinforce_patches``, ``dqn_features``, ``answer_model_no_offset``, ...), so an ablation is one
command. ``--splits N`` repeats everything on N seeded splits (how much the held-out figure owes to
the split); ``--validation`` is for choosing settings: it trains on 80% of the training part and
evaluates on the other 20%, never on the held-out images.

Reported per data set and policy (mean over seeds, 95% t-interval over seeds):

* Dice after k = 1..5 clicks (each episode starts from an empty mask);
* share of "better" answers during evaluation;
* NoC@0.80/0.85/0.90: clicks until Dice first reaches the level, counting 6 when 5 clicks do not
  reach it (interactive segmentation's NoC with a budget of 5), and the share of images that reach it;
* learning curves (reward against training clicks) and clicks-to-90%: the first click count at which
  the smoothed training reward has covered 90% of the way from its first to its final level
  (final = mean of the last 10% of training).

Last line: ``gap_closed: <value>``: the share of the gap in Dice after 5 clicks between random
clicking and the ground-truth-guided clicker that the best learned agent closes on held-out
Kvasir-SEG images (on the synthetic set when Kvasir-SEG is absent, and the line says so).

Run: ``python -m benchmarks.compare_policies`` (``--help``); a quick look:
``python -m benchmarks.compare_policies --seeds 1 --clicks 400 --datasets synthetic``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import t_interval

LEVELS = (0.80, 0.85, 0.90)
# Learners by name: (trainer, arguments). Variants are the same trainer with other arguments, so
# an ablation is a list of names (``--agents answer_model,answer_model_no_offset``).
LEARNERS: dict[str, tuple[str, dict[str, Any]]] = {
    "reinforce": ("reinforce", {}),
    "reinforce_patches": ("reinforce", {"policy": "patches"}),
    "reinforce_belief": ("reinforce", {"policy": "belief"}),
    "reinforce_belief_aux": ("reinforce", {"policy": "belief", "aux_coef": 1.0}),
    "ppo": ("sb3", {"algo": "ppo"}),
    "a2c": ("sb3", {"algo": "a2c"}),
    "dqn": ("sb3", {"algo": "dqn"}),
    "ppo_features": ("sb3", {"algo": "ppo", "obs": "features"}),
    "dqn_features": ("sb3", {"algo": "dqn", "obs": "features"}),
    "ppo_belief": ("sb3", {"algo": "ppo", "obs": "belief", "width": 64}),
    "ppo_belief_aux": ("sb3", {"algo": "ppo", "obs": "belief", "width": 64, "aux_coef": 1.0}),
    "a2c_belief_aux": ("sb3", {"algo": "a2c", "obs": "belief", "width": 64, "aux_coef": 1.0}),
    "maskable_ppo": ("sb3", {"algo": "maskable_ppo"}),
    "maskable_ppo_features": ("sb3", {"algo": "maskable_ppo", "obs": "features"}),
    "maskable_ppo_belief_aux": ("sb3", {"algo": "maskable_ppo", "obs": "belief", "width": 64,
                                        "aux_coef": 1.0}),
    "answer_model": ("answer_model", {}),
    "answer_model_no_offset": ("answer_model", {"global_offset": False}),
    "answer_model_unet": ("answer_model", {"belief": "image", "global_offset": False}),
    "answer_model_context": ("answer_model", {"belief": "context"}),
    "answer_model_hybrid": ("answer_model", {"belief": "hybrid"}),
    "answer_model_residual": ("answer_model", {"belief": "residual"}),
}


def learner_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``(trainer, arguments)`` of a learner: a :data:`LEARNERS` name, optionally followed by
    ``:field=value`` overrides of its argument dataclass (``answer_model:updates_per_step=4``;
    values are Python literals, anything else is a string).

    Raises:
        SystemExit: naming the spec, on an unknown learner or a malformed override.
    """
    import ast

    name, *overrides = spec.split(":")
    if name not in LEARNERS:
        raise SystemExit(f"--agents: unknown learner {name!r} in {spec!r}; choose from "
                         f"{', '.join(LEARNERS)}")
    trainer, kwargs = LEARNERS[name]
    kwargs = dict(kwargs)
    for item in overrides:
        key, eq, text = item.partition("=")
        if not eq or not key.isidentifier():
            raise SystemExit(f"--agents: {item!r} in {spec!r} is not field=value")
        try:
            kwargs[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            kwargs[key] = text
    fields = {f.name for f in dataclasses.fields(_args_class(trainer))}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise SystemExit(f"--agents: {spec!r} sets {unknown}, not arguments of the {trainer} "
                         f"trainer; its arguments: {', '.join(sorted(fields))}")
    from agents.common import ArgumentValueError

    try:  # a value the trainer would refuse, refused now rather than inside a worker, mid-run
        _args_class(trainer)(**kwargs).validate()
    except ArgumentValueError as e:
        raise SystemExit(f"--agents: {spec!r}: {e}") from None
    return trainer, kwargs


def is_reference(spec: str) -> bool:
    """Whether a learner spec trains on a reward that reads the ground truth (``reward=dice_gain``):
    a reference for diagnosing, never counted as the best learned agent."""
    return learner_spec(spec)[1].get("reward", "answer") != "answer"


def run_name(spec: str) -> str:
    """A folder name for a learner spec (``answer_model:width=32`` -> ``answer_model_width-32``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.replace("=", "-"))


def _args_class(trainer: str) -> type:
    if trainer == "reinforce":
        from agents.reinforce import ReinforceArgs

        return ReinforceArgs
    if trainer == "answer_model":
        from agents.answer_model import AnswerModelArgs

        return AnswerModelArgs
    from agents.sb3 import SB3Args

    return SB3Args


def clicks_to_90(clicks: list[int], reward: list[float], window: int = 10) -> float:
    """First click count where the smoothed reward covers 90% of its rise (nan if it never rises)."""
    r = np.convolve(reward, np.ones(window) / window, mode="valid")
    if len(r) < 2:
        return math.nan
    start = float(r[0])
    final = float(np.mean(reward[-max(1, len(reward) // 10):]))
    if final <= start:
        return math.nan
    hit = np.nonzero(r >= start + 0.9 * (final - start))[0]
    return float(clicks[int(hit[0]) + window - 1]) if hit.size else math.nan


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


def checked_data(parser: argparse.ArgumentParser, datasets: str, data: str | None
                 ) -> tuple[dict[str, dict], list[str], Path | None]:
    """A benchmark CLI's ``--datasets`` and ``--data``: the held-out :func:`data_configs` of split
    0, the data set names and the real-data folder; unknown names, a named but missing folder
    and nothing left to evaluate are usage errors (before anything is written)."""
    from benchmarks._common import data_folder, dataset_names

    names, folder = dataset_names(parser, datasets), data_folder(parser, data)
    cfgs = data_configs(names, folder, transductive=False)
    if not cfgs:
        parser.error(f"--datasets: nothing to evaluate among {datasets!r}")
    return cfgs, names, folder


def data_configs(names: list[str], data: Path | None, transductive: bool,
                 split_seed: int = 0, validation: bool = False) -> dict[str, dict]:
    """Per data set: ``train``/``test`` env kwargs and ``reinforce`` (trainer data arguments).

    ``validation`` trains on the ``fit`` part and evaluates on the ``val`` part, both inside the
    training part of the split (:func:`bow_gym.datasets.make_dataset`).
    """
    cfgs: dict[str, dict] = {}
    train_split, test_split = (("all", "all") if transductive else
                               ("fit", "val") if validation else ("train", "test"))
    sources: dict[str, dict[str, Any]] = {}
    if "synthetic" in names:
        sources["synthetic"] = {"dataset_kwargs": {"n_images": 200}}
    if "kvasir-seg" in names:
        if data is None or not (data / "kvasir-seg").is_dir():
            print("Kvasir-SEG not found (set BOW_GYM_SHARED_DATA or --data): skipped")
        else:
            sources["kvasir-seg"] = {"dataset": "kvasir-seg", "root": str(data / "kvasir-seg"),
                                     "dataset_kwargs": {}}
    for ds_name, src in sources.items():
        ds_kwargs = {**src.pop("dataset_kwargs"), "split_seed": split_seed}
        cfgs[ds_name] = {
            "train": {**src, "dataset_kwargs": {**ds_kwargs, "split": train_split}},
            "test": {**src, "dataset_kwargs": {**ds_kwargs, "split": test_split}},
            "reinforce": {**src, "env_kwargs": {"dataset_kwargs": ds_kwargs},
                          "split": train_split},
        }
    return cfgs


def train_learner(name: str, cfg: dict, seed: int, clicks: int, out: Path, progress: bool):
    """A trained :class:`~agents.ClickPolicy` and its learning curve."""
    trainer, kwargs = learner_spec(name)
    common = dict(total_answers=clicks, seed=seed, out=str(out), progress=progress,
                  **cfg["reinforce"], **kwargs)
    if trainer == "reinforce":
        from agents.reinforce import ReinforceArgs, train

        agent, history = train(ReinforceArgs(**common))
        agent.greedy, agent.online_batch = True, 0
        return agent, history
    if trainer == "answer_model":
        from agents.answer_model import AnswerModelArgs
        from agents.answer_model import train as train_answer_model

        agent, history = train_answer_model(AnswerModelArgs(**common))
        agent.greedy, agent.online_batch = True, 0
        return agent, history
    from agents.sb3 import SB3Args, train_sb3

    return train_sb3(SB3Args(**common))


def evaluate(policy, env, seed: int) -> dict[str, Any]:
    from agents import run_episode

    n = len(env.unwrapped.dataset)
    dice, better = [], []
    for i in range(n):
        rec = run_episode(env, policy, seed=seed * 100003 + i, options={"index": i})
        dice.append(rec.dice)
        better.extend(r > 0 for r in rec.rewards)
    d = np.asarray(dice)
    res: dict[str, Any] = {"dice": d.mean(0).tolist(), "better_share": float(np.mean(better))}
    for level in LEVELS:
        reached = d >= level
        first = np.where(reached.any(1), reached.argmax(1) + 1, d.shape[1] + 1)
        res[f"noc@{level:.2f}"] = float(first.mean())
        res[f"reached@{level:.2f}"] = float(reached.any(1).mean())
    return res


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


def run_unit(unit: Unit, learners: list[str], clicks: int, out: Path, progress: bool
             ) -> tuple[list[dict[str, Any]], dict[str, dict]]:
    """Train every learner of ``unit``, evaluate them with random and gt: (rows, histories)."""
    import gymnasium as gym

    import bow_gym  # noqa: F401
    from agents import GroundTruthClicker, RandomClicker

    test_env = gym.make("BetterWorseSeg-v0", **unit.cfg["test"])
    policies: list[tuple[str, Any, float]] = [("random", RandomClicker(), 0.0),
                                              ("gt", GroundTruthClicker(), 0.0)]
    histories: dict[str, dict] = {}
    for name in learners:
        run = f"{run_name(name)}-seed{unit.seed}" + (f"-split{unit.split}" if unit.split else "")
        t0 = time.time()
        policy, histories[name] = train_learner(name, unit.cfg, unit.seed, clicks,
                                                out / "runs" / unit.dataset / run, progress)
        policies.append((name, policy, time.time() - t0))
    rows = []
    for name, policy, train_s in policies:
        res = evaluate(policy, test_env, unit.seed)
        row = {"dataset": unit.dataset, "policy": name, "split": unit.split, "seed": unit.seed,
               "train_s": train_s,
               **{f"dice@{k + 1}": v for k, v in enumerate(res.pop("dice"))}, **res}
        if name in learners:
            row["clicks_to_90"] = clicks_to_90(histories[name]["clicks"],
                                               histories[name]["reward"])
        rows.append(row)
    test_env.close()
    return rows, histories


def _worker_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_and_save(unit: Unit, learners: list[str], clicks: int, out: Path, fingerprint: dict,
                  progress: bool):
    from benchmarks._common import write_json

    rows, histories = run_unit(unit, learners, clicks, out, progress)
    # Written as soon as the run ends (atomically), so an interrupted benchmark can --resume.
    write_json(unit.result_path(out),
               {"settings": fingerprint, "rows": rows, "histories": histories})
    return rows, histories


def _load_unit(path: Path, fingerprint: dict):
    import json

    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    if saved.get("settings") != fingerprint:
        print(f"  {path}: made with other settings ({saved.get('settings')}): run again")
        return None
    return saved["rows"], saved["histories"]


def _report(rows: list[dict[str, Any]], reused: bool = False, write=print) -> None:
    for row in rows:
        write(f"  {row['dataset']} split {row['split']} seed {row['seed']} {row['policy']:<22} "
              f"dice@5 {row['dice@5']:.3f}  better {row['better_share']:.2f}  "
              f"train {row['train_s']:5.0f}s" + ("  (reused)" if reused else ""))
    sys.stdout.flush()  # a long run's log file shows each run when it ends, not when buffers fill


def run_units(units: list[Unit], learners: list[str], clicks: int, out: Path, fingerprint: dict,
              jobs: int = 1, resume: bool = False, progress: bool = True,
              threads: int | None = None):
    """(rows, histories) of every unit, in the order of ``units``.

    ``jobs > 1`` runs units in that many spawned processes with ``threads`` torch threads each
    (default ``cpu_count // jobs``); their own progress bars are off and one bar counts finished
    runs instead.
    Each unit's result is saved to :meth:`Unit.result_path`; ``resume`` reuses those
    saved with the same ``fingerprint``.
    """
    import os

    from tqdm.auto import tqdm

    results: list[Any] = [None] * len(units)
    if resume:
        for i, unit in enumerate(units):
            results[i] = _load_unit(unit.result_path(out), fingerprint)
            if results[i] is not None:
                _report(results[i][0], reused=True)
    todo = [i for i, r in enumerate(results) if r is None]
    if jobs == 1 or len(todo) <= 1:
        for i in todo:
            results[i] = _run_and_save(units[i], learners, clicks, out, fingerprint, progress)
            _report(results[i][0])
        return results

    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    # spawn, not fork: a forked child inherits torch's thread pool in an undefined state.
    with ProcessPoolExecutor(max_workers=min(jobs, len(todo)),
                             mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_threads, initargs=(threads,)) as pool:
        futures = {pool.submit(_run_and_save, units[i], learners, clicks, out, fingerprint,
                               False): i for i in todo}
        bar = tqdm(total=len(todo), desc="runs", unit="run", disable=not progress)
        for future in as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            _report(results[i][0], write=tqdm.write)  # above the bar, not through it
            bar.update()
        bar.close()
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare_policies", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--datasets", default="synthetic,kvasir-seg",
                   help="comma-separated: synthetic (embedded) and/or kvasir-seg (needs the real "
                        "data; skipped with a note when absent); default both")
    p.add_argument("--agents", default="reinforce,ppo,dqn,answer_model",
                   help="comma-separated learners (default reinforce,ppo,dqn,answer_model), "
                        "each NAME or NAME:field=value:... (overrides of its arguments):\n" +
                        "\n".join(f"  {k}: {t} {a}" for k, (t, a) in LEARNERS.items()))
    p.add_argument("--seeds", type=int, default=3,
                   help="training and evaluation seeds 0..N-1 per split (default 3)")
    p.add_argument("--clicks", type=int, default=2000, help="training clicks per agent")
    p.add_argument("--transductive", action="store_true",
                   help="train and evaluate on all images (the method's protocol)")
    p.add_argument("--validation", action="store_true",
                   help="model selection: train on 80%% of the training part and evaluate on the "
                        "other 20%% (the held-out test images are not touched)")
    p.add_argument("--splits", type=int, default=1,
                   help="seeded 80/20 splits to repeat everything on (split seeds 0..N-1; "
                        "default 1): intervals then cover splits x seeds, and the gap closed is "
                        "also reported per split")
    p.add_argument("--data", help="real-data folder (default $BOW_GYM_SHARED_DATA or ../shared/data)")
    p.add_argument("--out", help="output folder (default benchmarks/results/compare_policies)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs (split x seed) trained at once, in separate processes, each with "
                        "cpu_count // jobs torch threads (default 1: one run at a time)")
    p.add_argument("--resume", action="store_true",
                   help="reuse the runs an earlier, interrupted call with the same --out, "
                        "--agents, --clicks and protocol finished (OUT/runs/<data set>/"
                        "unit-split<k>-seed<s>.json); others are trained")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--replot", metavar="DIR",
                   help="only redraw the figures of an earlier run from DIR/compare_policies.json")
    args = p.parse_args(argv)
    if args.splits < 1:
        p.error(f"--splits must be at least 1, got {args.splits}")
    if args.transductive and args.validation:
        p.error("--transductive and --validation exclude each other")
    if args.transductive and args.splits > 1:
        p.error("--splits > 1 needs held-out evaluation: --transductive uses every image")
    if args.seeds < 1 or args.clicks < 1:
        p.error("--seeds and --clicks must be positive")
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")

    from benchmarks._common import machine, out_dir, save_figure, write_csv, write_json

    if args.replot:
        _replot(Path(args.replot), save_figure)
        return

    learners = list(dict.fromkeys(a for a in args.agents.split(",") if a))
    for spec in learners:
        learner_spec(spec)
    _, names, data = checked_data(p, args.datasets, args.data)
    out = out_dir("compare_policies", args.out)
    units = []
    datasets: list[str] = []
    for split in range(args.splits):
        cfgs = data_configs(names, data, args.transductive, split_seed=split,
                            validation=args.validation)
        datasets = list(cfgs)
        units += [Unit(ds_name, cfg, split, seed) for ds_name, cfg in cfgs.items()
                  for seed in range(args.seeds)]
    where = ("all" if args.transductive else "validation" if args.validation else "held-out")
    print(f"== {', '.join(datasets) or 'no data set'}: {len(units)} runs (data sets x "
          f"{args.splits} splits x {args.seeds} seeds), evaluated on {where} images, "
          f"{args.clicks} training clicks, {args.jobs} at a time")
    fingerprint = {k: getattr(args, k) for k in ("agents", "clicks", "transductive", "validation")}
    results = run_units(units, learners, args.clicks, out, fingerprint, jobs=args.jobs,
                        resume=args.resume, progress=not args.no_progress)
    per_seed: list[dict[str, Any]] = []
    curves: dict[tuple[str, str], list[dict]] = {}
    for unit, (rows, histories) in zip(units, results, strict=True):
        per_seed += rows
        for name in learners:
            curves.setdefault((unit.dataset, name), []).append(histories[name])

    summary: list[dict[str, Any]] = []
    metrics = [f"dice@{k}" for k in range(1, 6)] + ["better_share"] + \
        [f"noc@{lv:.2f}" for lv in LEVELS] + [f"reached@{lv:.2f}" for lv in LEVELS]
    for ds_name in datasets:
        for name in ["random", "gt", *learners]:
            rows = [r for r in per_seed if r["dataset"] == ds_name and r["policy"] == name]
            s: dict[str, Any] = {"dataset": ds_name, "policy": name, "seeds": args.seeds,
                                 "splits": args.splits, "runs": len(rows)}
            for m in metrics:
                mean, lo, hi = t_interval([r[m] for r in rows])
                s[m], s[f"{m}_ci_low"], s[f"{m}_ci_high"] = mean, lo, hi
            if name in learners:
                c90 = [r["clicks_to_90"] for r in rows if not math.isnan(r["clicks_to_90"])]
                s["clicks_to_90_median"] = float(np.median(c90)) if c90 else math.nan
                s["train_s_median"] = float(np.median([r["train_s"] for r in rows]))
            summary.append(s)

    w = max(10, *(len(n) for n in learners))
    print(f"\n{'dataset':<11} {'policy':<{w}} {'dice@1':>7} {'dice@5 [95% CI]':>22} "
          f"{'better':>7} {'NoC@.85':>8} {'clicks→90%':>11}")
    for s in summary:
        print(f"{s['dataset']:<11} {s['policy']:<{w}} {s['dice@1']:>7.3f} "
              f"{s['dice@5']:>7.3f} [{s['dice@5_ci_low']:.3f},{s['dice@5_ci_high']:.3f}] "
              f"{s['better_share']:>7.2f} {s['noc@0.85']:>8.2f} "
              f"{s.get('clicks_to_90_median', float('nan')):>11.0f}")

    # Learners trained on a ground-truth reward are references: they never count as "learned".
    learned = [name for name in learners if not is_reference(name)]
    gap = gaps_closed(summary, learned)
    gap_per_split = gaps_closed_per_split(per_seed, {ds: best for ds, (best, _) in gap.items()},
                                          args.splits)
    for ds_name in gap:
        best, value = gap[ds_name]
        line = f"{ds_name}: best learned agent {best}, gap closed {value:.3f}"
        if args.splits > 1:
            line += " (per split: " + ", ".join(f"{g:.3f}" for g in gap_per_split[ds_name]) + ")"
        print(line)

    write_csv(out / "per_seed.csv", per_seed)
    write_csv(out / "summary.csv", summary)
    write_json(out / "compare_policies.json", {
        "summary": summary, "per_seed": per_seed,
        "gap_closed": {ds: value for ds, (_, value) in gap.items()},
        "best_agent": {ds: best for ds, (best, _) in gap.items()},
        "gap_closed_per_split": gap_per_split,
        "curves": {f"{d}/{a}": h for (d, a), h in curves.items()},
        "settings": vars(args), "machine": machine()})
    _figures(out, summary, per_seed, curves, datasets, learners, save_figure)
    print(f"wrote {out}/summary.csv, per_seed.csv, compare_policies.json, learning_curves.png, "
          "dice_vs_clicks.png, reward_vs_dice.png")
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


def _replot(folder: Path, save_figure) -> None:
    """Redraw the figures of an earlier run from its ``compare_policies.json``."""
    import json

    path = folder / "compare_policies.json"
    if not path.is_file():
        raise SystemExit(f"--replot: {path} not found (the folder of an earlier run is expected)")
    res = json.loads(path.read_text())
    curves = {tuple(k.split("/", 1)): v for k, v in res["curves"].items()}
    datasets = list(dict.fromkeys(s["dataset"] for s in res["summary"]))
    learners = list(dict.fromkeys(a for _, a in curves))
    _figures(folder, res["summary"], res["per_seed"], curves, datasets, learners, save_figure)
    print(f"redrew the figures in {folder}")


def _figures(out: Path, summary, per_seed, curves, datasets, learners, save_figure) -> None:
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
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 3.8), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
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
        ax.set_xlabel("training clicks")
        ax.set_ylabel("mean reward per click (+1/-1)")
        ax.legend()
    save_figure(fig, out / "learning_curves.png")
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
    save_figure(fig, out / "dice_vs_clicks.png")
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
    save_figure(fig, out / "reward_vs_dice.png")
    plt.close(fig)


if __name__ == "__main__":
    main()
