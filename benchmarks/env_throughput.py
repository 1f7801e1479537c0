"""Steps per second of BetterWorseSeg-v0 against CartPole-v1, single and vectorised, feature
extraction speed, the memory of 256 sub-envs and (``--ppo-clicks``) one SB3 PPO run's wall time.

Single envs: both made with ``gym.make`` (the same default wrappers) and driven by
``action_space.sample()``, resets included, alternating over repeats.

Vector envs, at each ``--num-envs`` N: the native vector env
(``gym.make_vec(id, num_envs=N, vectorization_mode="vector_entry_point")``) with ``copy=True``
(a fresh observation batch per step) and ``copy=False`` (its own buffer), ``SyncVectorEnv`` of N
``gym.make`` envs with the same two ``copy`` settings, and CartPole's native vector env at the
same N; every kind is driven by ``action_space.sample()`` (autoresets included) for about
``--seconds`` per timing, and the kinds alternate within each repeat, so a busy machine slows all
alike. Rates are env-steps/s (N per batched step), medians over repeats, both wall-clock and CPU
time of this process (``time.process_time``, which a shared machine disturbs less). Ratios are
taken per repeat, then the median: native / CartPole, and native / Sync with the same ``copy``
(like with like). BetterWorseSeg runs at its steady state: features and per-image state are
prepared before timing (the Sync sub-envs share one prepared set too).

Memory: traced (``tracemalloc``; NumPy reports its buffers to it) and resident growth of building
``--memory-envs`` sub-envs at the default settings over an already loaded data set and stepping
them (every image gets visited), measured in a fresh child process so that nothing this process
allocated before blurs the resident size.

Run: ``python -m benchmarks.env_throughput`` (``--help`` for options). Writes
``benchmarks/results/env_throughput/<run>/`` (``run.json``, ``env_throughput.json``,
``vector.csv``, ``steps.csv``, ``extraction.csv``, ``env_throughput.png``). Last lines:
``vector_ratio_vs_cartpole_64: <median>`` and ``vector_speedup_vs_sync_64: <median>``
(``copy=False``; the ``copy=True`` values are printed just above them).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import lib

#: Sub-env counts of the headline ratios.
HEADLINE_N = 64


def steps_per_second(env, n_steps: int) -> float:
    env.reset(seed=0)
    env.action_space.seed(0)
    t0 = time.perf_counter()
    for _ in range(n_steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    return n_steps / (time.perf_counter() - t0)


def vector_rates(env, n_steps: int, seed: int = 0) -> tuple[float, float]:
    """Env-steps/s of a vector env over ``n_steps`` batched steps: ``(wall, cpu)``."""
    env.reset(seed=seed)
    env.action_space.seed(seed)
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n_steps):
        env.step(env.action_space.sample())
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    n = env.num_envs * n_steps
    return n / wall, n / max(cpu, 1e-9)


def extraction_speed(name: str, images: list[np.ndarray], **kwargs) -> float:
    from bow_gym.backbones import create_backbone

    bb = create_backbone(name, **kwargs)
    bb.extract(images[:2])  # warm-up (allocations, lazy init)
    t0 = time.perf_counter()
    bb.extract(images)
    return len(images) / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------- vector envs
def _prepared_single(env_id: str = "BetterWorseSeg-v0"):
    """A single env with every image prepared, whose data set and backbone the others share."""
    import gymnasium as gym

    env = gym.make(env_id, feature_cache=None)
    base = env.unwrapped
    env.reset(seed=0)
    for i in range(len(base.dataset)):
        env.reset(options={"index": i})
    return base


def make_vector_kinds(n: int, prepared) -> dict[str, Any]:
    """The vector envs timed at ``n`` sub-envs, each at its steady state."""
    import gymnasium as gym

    shared = {"dataset": prepared.dataset, "backbone": prepared.backbone, "feature_cache": None}
    kinds: dict[str, Any] = {}
    for copy in (True, False):
        native = gym.make_vec("BetterWorseSeg-v0", num_envs=n,
                              vectorization_mode="vector_entry_point", copy=copy, **shared)
        native.reset(seed=0)
        for i in range(len(prepared.dataset)):  # every image into the shared store
            native.reset(options={"index": i})
        kinds[f"native copy={copy}"] = native
        sync = gym.make_vec("BetterWorseSeg-v0", num_envs=n, vectorization_mode="sync",
                            vector_kwargs={"copy": copy}, **shared)
        for env in sync.envs:
            # One prepared set for all sub-envs (read-only, so sharing it changes nothing but
            # the time spent preparing each image once per sub-env).
            env.unwrapped._contexts.update(prepared._contexts)
            env.unwrapped.context_cache_size = max(env.unwrapped.context_cache_size,
                                                   len(prepared._contexts))
        kinds[f"sync copy={copy}"] = sync
    kinds["cartpole native"] = gym.make_vec("CartPole-v1", num_envs=n,
                                            vectorization_mode="vector_entry_point")
    return kinds


def time_vector_kinds(ns: list[int], repeats: int, seconds: float,
                      log=print) -> list[dict[str, Any]]:
    """One row per (N, kind, repeat): env-steps/s, wall and CPU."""
    prepared = _prepared_single()
    rows: list[dict[str, Any]] = []
    for n in ns:
        kinds = make_vector_kinds(n, prepared)
        steps: dict[str, int] = {}
        for name, env in kinds.items():  # warm-up, and steps per timing for ~`seconds`
            wall, _ = vector_rates(env, 3)
            wall, _ = vector_rates(env, max(3, int(0.2 * seconds * wall / n)))
            steps[name] = max(5, int(seconds * wall / n))
        for r in range(repeats):
            for name, env in kinds.items():
                wall, cpu = vector_rates(env, steps[name], seed=r)
                rows.append({"num_envs": n, "kind": name, "repeat": r, "batched_steps": steps[name],
                             "env_steps_per_s_wall": wall, "env_steps_per_s_cpu": cpu})
            line = ", ".join(f"{row['kind']} {row['env_steps_per_s_wall']:,.0f}"
                             for row in rows[-len(kinds):])
            log(f"N={n} repeat {r + 1}/{repeats} (env-steps/s, wall): {line}")
        for env in kinds.values():
            env.close()
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per (N, kind) and the per-repeat ratios' medians per N."""
    out: dict[str, Any] = {}
    for n in sorted({r["num_envs"] for r in rows}):
        at = [r for r in rows if r["num_envs"] == n]
        per = {}
        for kind in dict.fromkeys(r["kind"] for r in at):
            sel = [r for r in at if r["kind"] == kind]
            per[kind] = {clock: statistics.median(r[f"env_steps_per_s_{clock}"] for r in sel)
                         for clock in ("wall", "cpu")}

        ratios = {}
        for clock in ("wall", "cpu"):
            for copy in (True, False):
                ratios[f"vs_cartpole copy={copy} {clock}"] = _ratio(
                    at, f"native copy={copy}", "cartpole native", clock)
                ratios[f"vs_sync copy={copy} {clock}"] = _ratio(
                    at, f"native copy={copy}", f"sync copy={copy}", clock)
        out[str(n)] = {"env_steps_per_s": per, "ratios": ratios}
    return out


