"""Accelerate (bow_gym.distributed): segmenter training and featurisation on 2 CPU processes
started by torchrun (gloo, 127.0.0.1 only) against one process.

Tolerances: a model without BatchNorm follows the one-process loss curve to 1e-5 (relative; float
sums in another order) and ends with the same weights to 1e-5. The light U-Net's BatchNorm
normalises each process's part of a batch by that part's statistics on CPUs (torch's
SyncBatchNorm needs GPUs), so its curve may differ by up to 2%.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bow_gym.distributed import DataParallel
from bow_gym.ray_cluster import free_port

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def torchrun(args: list[str], env: dict[str, str] | None = None,
             timeout: float = 600) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2`` on 127.0.0.1 (gloo kept on the loopback interface)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes",
           "1", "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args]
    full_env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
                "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                **(env or {})}
    done = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done


def test_each_process_takes_its_part_of_a_batch():
    for world in (2, 3):
        parts = [DataParallel(SimpleNamespace(process_index=r, num_processes=world)).part(7)
                 for r in range(world)]
        assert parts[0][0] == 0 and parts[-1][1] == 7
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
        sizes = [b - a for a, b in parts]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    last = DataParallel(SimpleNamespace(process_index=2, num_processes=3))
    (x,), own = last.take(np.arange(2))
    assert own == 0 and x.tolist() == [0]  # a dummy sample, weighted 0
    assert last.loss_to_backward(2.0, own=0, total=2) == 0.0
    assert DataParallel(SimpleNamespace(process_index=0, num_processes=2)).loss_to_backward(
        2.0, own=3, total=5) == pytest.approx(2.4)


@pytest.mark.slow
@pytest.mark.parametrize("model, rel_tol", [("plain", 1e-5), ("light", 0.02)])
def test_two_processes_train_like_one_with_the_same_global_batch(model, rel_tol, tmp_path):
    import torch

    sys.path.insert(0, str(TESTS))
    try:
        from ddp_train import train
    finally:
        sys.path.remove(str(TESTS))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = train(model)
    finally:
        torch.set_num_threads(threads)
    torchrun([str(TESTS / "ddp_train.py"), model, str(tmp_path / "two.json")])
    two = json.loads((tmp_path / "two.json").read_text())
    assert (one["processes"], two["processes"]) == (1, 2)
    a, b = np.array(one["loss"]), np.array(two["loss"])
    assert a.shape == b.shape == (3,)
    assert np.max(np.abs(a - b) / np.abs(a)) <= rel_tol, (a, b)
    if model == "plain":
        for key, value in one["weights"].items():
            np.testing.assert_allclose(two["weights"][key], value, atol=1e-5, err_msg=key)


@pytest.mark.slow
def test_two_processes_featurize_the_same_features_written_by_the_main_one(tmp_path,
                                                                            monkeypatch):
    from bow_gym.cli import main as cli

    args = ["featurize", "--dataset", "synthetic", "--limit", "11"]
    monkeypatch.setenv("BOW_GYM_CACHE", str(tmp_path / "one"))
    assert cli(args) == 0
    done = torchrun(["-m", "bow_gym.cli", *args], env={"BOW_GYM_CACHE": str(tmp_path / "two")})
    assert "11 images over 2 processes" in done.stdout
    assert "computed 11, written 11 (by the main process)" in done.stdout
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.npz"))
    two = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*.npz"))
    assert len(one) == 11 and one == two
    for rel in one:
        with np.load(tmp_path / "one" / rel) as x, np.load(tmp_path / "two" / rel) as y:
            assert np.array_equal(x["features"], y["features"])
            assert str(x["sha256"]) == str(y["sha256"])
    # Filled already: the next launch computes and writes nothing.
    again = torchrun(["-m", "bow_gym.cli", *args], env={"BOW_GYM_CACHE": str(tmp_path / "two")})
    assert "found 11, computed 0, written 0" in again.stdout


@pytest.mark.slow
def test_train_segmenter_on_two_processes_writes_once(tmp_path):
    from bow_gym.segmenters import load_segmenter

    args = ["train-segmenter", "--limit", "12", "--device", "cpu", "--set",
            "segmenter_kwargs={epochs=2, size=64, width=8}", "--set", "progress=false"]
    done = torchrun(["-m", "bow_gym.cli", *args, "--out", str(tmp_path / "two")])
    assert done.stdout.count("wrote ") == 1  # the main process only
    saved = json.loads((tmp_path / "two" / "train.json").read_text())
    assert saved["processes"] == 2 and len(saved["loss"]) == 2
    assert "ground truth" in saved["masks"]
    model, _ = load_segmenter(tmp_path / "two" / "segmenter.safetensors")
    assert not any("SyncBatchNorm" in type(m).__name__ for m in model.modules())
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["segmenter.safetensors",
                                                                     "train.json"]
