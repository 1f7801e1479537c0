"""Two real processes filling one feature cache at once (bounded by timeouts).

Each worker runs a slow fake backbone that logs every image it computes; both start together and
ask for the same images (in the same or in opposite order). Each image's features must be computed
exactly once over both processes, both must get identical features, and every entry on disk must
be complete and pass its checks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from bow_gym.backbones.base import Backbone
from bow_gym.backbones.cache import ENTRY_SUFFIX, FeatureCache, image_key

PROJECT_ROOT = Path(__file__).resolve().parent.parent
N_IMAGES = 12

WORKER = r"""
import sys, time
from pathlib import Path
import numpy as np
from bow_gym.backbones.base import Backbone
from bow_gym.backbones.cache import FeatureCache, image_key

cache_dir, log, out, order, go = sys.argv[1:6]
n = int(sys.argv[6])


class Slow(Backbone):
    name, grid, dim, batch_size = "slow", (2, 3), 4, 2

    @property
    def cache_key(self):
        return "slow_v1"

    def _extract(self, images):
        with open(log, "a") as f:
            f.writelines(image_key(im) + "\n" for im in images)
        time.sleep(0.2)  # long enough for the other process to ask for the same images
        return np.stack([np.random.default_rng(int(image_key(im)[:8], 16)).normal(size=(2, 3, 4))
                         for im in images])


images = [np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8) for i in range(n)]
deadline = time.monotonic() + 60
while not Path(go).exists():
    if time.monotonic() > deadline:
        sys.exit("the start signal never came")
    time.sleep(0.005)
request = images if order == "same" else images[::-1]
feats = FeatureCache(Slow(), cache_dir).get_many(request)
np.save(out, np.stack(feats if order == "same" else feats[::-1]))
"""


def _images() -> list[np.ndarray]:
    return [np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)
            for i in range(N_IMAGES)]


@pytest.mark.parametrize("orders", [("same", "same"), ("same", "reversed")])
def test_two_processes_compute_each_image_once(tmp_path: Path, orders) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    go = tmp_path / "go"
    procs = []
    for k, order in enumerate(orders):
        args = [str(tmp_path / "cache"), str(tmp_path / f"log{k}"), str(tmp_path / f"out{k}.npy"),
                order, str(go), str(N_IMAGES)]
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, *args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    time.sleep(0.5)  # both interpreters importing; the start signal releases them together
    go.touch()
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("a cache worker did not finish within 120 s")
        assert proc.returncode == 0, err
        assert "Warning" not in err, err  # no entry was ever seen corrupt or half-written

    logs = [tmp_path / f"log{k}" for k in range(2)]
    computed = [line for log in logs if log.exists() for line in log.read_text().split()]
    keys = {image_key(im) for im in _images()}
    assert sorted(computed) == sorted(keys), "each image's features computed exactly once"
    np.testing.assert_array_equal(np.load(tmp_path / "out0.npy"), np.load(tmp_path / "out1.npy"))

    folder = tmp_path / "cache" / "slow_v1"
    entries = sorted(p.name for p in folder.iterdir() if p.is_file())
    assert entries == sorted(k + ENTRY_SUFFIX for k in keys), "no temp or torn file left"

    class Reader(Backbone):  # reads the entries back; computing anything would be a failure
        name, grid, dim, batch_size = "slow", (2, 3), 4, 2
        cache_key = "slow_v1"

        def _extract(self, images):
            raise AssertionError("an entry written by the workers was not usable")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feats = FeatureCache(Reader(), tmp_path / "cache").get_many(_images())
    np.testing.assert_array_equal(np.stack(feats), np.load(tmp_path / "out0.npy"))
