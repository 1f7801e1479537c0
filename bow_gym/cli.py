"""The ``bow-gym`` command line: ``demo``, ``list``, ``featurize``, ``rounds``, ``train-segmenter``,
``figures``, ``annotate``."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from bow_gym.io_utils import atomic_write_bytes


def _env_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if args.dataset:
        kwargs["dataset"] = args.dataset
    if args.root:
        kwargs["root"] = args.root
    if args.backbone:
        kwargs["backbone"] = args.backbone
    if args.checkpoint:
        kwargs["backbone_kwargs"] = {"checkpoint": args.checkpoint}
    if getattr(args, "limit", None) is not None:
        kwargs.setdefault("dataset_kwargs", {})["limit"] = args.limit
    return kwargs


#: How the demo's figure names the reference clickers.
_DEMO_POLICY_LABELS = {"random": "random clicking", "gt": "ground-truth clicker"}


def cmd_demo(args: argparse.Namespace) -> int:
    """A few episodes with the reference clickers: Dice table and a PNG of rendered episodes."""
    import gymnasium as gym
    import numpy as np

    import bow_gym  # noqa: F401 - registers the envs
    from bow_gym.agent_registry import make_agent
    from bow_gym.policy import run_episode
    from bow_gym.render import EpisodeRow, episodes_figure, write_png

    env = gym.make(args.env, render_mode="rgb_array", render_scale=2,
                   render_ground_truth=True, **_env_kwargs(args))
    base = env.unwrapped
    n = min(args.episodes, len(base.dataset))
    rng = np.random.default_rng(args.seed)
    indices = sorted(rng.choice(len(base.dataset), size=n, replace=False).tolist())
    policies = [make_agent("random"), make_agent("gt")]
    rows, figure_rows = [], []
    print(f"{args.env}: {base.dataset.name}, backbone {base.backbone.name}, "
          f"{base.clicks_per_episode} clicks, threshold {base.threshold}")
    print(f"{'image':<22} {'policy':<7} {'dice_before':>11} {'dice_after':>10}  answers")
    for i, index in enumerate(indices):
        for policy in policies:
            rec = run_episode(env, policy, seed=args.seed + i, options={"index": index},
                              render=True)
            answers = "".join("+" if r > 0 else "-" for r in rec.rewards)
            print(f"{rec.image_id:<22} {policy.name:<7} {rec.initial_dice:>11.3f} "
                  f"{rec.final_dice:>10.3f}  {answers}")
            rows.append({"image_id": rec.image_id, "policy": policy.name,
                         "dice_before": rec.initial_dice, "dice_after": rec.final_dice,
                         "dice_per_click": rec.dice, "rewards": rec.rewards})
            figure_rows.append(EpisodeRow(
                policy=_DEMO_POLICY_LABELS.get(policy.name, policy.name), image_id=rec.image_id,
                frames=rec.frames, dice=[rec.initial_dice, *rec.dice], answers=rec.rewards))
    for policy in policies:
        after = [r["dice_after"] for r in rows if r["policy"] == policy.name]
        print(f"mean dice after {base.clicks_per_episode} clicks, {policy.name}: "
              f"{float(np.mean(after)):.3f}")
    out = Path(args.out)
    title = (f"{args.env}: {base.dataset.name}, backbone {base.backbone.name}, "
             f"threshold {base.threshold}; Dice against the ground truth (evaluation only)")
    write_png(out / "episodes.png", episodes_figure(figure_rows, title=title))
    atomic_write_bytes(out / "demo.json", json.dumps(rows, indent=1).encode())
    print(f"wrote {out / 'episodes.png'} (one row per image and policy, labelled; "
          f"columns: start, click 1..{base.clicks_per_episode}; Dice under each panel)")
    print(f"wrote {out / 'demo.json'}")
    env.close()
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Registered envs, data sets, backbones and agents."""
    import bow_gym
    from bow_gym.agent_registry import list_agents
    from bow_gym.backbones import list_backbones
    from bow_gym.datasets import list_datasets

    print("envs:      " + ", ".join(bow_gym.ENV_VARIANTS))
    print("datasets:  " + ", ".join(list_datasets()))
    print("backbones: " + ", ".join(list_backbones()))
    print("agents:    " + ", ".join(list_agents()))
    print("  (bow-gym rounds --agent: " + ", ".join(list_agents(buildable=True)) + ")")
    return 0


