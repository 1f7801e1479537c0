"""Steps per second of BetterWorseSeg-v0 against CartPole-v1, and feature extraction speed.

Both environments are made with ``gym.make`` (so both carry the same default wrappers) and driven
by ``action_space.sample()``, resets included. BetterWorseSeg runs with its features and
per-image state already cached (every image visited once before timing): the steady state of
training. Timing alternates between the two envs over several repeats, and the reported figures
are medians, so a busy machine slows both alike.

Run: ``python -m benchmarks.env_throughput`` (``--help`` for options); writes to
``benchmarks/results/env_throughput/<run>/``. Last line: ``ratio_vs_cartpole: <median ratio>``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from benchmarks import lib


def steps_per_second(env, n_steps: int) -> float:
    env.reset(seed=0)
    env.action_space.seed(0)
    t0 = time.perf_counter()
    for _ in range(n_steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    return n_steps / (time.perf_counter() - t0)


def extraction_speed(name: str, images: list[np.ndarray], **kwargs) -> float:
    from bow_gym.backbones import create_backbone

    bb = create_backbone(name, **kwargs)
    bb.extract(images[:2])  # warm-up (allocations, lazy init)
    t0 = time.perf_counter()
    bb.extract(images)
    return len(images) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.env_throughput", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=20000, help="steps per repeat (default 20000)")
    p.add_argument("--repeats", type=int, default=5, help="alternating repeats (default 5)")
    p.add_argument("--images", type=int, default=16, help="images for extraction speed")
    p.add_argument("--backbones", default="lab_texture,dinov2_vits14,dinov2_vitb14",
                   help="comma-separated backbones to time")
    lib.add_output_arguments(p, "env_throughput")
    args = p.parse_args(argv)

    import gymnasium as gym

    import bow_gym  # noqa: F401
    from bow_gym.datasets.synthetic import generate

    run = lib.start_run("env_throughput", argv, args.out, args.run)
    out = run.out
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

    images = [generate(i, size=256).image for i in range(args.images)]
    speeds = []
    for name in [b for b in args.backbones.split(",") if b]:
        kwargs = {} if name == "lab_texture" else {"pretrained": False, "input_size": 224}
        ips = extraction_speed(name, images, **kwargs)
        note = "" if name == "lab_texture" else " (random weights: speed does not depend on them)"
        print(f"feature extraction {name}: {ips:,.1f} images/s{note}")
        speeds.append({"backbone": name, "images_per_s": ips,
                       "input": "256px -> 16x16 grid" if name == "lab_texture" else "224px"})

    result = {
        "betterworseseg_steps_per_s": statistics.median(bw_sps),
        "cartpole_steps_per_s": statistics.median(cp_sps),
        "ratio_vs_cartpole": statistics.median(ratios),
        "per_repeat": {"betterworseseg": bw_sps, "cartpole": cp_sps, "ratio": ratios},
        "extraction": speeds, "machine": lib.machine(),
        "settings": {"steps": args.steps, "repeats": args.repeats, "obs_size": 128,
                     "grid": list(bw.unwrapped.grid), "images_in_rotation": n_images},
    }
    lib.write_json(out / "env_throughput.json", result)
    lib.write_csv(out / "extraction.csv", speeds)
    lib.write_csv(out / "steps.csv", [{"repeat": i, "betterworseseg": b, "cartpole": c, "ratio": r}
                                  for i, (b, c, r) in enumerate(zip(bw_sps, cp_sps, ratios,
                                                                    strict=True))])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].bar(["BetterWorseSeg-v0", "CartPole-v1"], [result["betterworseseg_steps_per_s"],
                                                        result["cartpole_steps_per_s"]],
                color=["tab:green", "tab:gray"])
    axes[0].set_ylabel("steps/s (median)")
    axes[0].set_title(f"env throughput, ratio {result['ratio_vs_cartpole']:.2f} (target 0.3)")
    axes[1].barh([s["backbone"] for s in speeds], [s["images_per_s"] for s in speeds])
    axes[1].set_xscale("log")
    axes[1].set_xlabel("images/s (log)")
    axes[1].set_title("feature extraction on this machine")
    lib.save_figure(fig, out / "env_throughput.png")
    run.record(seeds=[0], protocol=None, datasets=["synthetic"])
    print(f"wrote {out}/env_throughput.json, steps.csv, extraction.csv, env_throughput.png")
    print(f"ratio_vs_cartpole: {result['ratio_vs_cartpole']:.3f}")


if __name__ == "__main__":
    main()