def _ratio(rows: list[dict[str, Any]], a: str, b: str, clock: str) -> float:
    """Median over repeats of kind ``a``'s rate over kind ``b``'s in the same repeat."""
    ra = sorted((r for r in rows if r["kind"] == a), key=lambda r: r["repeat"])
    rb = sorted((r for r in rows if r["kind"] == b), key=lambda r: r["repeat"])
    return statistics.median(x[f"env_steps_per_s_{clock}"] / y[f"env_steps_per_s_{clock}"]
                             for x, y in zip(ra, rb, strict=True))


def vector_memory(num_envs: int, steps: int = 60) -> dict[str, float]:
    """MiB that ``num_envs`` sub-envs at the default settings add beyond the loaded data set
    (call it in a fresh process: see :func:`vector_memory_in_child`)."""
    import tracemalloc

    import gymnasium as gym

    import bow_gym  # noqa: F401 - registers the ids (a spawned child starts bare)
    from bow_gym.backbones import create_backbone
    from bow_gym.datasets import make_dataset

    dataset = make_dataset("synthetic")
    for i in range(len(dataset)):  # the data set itself, loaded, is not counted
        dataset[i]
    backbone = create_backbone("lab_texture")
    rss0 = _rss_mib()
    tracemalloc.start()
    env = gym.make_vec("BetterWorseSeg-v0", num_envs=num_envs, dataset=dataset, backbone=backbone,
                       feature_cache=None)
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(steps):
        env.step(env.action_space.sample())
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    visited = int((env.unwrapped._store.slot_of >= 0).sum())
    box = env.observation_space  # Gymnasium's batched Box keeps four arrays of the batch's shape
    bounds = sum(a.nbytes for a in (box.low, box.high, box.bounded_below, box.bounded_above))
    result = {"num_envs": num_envs, "traced_current_mib": current / 2**20,
              "observation_space_bounds_mib": bounds / 2**20,
              "traced_peak_mib": peak / 2**20, "rss_growth_mib": _rss_mib() - rss0,
              "images_prepared": visited, "images_in_data_set": len(dataset)}
    env.close()
    return result