def cmd_featurize(args: argparse.Namespace) -> int:
    """Fill the feature cache for a data set (progress bar); shared over processes/GPUs under
    torchrun or accelerate launch."""
    import gymnasium as gym

    import bow_gym  # noqa: F401
    from bow_gym import distributed

    # Before the env: under a GPU launch it selects this process's GPU for the backbone.
    accelerator = distributed.accelerator_for("auto")
    env = gym.make(args.env, **_env_kwargs(args))
    if accelerator is not None:
        counts = distributed.featurize(env, accelerator, progress=True)
        if accelerator.is_main_process:
            print(f"{counts['images']} images over {accelerator.num_processes} processes; cache "
                  f"{env.unwrapped.features.cache_dir}; found {counts['hits']}, computed "
                  f"{counts['computed']}, written {counts['written']} (by the main process)")
        return 0
    env.unwrapped.precompute_features(progress=True)
    cache = env.unwrapped.features
    print(f"{len(env.unwrapped.dataset)} images; cache {cache.cache_dir}; "
          f"hits {cache.hits}, misses {cache.misses}")
    return 0


def cmd_rounds(args: argparse.Namespace) -> int:
    """The multi-round method: clicks, pseudo-masks, segmenter, evaluation; resumable."""
    from bow_gym.rounds import load_config, parse_set, run_rounds

    overrides: dict[str, Any] = {
        "dataset": args.dataset, "rounds": args.rounds, "clicks_per_image": args.clicks_per_image,
        "agent": args.agent, "protocol": args.protocol, "limit": args.limit,
        "backbone": args.backbone, "segmenter": args.segmenter, "top_k": args.top_k,
        "seed": args.seed, "device": args.device, "name": args.name,
    }
    if args.lora is not None:
        print("--lora is deprecated: use --adapt (LoRA on DINOv2, the feature head on "
              "lab_texture)", file=sys.stderr)
        args.adapt = args.lora if args.adapt is None else args.adapt
    if args.adapt is not None:
        overrides["adapt"] = args.adapt
    if args.checkpoint:
        overrides["backbone_kwargs"] = {"checkpoint": args.checkpoint}
    if args.dataset:
        overrides["dataset_kwargs"] = {}  # the config's data-set arguments belong to its data set
    for item in args.set or []:
        key, value = parse_set(item)
        overrides[key] = value
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.root:
        overrides["root"] = args.root
    elif args.dataset:
        overrides["root"] = None  # another data set than the config's: not the config's folder
    if args.seeds is not None or args.sweep:
        return _rounds_sweep(args, overrides)
    config = load_config(args.config, **overrides)
    out = Path(args.out or f"runs/rounds/{config.name}")
    print(f"run {out}: {config.dataset} ({config.protocol}), agent {config.agent}, backbone "
          f"{config.backbone}, segmenter {config.segmenter}, {config.rounds} rounds x "
          f"{config.clicks_per_image} clicks per image")
    rows = run_rounds(config, out, resume=not args.no_resume)
    # Targets such as prediction[non-empty-gt]: images with empty ground truth reported apart.
    tw = max([11] + [len(row["target"]) for row in rows])
    print(f"{'round':>5} {'target':<{tw}} {'split':<5} {'n':>5} {'dice':>6} {'95% CI':>15} "
          f"{'hd95':>7} {'better':>6} {'sec':>7}")
    for row in rows:
        if row["fill_holes"]:
            continue
        print(f"{row['round']:>5} {row['target']:<{tw}} {row['split']:<5} {row['n']:>5} "
              f"{row['dice_mean']:>6.3f} [{row['dice_ci_low']:.3f},{row['dice_ci_high']:.3f}] "
              f"{row['hd95_mean']:>7.1f} {row['better_share']:>6.2f} "
              f"{row.get('seconds_total', float('nan')):>7.1f}")
    print(f"wrote {out / 'metrics.csv'}; figures: bow-gym figures {out}")
    return 0


