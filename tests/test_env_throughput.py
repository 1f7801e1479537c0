"""The throughput benchmark runs end to end at a tiny size and writes its run record."""

import json

import pytest

from benchmarks import env_throughput


def test_env_throughput_writes_a_run_and_ends_with_the_vector_lines(tmp_path, capsys):
    env_throughput.main(["--steps", "50", "--repeats", "1", "--num-envs", "2", "--seconds",
                         "0.02", "--memory-envs", "3", "--backbones", "lab_texture", "--images",
                         "2", "--out", str(tmp_path), "--run", "tiny"])
    run = tmp_path / "tiny"
    for name in ("run.json", "env_throughput.json", "vector.csv", "steps.csv", "extraction.csv",
                 "env_throughput.png"):
        assert (run / name).is_file(), name
    record = json.loads((run / "run.json").read_text())
    assert set(record) == {"script", "run", "command", "git_commit", "git_dirty", "date",
                           "machine", "seeds", "protocol", "datasets"}
    assert record["run"] == "tiny" and "--num-envs 2" in record["command"]
    result = json.loads((run / "env_throughput.json").read_text())
    kinds = result["vector"]["2"]["env_steps_per_s"]
    assert set(kinds) == {"native copy=True", "native copy=False", "sync copy=True",
                          "sync copy=False", "cartpole native"}
    assert all(v["wall"] > 0 and v["cpu"] > 0 for v in kinds.values())
    assert result["memory"]["num_envs"] == 3 and result["memory"]["traced_peak_mib"] > 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("vector_ratio_vs_cartpole_64: nan")  # 64 was not timed
    assert lines[-1].startswith("vector_speedup_vs_sync_64: nan")


@pytest.mark.parametrize("argv, message", [
    (["--num-envs", "0,4"], "--num-envs"),
    (["--num-envs", "a"], "--num-envs"),
    (["--seconds", "0"], "--seconds"),
    (["--ppo-clicks", "-1"], "--ppo-clicks"),
    (["--repeats", "0"], "--repeats"),
])
def test_bad_arguments_are_refused_before_anything_runs(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        env_throughput.main([*argv, "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
