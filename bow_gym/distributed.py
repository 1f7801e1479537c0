"""Several processes or GPUs for the heavy work, with Hugging Face Accelerate: segmenter training
(:func:`bow_gym.segmenters.train_segmenter`, ``bow-gym train-segmenter``) and feature extraction
(``bow-gym featurize``) under ``torchrun`` or ``accelerate launch``.

Launched by one of them (``WORLD_SIZE`` > 1 in the environment), the work is shared:

* **training**: data-parallel (DDP through :class:`accelerate.Accelerator`; gloo on CPUs, NCCL on
  GPUs). Every process draws the same image order and augmentations (same seeded generator), and
  takes its contiguous part of each global batch of ``batch_size`` images; gradients are averaged
  over processes, weighted by each part's size, so that one optimiser step sees the gradient of
  the whole batch's mean loss, as in one process. The loss curve is the global batch's. On GPUs
  BatchNorm layers become ``SyncBatchNorm`` for the training (statistics over the global batch)
  and BatchNorm again afterwards; on CPUs torch has no synchronised BatchNorm, so each process
  normalises by its own part's statistics (the one difference from one process; see
  ``docs/scaling.md`` for what it does to the loss curve);
* **features**: the images are split over the processes; each extracts its share on its own
  device and sends the features to the main process, which alone writes the cache entries
  (atomically, under the cache's file locks), so nodes need no shared cache folder.

Only the main process writes files or logs. Without a launcher nothing changes: one process, the
same code path as before, bit for bit.

Launching (``docs/scaling.md``): ``torchrun --nproc_per_node N -m bow_gym.cli ...`` on CPUs or
GPUs; ``accelerate launch --multi_gpu --num_processes N -m bow_gym.cli ...`` on GPUs (it runs
torchrun). ``accelerate launch --cpu --num_processes N`` starts one process only: use torchrun for
several CPU processes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["DataParallel", "accelerator_for", "featurize", "is_main_process", "launched",
           "world_size"]


def world_size() -> int:
    """Processes of the launch this process belongs to (1 without a launcher)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def launched() -> bool:
    """Whether this process is one of several started by ``torchrun``/``accelerate launch``."""
    return world_size() > 1


def is_main_process() -> bool:
    """Whether this process is the launch's main one (rank 0), or runs alone: the one that
    writes files."""
    return os.environ.get("RANK", "0") == "0"


def accelerator_for(device: str = "auto") -> Any | None:
    """An :class:`accelerate.Accelerator` for this launch, or ``None`` in a single process.

    Args:
        device: ``"cpu"`` keeps the processes on CPUs (gloo) even where GPUs exist; ``"auto"``
            and ``"cuda"`` use one GPU per process when there are GPUs.
    """
    if not launched():
        return None
    import torch
    from accelerate import Accelerator

    # cpu=True also where there is no GPU: without it, Accelerate under torchrun on a CPU-only
    # machine sets up no process group and every process would believe it is alone.
    return Accelerator(cpu=str(device) == "cpu" or not torch.cuda.is_available())


