"""How much a "better" answer says about the first click: why reward-maximising agents plateau.

For every held-out image (the 20% test part of the seeded split of each ``--dataset``; by default
the embedded synthetic set and Kvasir-SEG when the real data is present) and every patch, a foreground click from an empty mask is
simulated with the environment's defaults (``lab_texture``, threshold 0.8, 128 px). Reported per
data set:

* ``better_share``: the share of patches whose click the Dice oracle answers "better" (from an
  empty mask: any overlap with the lesion);
* ``dice_if_better``: the mean Dice of those clicks, i.e. what a policy that has learned perfectly
  where "better" answers come from, but nothing more, gets from its first click on average;
* ``dice_best``: the Dice of the best single click (a propagation-aware ceiling);
* ``dice_gt_clicker``: the first click of the ground-truth-guided (RITM-style) clicker, which does
  not know how far a click propagates.

With ``--belief-ceiling`` it also trains the answer-model agent's belief network on the training
images' **ground-truth** patch shares (``--steps`` minibatches of 32, twice what the agent takes
in 2,000 clicks; a reference for what that network can learn from this data, not a result of the
method) and runs the agent greedily with it. ``--belief`` picks the network (``image``, the U-Net,
as first reported; ``features``; ``context``; ``hybrid``; ``residual``), ``--global-offset`` turns on the answer model's
image-wide offset (its default as an agent), ``--augment`` the agent's random flips (U-Net
beliefs), ``--seeds N`` averages the ceiling over N seeds.

Run: ``python -m benchmarks.first_click`` (``--help``); last line
``kvasir_dice_if_better: <value>``. Writes ``first_click.csv``/``.json``, ``first_click.png``
(per data set, the distribution of first-click Dice over the "better" patches) and ``run.json`` to
``benchmarks/results/first_click/<run>/``.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np

from benchmarks import lib


def ground_truth_per_patch(env) -> np.ndarray:
    """``(P,)`` ground-truth pixels in each patch of the env's current image (working
    resolution). **Evaluation only**: it reads the ground truth."""
    base = env.unwrapped
    (gh, gw), (ch, cw) = base.grid, base.cell
    gt = base.ground_truth_for_evaluation()
    return gt.reshape(gh, ch, gw, cw).sum(axis=(1, 3), dtype=np.int64).ravel().astype(np.float32)


def first_click_stats(env) -> tuple[dict[str, float], np.ndarray]:
    """Per-image means of the statistics above, and the Dice of every "better" first click."""
    from bow_gym.agent_registry import make_agent
    from bow_gym.policy import run_episode

    base = env.unwrapped
    rows, pooled = [], []
    for i in range(len(base.dataset)):
        base.reset(options={"index": i})
        # Evaluation code: reads the ground truth on purpose.
        gt_count = ground_truth_per_patch(env)
        graph = base.propagation_graph().astype(np.float32)
        selection_gt = graph @ gt_count  # ground-truth pixels inside each click's reach
        selection_size = graph.sum(axis=1).astype(np.int64)
        gt_pixels = float(gt_count.sum())
        if gt_pixels == 0:
            continue
        dice = 2.0 * selection_gt / (selection_size * base.patch_area + gt_pixels)
        better = selection_gt > 0
        gt_first = run_episode(env, make_agent("gt"), seed=i, options={"index": i}).dice[0]
        rows.append((better.mean(), dice[better].mean(), dice.max(), gt_first))
        pooled.append(dice[better])
    r = np.array(rows)
    keys = ("better_share", "dice_if_better", "dice_best", "dice_gt_clicker")
    return {k: float(v) for k, v in zip(keys, r.mean(0), strict=True)} | {"images": len(r)}, \
        np.concatenate(pooled)


def ceiling_training_set(train_env, belief: str) -> tuple[np.ndarray, np.ndarray]:
    """Belief inputs and **ground-truth** patch shares of every training image (built once and
    shared by all seeds of :func:`belief_ceiling`)."""
    from agents.answer_model import AnswerModelAgent

    base = train_env.unwrapped
    reader = AnswerModelAgent(base.grid, belief=belief)  # for its belief_inputs only
    images, targets = [], []
    for i in range(len(base.dataset)):
        obs, _ = base.reset(options={"index": i})
        images.append(reader.belief_inputs(obs, base))
        targets.append(ground_truth_per_patch(train_env) / base.patch_area)  # the bound's point
    return np.stack(images), np.stack(targets).astype(np.float32)


def belief_ceiling(train_set: tuple[np.ndarray, np.ndarray], test_env, steps: int, seed: int,
                   belief: str = "image", global_offset: bool = False,
                   augment: bool = False) -> dict[str, Any]:
    """The answer-model agent with its belief network trained on ground truth (an upper bound).

    ``train_set`` comes from :func:`ceiling_training_set` with the same ``belief``, which picks
    the agent's belief network; ``global_offset`` the image-wide posterior offset (off by default,
    as in the first reference reported in benchmarks/RESULTS.md; the agent's default is on);
    ``augment`` the agent's random flips of each minibatch (U-Net beliefs only).
    """
    import torch

    from agents.answer_model import AnswerModelAgent, flip_augment

    torch.manual_seed(seed)
    # The agent refuses augment with a belief that reads no image.
    agent = AnswerModelAgent(test_env.unwrapped.grid, belief=belief, global_offset=global_offset,
                             augment=augment, online_batch=0, greedy=True, seed=seed)
    x, y = train_set
    agent.net.train()
    agent.belief_logits(x[:32])  # sizes a lazy input layer before the optimiser sees it
    opt = torch.optim.Adam(agent.net.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.integers(len(x), size=32)
        xb, yb = x[idx], y[idx]
        if agent.augment:  # flip_augment mirrors two patch masks; the target stands in for both
            xb, yb, _ = flip_augment(xb, yb, yb, agent.grid, rng)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            agent.belief_logits(xb), torch.as_tensor(yb))
        opt.zero_grad()
        loss.backward()
        opt.step()
    agent.net.eval()
    res = lib.evaluate(agent, test_env, seed)
    return {"ceiling_dice@1": res["dice"][0], "ceiling_dice@5": res["dice"][-1],
            "ceiling_better_share": res["better_share"], "ceiling_steps": steps}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.first_click", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    lib.add_data_arguments(p)
    p.add_argument("--belief-ceiling", action="store_true",
                   help="also train the answer-model belief on ground truth (an upper bound)")
    p.add_argument("--belief", default="image",
                   choices=("image", "features", "context", "hybrid", "residual"),
                   help="belief network of the ceiling (default image: the U-Net, as reported)")
    p.add_argument("--global-offset", action="store_true",
                   help="the ceiling agent also updates an image-wide offset from the answers "
                        "(the answer model's default; off by default here, as first reported)")
    p.add_argument("--augment", action="store_true",
                   help="random flips of each training minibatch, as the agent's augment=True "
                        "(U-Net beliefs: image, hybrid, residual)")
    p.add_argument("--steps", type=int, default=1000,
                   help="gradient steps (batches of 32) of the belief ceiling")
    p.add_argument("--seeds", type=int, default=1,
                   help="belief-ceiling seeds 0..N-1; their mean is reported (default 1)")
    lib.add_output_arguments(p, "first_click")
    args = p.parse_args(argv)
    if args.seeds < 1 or args.steps < 1:
        p.error(f"--seeds and --steps must be >= 1, got {args.seeds} and {args.steps}")
    from agents.answer_model import UNET_BELIEFS

    if args.augment and args.belief not in UNET_BELIEFS:
        p.error(f"--augment flips images: it needs --belief image, hybrid or residual, "
                f"got {args.belief}")

    import gymnasium as gym

    import bow_gym  # noqa: F401

    sources, _ = lib.data_sources(p, args)
    cfgs = lib.data_configs(sources)
    run = lib.start_run("first_click", argv, args.out, args.run)
    out = run.out
    rows, pooled = [], {}
    for name, cfg in cfgs.items():
        test_env = gym.make("BetterWorseSeg-v0", **cfg["test"])
        stats, pooled[name] = first_click_stats(test_env)
        row = {"dataset": name, **stats}
        if args.belief_ceiling:
            train_env = gym.make("BetterWorseSeg-v0", **cfg["train"])
            train_set = ceiling_training_set(train_env, args.belief)
            runs = [belief_ceiling(train_set, test_env, args.steps, seed=seed, belief=args.belief,
                                   global_offset=args.global_offset, augment=args.augment)
                    for seed in range(args.seeds)]
            row.update({k: float(np.mean([r[k] for r in runs])) for k in runs[0]})
            row["ceiling_steps"] = args.steps
            if args.seeds > 1:
                row["ceiling_dice@5_per_seed"] = " ".join(f"{r['ceiling_dice@5']:.4f}"
                                                          for r in runs)
        rows.append(row)
        print("  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in row.items()))
    lib.write_csv(out / "first_click.csv", rows)
    lib.write_json(out / "first_click.json", {
        "rows": rows, "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "machine": lib.machine()})

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 3.5), squeeze=False)
    for ax, row in zip(axes[0], rows, strict=True):
        ax.hist(pooled[row["dataset"]], bins=40, range=(0, 1), color="tab:gray")
        for key, colour in (("dice_if_better", "tab:blue"), ("dice_gt_clicker", "tab:green"),
                            ("dice_best", "tab:red")):
            ax.axvline(row[key], color=colour, label=f"{key} {row[key]:.2f}")
        ax.set_title(f"{row['dataset']}: Dice of first clicks answered 'better'")
        ax.set_xlabel("Dice after one foreground click from an empty mask")
        ax.set_ylabel("patches (all held-out images)")
        ax.legend(fontsize=8)
    lib.save_figure(fig, out / "first_click.png")
    plt.close(fig)
    run.record(seeds=range(args.seeds) if args.belief_ceiling else [], protocol="heldout",
               datasets=list(cfgs))
    print(f"wrote {out}/first_click.csv, first_click.json, first_click.png, run.json")
    kv = next((r for r in rows if r["dataset"] == "kvasir-seg"), None)
    print(f"kvasir_dice_if_better: {kv['dice_if_better']:.3f}" if kv else
          f"kvasir_dice_if_better: {math.nan}")


if __name__ == "__main__":
    main()