def _rounds_sweep(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """``bow-gym rounds --seeds/--sweep``: every variant x seed as a unit of one sweep."""
    import numpy as np

    from bow_gym.rounds import load_config
    from bow_gym.rounds_sweep import parse_seeds, read_rounds_sweep, run_rounds_sweep
    from bow_gym.sweep import SweepOptions

    if "seed" in overrides:
        raise ValueError("--seed runs one seed; give the seeds of a sweep with --seeds")
    seeds, variants, scheduler = read_rounds_sweep(args.sweep) if args.sweep else (None, None, {})
    if args.seeds is not None:
        seeds = parse_seeds(args.seeds, "--seeds")
    config = load_config(args.config, **overrides)
    seeds = seeds or [config.seed]
    # The file's scheduling keys, then the flags given on the command line.
    given = {"backend": args.backend, "ray_address": args.ray_address, "threads": args.threads,
             "jobs": args.jobs if args.jobs != 1 else None,
             "retries": args.retries if args.retries != 3 else None}
    options = SweepOptions(**{**scheduler, **{k: v for k, v in given.items() if v is not None}},
                           resume=not args.no_resume)
    out = Path(args.out or f"runs/rounds/{config.name}-sweep")
    names = list(variants or {"base": {}})
    print(f"sweep {out}: {config.dataset} ({config.protocol}), variants {', '.join(names)} x seeds "
          f"{seeds}, {options.resolved_backend} ({options.ray_address or f'{options.jobs} at a time'})")
    rows = run_rounds_sweep(args.config, overrides, seeds, variants, out, options)
    print(f"{'variant':<20} {'round':>5} {'prediction dice, mean over seeds':>33}")
    for name in names:
        pred = [r for r in rows if r["variant"] == name and r["target"] == "prediction"
                and not r["fill_holes"]]
        for rnd in sorted({r["round"] for r in pred}):
            dice = [r["dice_mean"] for r in pred if r["round"] == rnd]
            print(f"{name:<20} {rnd:>5} {float(np.mean(dice)):>10.3f} ({len(dice)} seeds)")
    print(f"wrote {out / 'sweep.csv'}; figures: bow-gym figures {out}/*-s*/")
    return 0


def cmd_train_segmenter(args: argparse.Namespace) -> int:
    """Train a segmenter on a config's labelling images (ground truth, or a round's pseudo-masks
    with --labels); on several processes/GPUs under torchrun or accelerate launch."""
    from bow_gym import distributed
    from bow_gym.io_utils import write_json
    from bow_gym.rounds import Labels, build_datasets, load_config, load_in_memory, parse_set
    from bow_gym.segmenters import build_segmenter, preset, save_segmenter, train_segmenter

    overrides: dict[str, Any] = {k: v for k, v in {
        "dataset": args.dataset, "root": args.root, "limit": args.limit, "protocol": args.protocol,
        "segmenter": args.segmenter, "seed": args.seed, "device": args.device}.items()
        if v is not None}
    for item in args.set or []:
        key, value = parse_set(item)
        overrides[key] = value
    config = load_config(args.config, **overrides)
    main = distributed.is_main_process()
    label_lazy, _ = build_datasets(config)
    label_ds = load_in_memory(label_lazy, progress=config.progress and main)
    images = [s.image for s in label_ds.samples]
    if args.labels:
        labels = Labels.load(Path(args.labels))
        images = [images[label_ds.index_of(i)] for i in labels.ids]
        masks, source = list(labels.pseudo), f"the pseudo-masks of {args.labels}"
    else:
        masks = [s.mask for s in label_ds.samples]
        source = "their ground truth (the supervised upper bound, not the method)"
    seg_kwargs = dict(config.segmenter_kwargs)
    seg_cfg = preset(config.segmenter, **{"seed": config.seed, "device": config.device,
                                          "progress": config.progress and main, **seg_kwargs})
    if main:
        print(f"train {seg_cfg.name} ({config.segmenter}) on {len(images)} {config.dataset} "
              f"images with {source}: {seg_cfg.epochs} epochs, global batch {seg_cfg.batch_size}, "
              f"{seg_cfg.size} px, {distributed.world_size()} process(es)")
    model = build_segmenter(seg_cfg)
    history = train_segmenter(model, images, masks, seg_cfg)
    if not main:
        return 0
    out = Path(args.out)
    steps_images = len(images) * seg_cfg.epochs * len(seg_cfg.scales)
    speed = steps_images / history["seconds"]
    save_segmenter(model, out / "segmenter.safetensors", seg_cfg)
    write_json(out / "train.json", {"config": args.config, "overrides": overrides,
                                    "masks": source, "images_per_s": speed, **history})
    print(f"loss per epoch: {', '.join(f'{v:.4f}' for v in history['loss'])}")
    print(f"{history['seconds']:.1f} s, {speed:.2f} images/s on {history['processes']} "
          f"process(es) ({history['device']}); wrote {out / 'segmenter.safetensors'}, "
          f"{out / 'train.json'}")
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    """The method's figures (Dice/HD95 per round, distributions, rewards, examples) of runs."""
    from bow_gym.figures import main as figures_main

    argv = [*args.runs] + (["--out", args.out] if args.out else []) + (
        ["--labels", args.labels] if args.labels else [])
    return figures_main(argv)


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (0 would otherwise read as "no limit" or "nothing")."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _add_env_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", default="BetterWorseSeg-v0", help="registered env id")
    p.add_argument("--dataset", help="data set name (default: the env's, synthetic)")
    p.add_argument("--root", help="data set folder (file-based data sets)")
    p.add_argument("--backbone", help="backbone name (default: lab_texture, weight-free)")
    p.add_argument("--checkpoint", help="local weights file for a DINOv2 backbone")
    p.add_argument("--limit", type=_positive_int, help="use only the first N images")


