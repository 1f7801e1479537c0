"""``benchmarks.gpu_check`` runs on a CPU in its tiny mode, so the GPU script cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")

from benchmarks import gpu_check  # noqa: E402


@pytest.mark.slow
def test_tiny_cpu_run_times_every_stage(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = gpu_check.main(["--device", "cpu", "--tiny", "--configs", "busi", "--images", "2",
                           "--rounds", "1", "--data", "synthetic", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.rstrip().endswith("failed: 0")
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    (row,) = report["rows"]
    assert row["ok"] and row["backbone"] == "dinov2_vitb14" and row["adapt"]
    assert row["segmenter"] == "hsnet_released" and row["datasets"] == ["synthetic"]
    (times,) = row["rounds_seconds"]
    assert set(gpu_check.STAGES) <= set(times) and times["train"] > 0 and times["adapt"] > 0
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["script"] == "gpu_check" and "--tiny" in record["command"]
    assert (tmp_path / "gpu_check.png").stat().st_size > 0


def test_a_failing_config_is_reported_and_the_others_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
) -> None:
    import bow_gym.rounds

    ran = []

    def fake_run(cfg, out, resume=True):
        ran.append(cfg.name)
        if cfg.name == "busi":
            raise RuntimeError("CUDA error: out of memory (test)")
        return [{"round": 1, "seconds_label": 1.0, "seconds_total": 1.0}]

    monkeypatch.setattr(bow_gym.rounds, "run_rounds", fake_run)
    code = gpu_check.main(["--device", "cpu", "--tiny", "--configs", "busi,isic2018",
                           "--images", "2", "--rounds", "1", "--data", "synthetic",
                           "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1 and ran == ["busi", "isic2018"]
    assert "busi: data synthetic" in out and "FAILED RuntimeError: CUDA error" in out
    assert out.rstrip().endswith("failed: 1")
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert [r["ok"] for r in rows] == [False, True]


def test_arguments_are_checked() -> None:
    with pytest.raises(SystemExit):
        gpu_check.main(["--configs", "kvasir-cpu"])
    with pytest.raises(SystemExit):
        gpu_check.main(["--device", "cpu", "--images", "1"])
