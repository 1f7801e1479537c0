"""The original experiments, shortened, on a GPU: does every stage run on CUDA, and how long?

Runs each original config (``kvasir-cvc``, ``busi``, ``isic2018``: DINOv2 ViT-B/14 with q/v LoRA
adapted every round, HSNet trained with the ``hsnet_released`` preset) for 2 rounds on a few
images, with **random weights** (nothing is downloaded: ``pretrained=False`` for the backbone and
the encoder), on CUDA, mixed precision on where the package has it (the LoRA triplet adaptation;
the segmenter and the agent train in float32). What is shortened: the number of images, rounds,
segmenter epochs (2) and triplet steps (10); everything else is the config's (input sizes, 352 px
multi-scale HSNet, 5 clicks, REINFORCE). Prints the seconds of every stage of every round
(setup, label, filter, adapt, train, predict, evaluate) and the peak CUDA memory; a config that
fails is reported with its error and the others still run (exit status 1 if any failed).

Images: the config's real data sets where they are found (``--data``, else
``$BOW_GYM_SHARED_DATA``, else ``../shared/data``, also its ``samples/`` folder), else the
embedded synthetic set (said in the output). The numbers are timings of a smoke test, not results
of the method: the weights are random.

``--device cpu --tiny`` shrinks the inputs (backbone 56 px, segmenter 64 px, one scale, one epoch)
so that a test runs the same code on a CPU in seconds.

Run: ``python -m benchmarks.gpu_check`` (``--help``); last line ``failed: <n>``. Writes
``gpu_check.csv``/``.json``, ``gpu_check.png`` and ``run.json`` under
``benchmarks/results/gpu_check/<run>/``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

#: The original experiments (``bow_gym/configs``).
CONFIGS = ("kvasir-cvc", "busi", "isic2018")
#: Stages of a round, in order (``seconds_<stage>`` in the run's ``times.json``).
STAGES = ("setup", "label", "filter", "adapt", "train", "predict", "evaluate")


def _root_for(root: str | None, data: Path | None) -> str | None:
    """A config root (``$BOW_GYM_SHARED_DATA/<name>``) found under ``data`` or its samples."""
    if root is None or data is None:
        return None
    name = Path(root).name
    for cand in (data / name, data / "samples" / name):
        if cand.is_dir():
            return str(cand)
    return None


def short_config(name: str, *, device: str, images: int, rounds: int, tiny: bool,
                 data: Path | None) -> tuple[Any, str]:
    """The config ``name``, shortened and with random weights; and where its images come from."""
    from bow_gym.rounds import load_config

    base = load_config(name)
    roots = [_root_for(base.root, data)] + [_root_for(e.get("root"), data)
                                             for e in base.extra_datasets]
    if all(roots):
        where = ", ".join(roots)
        extra = [dict(e, root=r) for e, r in zip(base.extra_datasets, roots[1:], strict=True)]
        data_fields: dict[str, Any] = dict(root=roots[0], extra_datasets=extra)
    else:
        where = "synthetic (the config's data sets were not found)"
        data_fields = dict(dataset="synthetic", root=None, extra_datasets=[],
                           dataset_kwargs={"n_images": max(images, 4)})
    cuda = device.startswith("cuda")
    segmenter = {"pretrained": False, "epochs": 2, "batch_size": 4}
    if tiny:
        segmenter.update(size=64, epochs=1, batch_size=2, scales=(1.0,))
    cfg = load_config(
        name, **data_fields, limit=images, rounds=rounds, device=device,
        label_envs=min(8, images), feature_cache="none", progress=False, tensorboard=False,
        backbone_kwargs={**base.backbone_kwargs, "pretrained": False,
                         **({"input_size": 56} if tiny else {})},
        segmenter_kwargs=segmenter,
        triplet_kwargs={"steps": 2 if tiny else 10, **({"amp": True} if cuda else {})})
    return cfg, where


def check_config(name: str, out: Path, **kwargs: Any) -> dict[str, Any]:
    """Runs one shortened config; its per-round stage times, or the error it raised."""
    import torch

    from bow_gym.rounds import run_rounds

    row: dict[str, Any] = {"config": name}
    t0 = time.perf_counter()
    cuda = str(kwargs["device"]).startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        cfg, row["data"] = short_config(name, **kwargs)
        row.update(datasets=[cfg.dataset] + [e["dataset"] for e in cfg.extra_datasets],
                   backbone=cfg.backbone, segmenter=cfg.segmenter, adapt=cfg.adapt,
                   images=cfg.limit, rounds=cfg.rounds)
        metrics = run_rounds(cfg, out / name, resume=False)
        first = {m["round"]: m for m in reversed(metrics)}  # stage times repeat on every row
        row["rounds_seconds"] = [
            {s: round(float(first[r].get(f"seconds_{s}", 0.0)), 2) for s in (*STAGES, "total")}
            for r in range(1, cfg.rounds + 1)]
        row["ok"] = True
    except Exception as e:  # reported, and the other configs still run
        row.update(ok=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    row["seconds"] = round(time.perf_counter() - t0, 1)
    if cuda:
        row["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from benchmarks.lib import save_figure

    bars = [(f"{r['config']}\nround {i + 1}", t) for r in rows if r["ok"]
            for i, t in enumerate(r["rounds_seconds"])]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(bars)), 3.5))
    bottom = np.zeros(len(bars))
    for stage in STAGES:
        vals = np.array([t[stage] for _, t in bars])
        ax.bar(range(len(bars)), vals, bottom=bottom, label=stage)
        bottom += vals
    ax.set_xticks(range(len(bars)), [b for b, _ in bars], fontsize=7)
    ax.set_ylabel("seconds")
    ax.set_title("time per stage (random weights, shortened configs)")
    ax.legend(fontsize=7)
    save_figure(fig, path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help="comma-separated original configs (default all three)")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:<i> or cpu")
    p.add_argument("--images", type=int, default=8, help="images per config (default 8)")
    p.add_argument("--rounds", type=int, default=2, help="rounds (default 2)")
    p.add_argument("--tiny", action="store_true",
                   help="small inputs (backbone 56 px, segmenter 64 px): a CPU smoke test")
    p.add_argument("--data", help="real-data folder (default $BOW_GYM_SHARED_DATA or "
                                  "../shared/data); 'synthetic' forces the embedded set")
    p.add_argument("--run", default=None, help="run name: writes to benchmarks/results/gpu_check/"
                                               "NAME/ (default: the device type)")
    p.add_argument("--out", metavar="DIR", help="output folder (overrides --run's)")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    if not names or any(n not in CONFIGS for n in names):
        p.error(f"--configs: expected a subset of {', '.join(CONFIGS)}, got {args.configs!r}")
    if args.images < 2 or args.rounds < 1:
        p.error(f"--images must be >= 2 and --rounds >= 1, got {args.images}, {args.rounds}")

    import torch

    from benchmarks import lib
    from bow_gym.segmenters.config import resolve_device

    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as e:
        p.error(f"--device: {e}")
    data = None if args.data == "synthetic" else lib.data_folder(p, args.data)
    run = lib.start_run("gpu_check", argv, args.out, args.run or (
        "cuda" if device.startswith("cuda") else "cpu") + ("_tiny" * args.tiny))
    out = run.out
    info = lib.machine()
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    print(f"device {device}" + (f" ({info['gpu']})" if "gpu" in info else "")
          + f", torch {torch.__version__}", flush=True)

    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for name in names:
            row = check_config(name, Path(tmp), device=device, images=args.images,
                               rounds=args.rounds, tiny=args.tiny, data=data)
            rows.append(row)
            print(f"{name}: data {row.get('data', '?')}; "
                  + ("ok" if row["ok"] else "FAILED " + row["error"])
                  + f" in {row['seconds']} s"
                  + (f", peak CUDA memory {row['peak_cuda_gib']} GiB" if "peak_cuda_gib" in row
                     else ""), flush=True)
            for i, t in enumerate(row.get("rounds_seconds", []), start=1):
                print(f"  round {i}: " + "  ".join(f"{s} {t[s]:.1f}" for s in (*STAGES, "total")),
                      flush=True)
            if not row["ok"]:
                print(row["traceback"], flush=True)

    table = [{"config": r["config"], "round": i, **t} for r in rows
             for i, t in enumerate(r.get("rounds_seconds", []), start=1)]
    lib.write_csv(out / "gpu_check.csv", table)
    lib.write_json(out / "gpu_check.json", {"rows": rows, "settings": vars(args), "device": device,
                                        "machine": info})
    _plot(rows, out / "gpu_check.png")
    run.record(seeds=[0], protocol=f"original configs shortened (2 rounds, few images), random "
                                   f"weights, device {device}: timings only",
               datasets=sorted({d for r in rows for d in r.get("datasets", [])}))
    failed = sum(not r["ok"] for r in rows)
    print(f"wrote {out}/gpu_check.csv, gpu_check.json, gpu_check.png, run.json")
    print(f"failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