class RenamedFlag(argparse.Action):
    """A deprecated flag: stores into the new flag's ``dest`` and warns, naming the new flag."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: Any):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        warnings.warn(f"{option_string} is deprecated: use {self.new}", FutureWarning,
                      stacklevel=2)
        setattr(namespace, self.dest, values)


def add_renamed_flag(parser: argparse.ArgumentParser, old: str, new: str, dest: str,
                     **kwargs: Any) -> None:
    """``old`` as a hidden, deprecated spelling of ``new`` (same ``dest``; using it warns,
    naming ``new``); ``kwargs`` as for ``add_argument`` (``type``)."""
    parser.add_argument(old, action=RenamedFlag, new=new, dest=dest, help=argparse.SUPPRESS,
                        **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from bow_gym.agent_registry import list_agents

    parser = argparse.ArgumentParser(prog="bow-gym", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help=cmd_demo.__doc__)
    _add_env_args(p)
    p.add_argument("--episodes", type=_positive_int, default=4,
                   help="images to label (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("list", help=cmd_list.__doc__)
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("featurize", help=cmd_featurize.__doc__)
    _add_env_args(p)
    p.set_defaults(func=cmd_featurize)

    p = sub.add_parser("rounds", help=cmd_rounds.__doc__)
    p.add_argument("--config", default="synthetic",
                   help="shipped config name (synthetic, kvasir-cpu, kvasir-cvc, busi, isic2018) "
                   "or a TOML file (default synthetic)")
    p.add_argument("--dataset", help="data set name")
    p.add_argument("--root", help="data set folder")
    p.add_argument("--rounds", type=int, help="rounds (default 5)")
    p.add_argument("--clicks-per-image", type=int, help="clicks per image and round (default 5)")
    add_renamed_flag(p, "--clicks", "--clicks-per-image", "clicks_per_image", type=int)
    p.add_argument("--agent", choices=list_agents(buildable=True),
                   help="clicking agent (bow_gym.agent_registry; the learners learn online)")
    p.add_argument("--protocol", choices=["heldout", "transductive"], help="evaluation protocol")
    p.add_argument("--limit", type=int, help="use only the first N images")
    p.add_argument("--backbone", help="backbone name (lab_texture, dinov2_vits14, ...)")
    p.add_argument("--checkpoint", help="local DINOv2 weights file")
    p.add_argument("--segmenter", choices=["light", "hsnet", "hsnet_released"],
                   help="segmenter preset")
    p.add_argument("--top-k", dest="top_k", type=float, help="share of pseudo-masks kept")
    p.add_argument("--adapt", action=argparse.BooleanOptionalAction, default=None,
                   help="adapt the backbone each round (LoRA on DINOv2, a feature head on "
                        "lab_texture)")
    p.add_argument("--lora", action=argparse.BooleanOptionalAction, default=None,
                   help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help="seed of the run")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--name", help="name of the run in tables and figures")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any config field, value in TOML syntax (repeatable), e.g. "
                   "--set 'segmenter_kwargs={epochs=2}'")
    p.add_argument("--out", help="run folder (default runs/rounds/<name>, with --seeds or --sweep "
                   "runs/rounds/<name>-sweep); resumed if present")
    p.add_argument("--no-resume", action="store_true", help="refuse to reuse an existing run")
    p.add_argument("--seeds", help="a sweep over seeds (0,1,2 or a count): one run per seed "
                   "(and variant, with --sweep) in <out>/<variant>-s<seed>/ (bow_gym.rounds_sweep)")
    from bow_gym.rounds_sweep import FILE_KEYS
    from bow_gym.sweep import add_sweep_arguments

    add_sweep_arguments(p, file_keys=FILE_KEYS, resume=False)
    p.set_defaults(func=cmd_rounds)

    p = sub.add_parser("train-segmenter", help=cmd_train_segmenter.__doc__)
    p.add_argument("--config", default="synthetic",
                   help="shipped config name or TOML file: data, protocol, segmenter preset and "
                   "segmenter_kwargs (default synthetic)")
    p.add_argument("--dataset", help="data set name")
    p.add_argument("--root", help="data set folder")
    p.add_argument("--limit", type=int, help="use only the first N images")
    p.add_argument("--protocol", choices=["heldout", "transductive"],
                   help="which images: the training part (heldout) or all (transductive)")
    p.add_argument("--segmenter", choices=["light", "hsnet", "hsnet_released"],
                   help="segmenter preset")
    p.add_argument("--seed", type=int, help="seed of the split and the training")
    p.add_argument("--device", help="auto, cpu or cuda (under a launcher: one GPU per process)")
    p.add_argument("--labels", help="a rounds run's round_NN/labels.npz: train on its pseudo-masks "
                   "(default: the images' ground truth, the supervised upper bound)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any config field, e.g. --set 'segmenter_kwargs={epochs=2}'")
    p.add_argument("--out", default="runs/segmenter",
                   help="folder of segmenter.safetensors and train.json (default runs/segmenter)")
    p.set_defaults(func=cmd_train_segmenter)

    p = sub.add_parser("figures", help=cmd_figures.__doc__)
    p.add_argument("runs", nargs="+", help="run folders (several: overlaid, e.g. an ablation)")
    p.add_argument("--out", help="output folder (default <first run>/figures)")
    p.add_argument("--labels", help="comma-separated names of the runs")
    p.set_defaults(func=cmd_figures)

    from bow_gym.annotate.cli import add_parser as add_annotate_parser

    add_annotate_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from gymnasium.error import Error as GymError  # e.g. an unknown --env id

    args = build_parser().parse_args(argv)
    try:
        if args.command == "annotate":
            from bow_gym.annotate.cli import check_args

            check_args(args)
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, RuntimeError,
            GymError, ImportError) as e:
        # Bad input, unavailable weights (RuntimeError, e.g. DINOv2 offline) and a run folder
        # that --no-resume refuses are the user's to fix: one line naming what is wrong, not a
        # traceback.
        print(f"bow-gym {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