class DataParallel:
    """Each process's part of a global batch, and the reductions that make N processes train
    as one (see the module docstring). Built by ``train_segmenter`` under a launcher.

    Attributes:
        accelerator: The launch's :class:`accelerate.Accelerator`.
        rank: This process's index.
        world: Number of processes.
    """

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator
        self.rank = accelerator.process_index
        self.world = accelerator.num_processes
        self._sync_bn = False

    @property
    def is_main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    def prepare(self, model, optimizer):
        """``(ddp_model, optimizer)``: the model wrapped for DDP (BatchNorm synchronised on
        GPUs); ``model`` itself keeps the trained weights."""
        import torch

        if self.accelerator.device.type == "cuda":
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # children replaced in place
            self._sync_bn = True
        return self.accelerator.prepare(model, optimizer)

    def part(self, n: int) -> tuple[int, int]:
        """``[start, stop)`` of this process's part of a batch of ``n`` (contiguous; the parts'
        sizes differ by at most one, the first ones larger)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def take(self, *arrays: np.ndarray) -> tuple[tuple[np.ndarray, ...], int]:
        """This process's part of each array (first axis), and its size. A process whose part is
        empty gets the batch's first sample, to be weighted 0 (every process must run forward
        and backward for DDP's gradient averaging)."""
        n = len(arrays[0])
        start, stop = self.part(n)
        if stop == start:
            return tuple(a[:1] for a in arrays), 0
        return tuple(a[start:stop] for a in arrays), stop - start

    def loss_to_backward(self, loss, own: int, total: int):
        """The local loss scaled so that DDP's mean over processes is the gradient of the global
        batch's mean loss: ``loss * world * own / total``."""
        return loss * (self.world * own / total)

    def mean_loss(self, loss, own: int, total: int) -> float:
        """The global batch's mean loss (each process's mean weighted by its part's size)."""

        value = (loss.detach().float() * own).reshape(1)
        return float(self.accelerator.reduce(value, reduction="sum")) / total

    def finish(self, model) -> None:
        """Undoes :meth:`prepare`'s SyncBatchNorm and frees Accelerate's references."""
        if self._sync_bn:
            _revert_sync_batchnorm(model)
        self.accelerator.free_memory()


def _revert_sync_batchnorm(module):
    """Replaces every ``SyncBatchNorm`` child by a ``BatchNorm2d`` holding its state (in place)."""
    import torch

    for name, child in module.named_children():
        if isinstance(child, torch.nn.SyncBatchNorm):
            bn = torch.nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                      child.track_running_stats)
            bn.load_state_dict(child.state_dict())
            bn.to(next(iter(child.state_dict().values())).device)
            bn.train(child.training)
            setattr(module, name, bn)
        else:
            _revert_sync_batchnorm(child)
    return module


def featurize(env: Any, accelerator: Any, progress: bool = True) -> dict[str, int]:
    """Fills ``env``'s feature cache with every image of its data set, shared over the launch's
    processes (see the module docstring); returns counts of this launch (``images``, ``hits``,
    ``computed``, ``written`` by the main process).

    Each process takes the images ``i`` with ``i % world == rank``, in batches of the backbone's
    ``batch_size``, reads the cache (read-only), computes what is missing, and sends it to the main
    process, which writes the entries.
    """
    import torch.distributed as dist
    from tqdm.auto import tqdm

    base = env.unwrapped
    cache, dataset = base.features, base.dataset
    rank, world = accelerator.process_index, accelerator.num_processes
    bs = max(1, int(getattr(cache.backbone, "batch_size", 8)))
    mine = list(range(rank, len(dataset), world))
    steps = math.ceil(math.ceil(len(dataset) / world) / bs)  # the same on every process
    counts = {"images": len(dataset), "hits": 0, "computed": 0, "written": 0}
    bar = tqdm(total=len(dataset), desc=f"features {cache.backbone.name} ({world} processes)",
               unit="image", disable=not (progress and accelerator.is_main_process))
    for s in range(steps):
        chunk = [dataset[i].image for i in mine[s * bs:(s + 1) * bs]]
        missing = [im for im in chunk if cache.lookup(im) is None]
        computed = list(zip([cache.image_key(im) for im in missing],
                            cache.compute(missing), strict=True)) if missing else []
        sent = [len(chunk) - len(missing), computed]
        gathered: Sequence[Any] = [None] * world if accelerator.is_main_process else []
        dist.gather_object(sent, gathered if accelerator.is_main_process else None, dst=0)
        if accelerator.is_main_process:
            for hits, entries in gathered:
                counts["hits"] += hits
                counts["computed"] += len(entries)
                for key, feats in entries:
                    counts["written"] += cache.store(key, feats)
                bar.update(hits + len(entries))
    bar.close()
    accelerator.wait_for_everyone()
    return counts