def vector_memory_in_child(num_envs: int) -> dict[str, float]:
    """:func:`vector_memory` in a spawned child process."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(vector_memory, num_envs).result()


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):  # not Linux: resident size unknown
        return float("nan")


# ---------------------------------------------------------------------------- SB3 PPO wall time
def ppo_wall_times(clicks: int, seed: int = 0) -> dict[str, Any]:
    """Wall time of one SB3 PPO run of ``clicks`` answers with ``agents.sb3``'s defaults on each
    of its vector envs: ``vector_env="sync"`` (a ``DummyVecEnv`` of single envs, the path before
    the native vector env) and ``"native"`` (the batched env through
    :class:`bow_gym.sb3_vec.SB3VecEnv`, the default now), and whether both learnt the same.

    Before timing, the features go into the on-disk cache and torch runs one short PPO
    rollout, so neither run pays a first-use cost the other does not. Besides the wall time,
    the seconds spent inside the vec env's ``step_wait`` and ``reset`` (``env_s``) are summed:
    the share of the run that the env path can change at all.
    """
    from stable_baselines3.common.vec_env import DummyVecEnv

    from bow_gym.sb3_vec import SB3VecEnv

    env_s = {"sync": 0.0, "native": 0.0}
    patched = {(DummyVecEnv, "sync"), (SB3VecEnv, "native")}
    originals = {(cls, m): getattr(cls, m) for cls, _ in patched for m in ("step_wait", "reset")}

    def timed(method, key):
        def wrapper(self, *args, **kwargs):
            t = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                env_s[key] += time.perf_counter() - t
        return wrapper

    for cls, key in patched:
        for m in ("step_wait", "reset"):
            setattr(cls, m, timed(originals[(cls, m)], key))
    try:
        return _ppo_runs(clicks, seed, env_s)
    finally:
        for (cls, m), method in originals.items():
            setattr(cls, m, method)


def _ppo_runs(clicks: int, seed: int, env_s: dict[str, float]) -> dict[str, Any]:
    import torch

    from agents.common import make_envs
    from agents.sb3 import SB3Args, train_sb3

    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        args = SB3Args(algo="ppo", total_answers=clicks, seed=seed, tensorboard=False,
                       progress=False, device="cpu")
        make_envs(args, 1)[0].unwrapped.precompute_features(progress=False)
        for kind in ("sync", "native"):
            train_sb3(dataclasses.replace(args, total_answers=16, vector_env=kind,
                                          out=str(Path(tmp) / f"warm-{kind}")))
            env_s[kind] = 0.0
            t0 = time.perf_counter()
            agent, history = train_sb3(dataclasses.replace(args, vector_env=kind,
                                                           out=str(Path(tmp) / kind)))
            runs[kind] = {"wall_s": time.perf_counter() - t0, "env_s": env_s[kind],
                          "learn_s": float(agent.metadata["train_seconds"]),
                          "history": history, "params": agent.policy.state_dict()}
    sync, native = runs["sync"], runs["native"]
    same_params = all(torch.equal(a, b) for a, b in zip(
        sync.pop("params").values(), native.pop("params").values(), strict=True))
    same_rewards = sync.pop("history")["reward"] == native.pop("history")["reward"]
    return {"clicks": clicks, "seed": seed, "num_envs": args.num_envs,
            "current_dummy_vec_env": sync, "native_vector_adapter": native,
            "speedup_wall": sync["wall_s"] / native["wall_s"],
            "speedup_learn": sync["learn_s"] / native["learn_s"],
            "speedup_env": sync["env_s"] / native["env_s"],
            "same_rewards": same_rewards, "same_parameters": same_params}


# ---------------------------------------------------------------------------- command line
def _counts(parser: argparse.ArgumentParser, text: str) -> list[int]:
    try:
        ns = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        ns = []
    if not ns or min(ns) < 1:
        parser.error(f"--num-envs: expected comma-separated integers >= 1, got {text!r}")
    return ns


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.env_throughput", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=20000, help="single env: steps per repeat "
                   "(default 20000)")
    p.add_argument("--repeats", type=int, default=5, help="alternating repeats (default 5)")
    p.add_argument("--num-envs", default="1,16,64,256",
                   help="vector envs: sub-env counts (default 1,16,64,256)")
    p.add_argument("--seconds", type=float, default=0.5,
                   help="vector envs: seconds per timing (default 0.5)")
    p.add_argument("--memory-envs", type=int, default=256,
                   help="sub-envs whose memory is measured (default 256; 0 skips)")
    p.add_argument("--ppo-clicks", type=int, default=0,
                   help="time one SB3 PPO run of this many answers on the DummyVecEnv path and "
                        "on the native vector env (default 0: skipped; the issue's run is 2000)")
    p.add_argument("--images", type=int, default=16, help="images for extraction speed")
    p.add_argument("--backbones", default="lab_texture,dinov2_vits14,dinov2_vitb14",
                   help="comma-separated backbones to time")
    lib.add_output_arguments(p, "env_throughput")
    args = p.parse_args(argv)
    for name in ("steps", "repeats", "images"):
        if getattr(args, name) < 1:
            p.error(f"--{name}: must be >= 1, got {getattr(args, name)}")
    for name in ("memory_envs", "ppo_clicks"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')}: must be >= 0, got {getattr(args, name)}")
    if not args.seconds > 0:
        p.error(f"--seconds: must be > 0, got {args.seconds}")
    ns = _counts(p, args.num_envs)

    import gymnasium as gym

    import bow_gym  # noqa: F401
    from bow_gym.datasets.synthetic import generate

    run = lib.start_run("env_throughput", argv, args.out,
                        args.run or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S"))
    out = run.out

    # -- single envs
    bw = gym.make("BetterWorseSeg-v0", feature_cache=None)
    n_images = len(bw.unwrapped.dataset)
    bw.reset(seed=0)
    for i in range(n_images):  # features and per-image state cached before timing
        bw.reset(options={"index": i})
    cp = gym.make("CartPole-v1")
    steps_per_second(bw, 2000)
    steps_per_second(cp, 2000)
    bw_sps, cp_sps = [], []
    for r in range(args.repeats):
        bw_sps.append(steps_per_second(bw, args.steps))
        cp_sps.append(steps_per_second(cp, args.steps))
        print(f"repeat {r + 1}/{args.repeats}: BetterWorseSeg-v0 {bw_sps[-1]:,.0f} steps/s, "
              f"CartPole-v1 {cp_sps[-1]:,.0f} steps/s, ratio {bw_sps[-1] / cp_sps[-1]:.3f}")
    ratios = [b / c for b, c in zip(bw_sps, cp_sps, strict=True)]

    # -- vector envs
    rows = time_vector_kinds(ns, args.repeats, args.seconds)
    vector = summarise(rows)
    print("\nvector envs, env-steps/s (median over repeats; wall / CPU):")
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    print(f"{'N':>5} " + " ".join(f"{k:>24}" for k in kinds))
    for n in ns:
        per = vector[str(n)]["env_steps_per_s"]
        print(f"{n:>5} " + " ".join(f"{per[k]['wall']:>11,.0f} /{per[k]['cpu']:>11,.0f}"
                                    for k in kinds))
    print(f"\n{'N':>5} {'ratio':>34} {'wall':>7} {'cpu':>7}")
    for n in ns:
        rt = vector[str(n)]["ratios"]
        for name in ("vs_cartpole copy=True", "vs_cartpole copy=False", "vs_sync copy=True",
                     "vs_sync copy=False"):
            print(f"{n:>5} {'native ' + name:>34} {rt[name + ' wall']:>7.3f} "
                  f"{rt[name + ' cpu']:>7.3f}")

    memory = vector_memory_in_child(args.memory_envs) if args.memory_envs else None
    if memory:
        print(f"\nmemory of {memory['num_envs']} sub-envs beyond the loaded data set: traced peak "
              f"{memory['traced_peak_mib']:.1f} MiB (current {memory['traced_current_mib']:.1f}), "
              f"resident growth {memory['rss_growth_mib']:.1f} MiB (goal < 1024 MiB)")

    ppo = None
    if args.ppo_clicks:
        ppo = ppo_wall_times(args.ppo_clicks)
        print(f"\nSB3 PPO, {ppo['clicks']} answers, {ppo['num_envs']} envs: DummyVecEnv "
              f"{ppo['current_dummy_vec_env']['wall_s']:.1f} s (learn "
              f"{ppo['current_dummy_vec_env']['learn_s']:.1f} s, in the env "
              f"{ppo['current_dummy_vec_env']['env_s']:.2f} s), native vector env "
              f"{ppo['native_vector_adapter']['wall_s']:.1f} s (learn "
              f"{ppo['native_vector_adapter']['learn_s']:.1f} s, in the env "
              f"{ppo['native_vector_adapter']['env_s']:.2f} s); same rewards "
              f"{ppo['same_rewards']}, same parameters {ppo['same_parameters']}")

    # -- feature extraction
    images = [generate(i, size=256).image for i in range(args.images)]
    speeds = []
    for name in [b for b in args.backbones.split(",") if b]:
        kwargs = {} if name == "lab_texture" else {"pretrained": False, "input_size": 224}
        ips = extraction_speed(name, images, **kwargs)
        note = "" if name == "lab_texture" else " (random weights: speed does not depend on them)"
        print(f"feature extraction {name}: {ips:,.1f} images/s{note}")
        speeds.append({"backbone": name, "images_per_s": ips,
                       "input": "256px -> 16x16 grid" if name == "lab_texture" else "224px"})

    headline = vector.get(str(HEADLINE_N), {}).get("ratios", {})
    result = {
        "betterworseseg_steps_per_s": statistics.median(bw_sps),
        "cartpole_steps_per_s": statistics.median(cp_sps),
        "ratio_vs_cartpole": statistics.median(ratios),
        "per_repeat": {"betterworseseg": bw_sps, "cartpole": cp_sps, "ratio": ratios},
        "vector": vector,
        "vector_ratio_vs_cartpole_64": headline.get("vs_cartpole copy=False wall", math.nan),
        "vector_speedup_vs_sync_64": headline.get("vs_sync copy=False wall", math.nan),
        "vector_ratio_vs_cartpole_64_copy": headline.get("vs_cartpole copy=True wall", math.nan),
        "vector_speedup_vs_sync_64_copy": headline.get("vs_sync copy=True wall", math.nan),
        "memory": memory, "ppo": ppo, "extraction": speeds, "machine": lib.machine(),
        "settings": {"steps": args.steps, "repeats": args.repeats, "num_envs": ns,
                     "seconds_per_timing": args.seconds, "obs_size": 128,
                     "grid": list(bw.unwrapped.grid), "images_in_rotation": n_images,
                     "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
    }
    lib.write_json(out / "env_throughput.json", result)
    lib.write_csv(out / "vector.csv", rows)
    lib.write_csv(out / "extraction.csv", speeds)
    lib.write_csv(out / "steps.csv", [{"repeat": i, "betterworseseg": b, "cartpole": c, "ratio": r}
                                  for i, (b, c, r) in enumerate(zip(bw_sps, cp_sps, ratios,
                                                                    strict=True))])
    run.record(seeds=[0], protocol="steady state (features and per-image state prepared before "
                              "timing); action_space.sample() actions; alternating repeats; "
                              "medians over repeats; env-steps/s = sub-envs x batched steps",
               datasets=[f"synthetic (BetterWorseSeg-v0 default, {n_images} images)"])
    _figure(result, ns, kinds, speeds, out / "env_throughput.png", lib.save_figure)
    print(f"wrote {out}/: run.json, env_throughput.json, vector.csv, steps.csv, extraction.csv, "
          "env_throughput.png")
    print(f"ratio_vs_cartpole: {result['ratio_vs_cartpole']:.3f}")
    print(f"vector_ratio_vs_cartpole_64_copy: {result['vector_ratio_vs_cartpole_64_copy']:.3f}")
    print(f"vector_speedup_vs_sync_64_copy: {result['vector_speedup_vs_sync_64_copy']:.2f}")
    print(f"vector_ratio_vs_cartpole_64: {result['vector_ratio_vs_cartpole_64']:.3f}")
    print(f"vector_speedup_vs_sync_64: {result['vector_speedup_vs_sync_64']:.2f}")


def _figure(result: dict[str, Any], ns: list[int], kinds: list[str], speeds: list[dict[str, Any]],
            path: Path, save_figure) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    axes[0].bar(["BetterWorseSeg-v0", "CartPole-v1"], [result["betterworseseg_steps_per_s"],
                                                        result["cartpole_steps_per_s"]],
                color=["tab:green", "tab:gray"])
    axes[0].set_ylabel("steps/s (median)")
    axes[0].set_title(f"single env, ratio {result['ratio_vs_cartpole']:.2f} (target 0.3)")
    styles = {"native copy=True": ("tab:green", "-"), "native copy=False": ("tab:green", "--"),
              "sync copy=True": ("tab:blue", "-"), "sync copy=False": ("tab:blue", "--"),
              "cartpole native": ("tab:gray", "-")}
    for kind in kinds:
        ys = [result["vector"][str(n)]["env_steps_per_s"][kind]["wall"] for n in ns]
        colour, line = styles.get(kind, ("black", ":"))
        axes[1].plot(ns, ys, marker="o", color=colour, linestyle=line, label=kind)
    axes[1].set_xscale("log", base=2)
    axes[1].set_yscale("log")
    axes[1].set_xlabel("sub-envs N")
    axes[1].set_ylabel("env-steps/s (median, wall)")
    axes[1].set_title(f"vector envs; at 64: {result['vector_ratio_vs_cartpole_64']:.2f} of "
                      f"CartPole, {result['vector_speedup_vs_sync_64']:.1f}x Sync (copy=False)")
    axes[1].legend(fontsize=8)
    axes[2].barh([s["backbone"] for s in speeds], [s["images_per_s"] for s in speeds])
    axes[2].set_xscale("log")
    axes[2].set_xlabel("images/s (log)")
    axes[2].set_title("feature extraction on this machine")
    save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    main()
