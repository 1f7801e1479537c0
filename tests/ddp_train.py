"""Run by tests/test_distributed.py, in one process or under torchrun: trains a segmenter on 13
synthetic images and writes its loss curve and weights (``python tests/ddp_train.py MODEL OUT``,
MODEL ``light`` or ``plain``: a small CNN without BatchNorm)."""

from __future__ import annotations

import sys

import numpy as np
import torch


def images_and_masks(n: int = 13) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from bow_gym.datasets import make_dataset

    data = make_dataset("synthetic", n_images=n, size=64, seed=3)
    samples = [data[i] for i in range(n)]
    return [s.image for s in samples], [s.mask for s in samples]


def train(model_name: str) -> dict:
    from bow_gym.segmenters import build_segmenter, preset, train_segmenter

    # 13 images in batches of 5: parts of 3 and 2 images, and a last batch of 3 (2 and 1).
    config = preset("light", epochs=3, size=64, batch_size=5, seed=0, device="cpu", width=8)
    if model_name == "light":
        model = build_segmenter(config)
    else:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                    torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
                                    torch.nn.Conv2d(8, 1, 1))
    images, masks = images_and_masks()
    history = train_segmenter(model, images, masks, config)
    return {"loss": history["loss"], "processes": history["processes"],
            "weights": {k: v.tolist() for k, v in model.state_dict().items()
                        if v.dtype.is_floating_point}}


if __name__ == "__main__":
    import json
    import os

    result = train(sys.argv[1])
    if os.environ.get("RANK", "0") == "0":
        with open(sys.argv[2], "w") as f:
            json.dump(result, f)
