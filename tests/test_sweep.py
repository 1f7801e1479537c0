"""Sweeps (bow_gym.sweep): one scheduling code path, results as units end, resuming, retries after
a lost worker, the same numbers in every backend, sweep files."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from _support import tiny_units

from bow_gym.sweep import (
    SweepError,
    SweepOptions,
    SweepUnit,
    read_sweep_file,
    run_sweep,
    sweep_file_argv,
)


# Module-level: the pool's spawned processes and Ray's workers import them by name.
def square(x: int, ledger: str) -> dict:
    with open(Path(ledger) / f"{x}.txt", "a") as f:
        f.write(f"{os.getpid()}\n")
    print(f"squaring {x}")
    return {"x": x, "square": x * x}


def fail_on(x: int, bad: int, ledger: str) -> dict:
    if x == bad:
        raise ValueError(f"unit {x} refuses")
    return square(x, ledger)


def die_once(x: int, ledger: str) -> dict:
    """Kills its own worker process on its first run (as the OOM killer would)."""
    marker = Path(ledger) / f"died-{x}"
    if x == 1 and not marker.exists():
        marker.write_text("")
        os.kill(os.getpid(), signal.SIGKILL)
    return square(x, ledger)


def not_a_dict() -> list:
    return [1]


def _attempts(ledger: Path) -> dict[int, int]:
    return {int(p.stem): len(p.read_text().split()) for p in ledger.glob("*.txt")}


def _units(fn, ledger: Path, n: int = 3, **extra) -> list[SweepUnit]:
    return [SweepUnit(f"part/u{x}", fn, {"x": x, "ledger": str(ledger), **extra}, {"v": 1})
            for x in range(n)]


def test_results_logs_resume_and_failures(tmp_path, capsys):
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    out = tmp_path / "sweep"
    seen = []
    with pytest.raises(SweepError, match=r"1 of 3 units failed") as err:
        run_sweep(_units(fail_on, ledger, bad=1), out, SweepOptions(progress=False),
                  on_result=lambda u, r, reused: seen.append((u.key, reused)))
    assert "part/u1: ValueError: unit 1 refuses" in str(err.value)
    assert seen == [("part/u0", False), ("part/u2", False)]
    # Each finished unit's result is on disk with its settings; the failed one has only a log.
    saved = json.loads((out / "part" / "u2.json").read_text())
    assert saved == {"unit": "part/u2", "settings": {"v": 1}, "x": 2, "square": 4}
    assert not (out / "part" / "u1.json").exists()
    assert "ValueError: unit 1 refuses" in (out / "logs" / "part" / "u1.log").read_text()
    assert "squaring 2" in (out / "logs" / "part" / "u2.log").read_text()  # prints go to the log
    assert "squaring" not in capsys.readouterr().out
    # A re-run runs only the failed unit and returns every result in order.
    seen.clear()
    results = run_sweep(_units(fail_on, ledger, bad=-1), out, SweepOptions(progress=False),
                        on_result=lambda u, r, reused: seen.append((u.key, reused)))
    assert [r["square"] for r in results] == [0, 1, 4]
    assert sorted(seen) == [("part/u0", True), ("part/u1", False), ("part/u2", True)]
    assert _attempts(ledger) == {0: 1, 1: 1, 2: 1}
    # Other settings: run again, saying so; --no-resume: everything again.
    other = [SweepUnit(u.key, u.fn, u.kwargs, {"v": 2}) for u in _units(square, ledger)]
    run_sweep(other[:1], out, SweepOptions(progress=False))
    assert "u0.json: made with other settings ({'v': 1}): run again" in capsys.readouterr().out
    run_sweep(other, out, SweepOptions(progress=False, resume=False))
    assert _attempts(ledger) == {0: 3, 1: 2, 2: 2}


def test_bad_units_and_options_are_refused(tmp_path):
    ledger = str(tmp_path)
    with pytest.raises(ValueError, match="unique keys; repeated: \\['a'\\]"):
        run_sweep([SweepUnit("a", square, {"x": 0, "ledger": ledger})] * 2, tmp_path)
    with pytest.raises(ValueError, match="sweep unit key '../a'"):
        run_sweep([SweepUnit("../a", square, {"x": 0, "ledger": ledger})], tmp_path)
    with pytest.raises(ValueError, match="jobs must be an int >= 1"):
        SweepOptions(jobs=0)
    with pytest.raises(ValueError, match="ray_address needs the ray backend"):
        SweepOptions(backend="pool", ray_address="127.0.0.1:6379")
    assert SweepOptions(ray_address="127.0.0.1:1").resolved_backend == "ray"
    assert SweepOptions(jobs=2).resolved_backend == "pool"
    assert SweepOptions().resolved_backend == "sequential"


def test_a_unit_that_returns_no_dict_fails_with_its_name(tmp_path):
    with pytest.raises(SweepError, match="must return a dict"):
        run_sweep([SweepUnit("u", not_a_dict)], tmp_path, SweepOptions(progress=False))


@pytest.mark.slow
def test_the_pool_runs_a_unit_again_when_its_worker_dies(tmp_path):
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    out = tmp_path / "sweep"
    results = run_sweep(_units(die_once, ledger), out,
                        SweepOptions(backend="pool", jobs=2, threads=1, progress=False))
    assert [r["square"] for r in results] == [0, 1, 4]
    assert (ledger / "died-1").exists()  # the first run of unit 1 did die
    assert sorted(p.name for p in (out / "part").iterdir()) == ["u0.json", "u1.json", "u2.json"]
    # Without retries the same death is a failure, named as such.
    (ledger / "died-1").unlink()
    with pytest.raises(SweepError, match="part/u1: its worker process died 1 times"):
        run_sweep(_units(die_once, ledger), tmp_path / "again",
                  SweepOptions(backend="pool", jobs=2, threads=1, retries=0, progress=False))


def test_sweep_files_stand_for_flags_and_the_command_line_wins(tmp_path):
    keys = {"agents": "--agents", "seeds": "--seeds", "datasets": "--dataset",
            "transductive": "--transductive", "validation": "--validation"}
    toml = tmp_path / "s.toml"
    toml.write_text('agents = ["reinforce", "ppo"]\nseeds = 3\njobs = 2\ntransductive = true\n'
                    'validation = false\n'
                    'datasets = ["synthetic", {name = "kvasir-seg", root = "/data/kvasir"}]\n')
    argv = sweep_file_argv(["--sweep", str(toml), "--seeds", "5"], keys)
    assert argv == ["--agents", "reinforce,ppo", "--jobs", "2", "--transductive", "--dataset",
                    "synthetic", "--dataset", "kvasir-seg", "--root", "/data/kvasir",
                    "--sweep", str(toml), "--seeds", "5"]
    as_json = tmp_path / "s.json"
    as_json.write_text(json.dumps(read_sweep_file(toml)))
    assert sweep_file_argv([f"--sweep={as_json}"], keys)[:2] == ["--agents", "reinforce,ppo"]
    assert sweep_file_argv(["--seeds", "2"], keys) == ["--seeds", "2"]
    bad = tmp_path / "bad.toml"
    bad.write_text("budgets = [100]\n")
    with pytest.raises(SystemExit, match=r"unknown key\(s\) \['budgets'\]; this script takes"):
        sweep_file_argv(["--sweep", str(bad)], keys)
    bad.write_text("agents = [[1]]\n")
    with pytest.raises(SystemExit, match="agents = \\[\\[1\\]\\]: expected"):
        sweep_file_argv(["--sweep", str(bad)], keys)
    with pytest.raises(SystemExit, match="no such file"):
        sweep_file_argv(["--sweep", str(tmp_path / "none.toml")], keys)
    (tmp_path / "s.yaml").write_text("")
    with pytest.raises(SystemExit, match="expected a .toml or .json file"):
        read_sweep_file(tmp_path / "s.yaml")


def test_compare_policies_reads_a_sweep_file(tmp_path, capsys):
    from benchmarks.compare_policies import main

    sweep = tmp_path / "sweep.toml"
    sweep.write_text("agents = ['reinforce']\nseeds = 1\nanswers = 0\n")
    with pytest.raises(SystemExit):
        main(["--sweep", str(sweep), "--dataset", "synthetic", "--out", str(tmp_path / "o")])
    assert "--seeds and --answers must be positive" in capsys.readouterr().err


def _without_time(results) -> str:
    return json.dumps([[{k: v for k, v in row.items() if k != "train_s"} for row in rows]
                       for rows, _ in results])


@pytest.mark.slow
def test_ray_gives_the_numbers_of_a_sequential_run_and_retries_lost_workers(tmp_path):
    """A local Ray started for the sweep: real units give the same numbers as one after another;
    a unit whose worker process dies is run again and written once."""
    import torch

    from benchmarks.compare_policies import run_units

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        units, fp = tiny_units(2), {"agents": "reinforce", "answers": 16}
        seq = run_units(units, ["reinforce"], 16, tmp_path / "seq", fp, progress=False)
        ray_options = SweepOptions(backend="ray", jobs=2, threads=1, progress=False)
        par = run_units(units, ["reinforce"], 16, tmp_path / "ray", fp, options=ray_options)
    finally:
        torch.set_num_threads(threads)
    assert _without_time(par) == _without_time(seq)
    assert [h["reinforce"]["reward"] for _, h in par] == [h["reinforce"]["reward"] for _, h in seq]

    ledger = tmp_path / "ledger"
    ledger.mkdir()
    addresses: set[str] = set()

    def note_addresses(unit, result, reused) -> None:
        import ray

        addresses.update(n["NodeManagerAddress"] for n in ray.nodes())

    results = run_sweep(_units(die_once, ledger), tmp_path / "die", SweepOptions(
        backend="ray", jobs=2, threads=1, progress=False), on_result=note_addresses)
    assert addresses == {"127.0.0.1"}  # the local Ray started for the sweep: loopback only
    assert [r["square"] for r in results] == [0, 1, 4]
    assert (ledger / "died-1").exists()
    assert _attempts(ledger) == {0: 1, 1: 1, 2: 1}  # the dead run never reached its ledger line
    assert sorted(p.name for p in (tmp_path / "die" / "part").iterdir()) == [
        "u0.json", "u1.json", "u2.json"]


@pytest.mark.slow
def test_rounds_over_seeds_and_variants_equals_single_runs(tmp_path, capsys):
    from bow_gym.cli import main as cli
    from bow_gym.io_utils import read_csv

    tiny = ["--rounds", "1", "--limit", "12", "--set", "segmenter_kwargs={epochs=1, size=64}",
            "--set", "feature_cache='none'", "--set", "tensorboard=false"]
    sweep = tmp_path / "sweep.toml"
    sweep.write_text("seeds = 2\n[variants.random]\nagent = 'random'\n"
                     "[variants.gt]\nagent = 'gt'\n")
    out = tmp_path / "sweep"
    assert cli(["rounds", *tiny, "--sweep", str(sweep), "--seeds", "0,1", "--out",
                str(out)]) == 0
    rows = read_csv(out / "sweep.csv")
    assert sorted({(r["variant"], r["seed"]) for r in rows}) == [
        ("gt", "0"), ("gt", "1"), ("random", "0"), ("random", "1")]
    assert (out / "random-s1" / "round_01" / "done.json").is_file()
    # The sweep's run of random seed 1 is the run `bow-gym rounds --seed 1` makes.
    assert cli(["rounds", *tiny, "--agent", "random", "--seed", "1", "--name", "random-s1",
                "--set", "progress=false", "--out", str(tmp_path / "single")]) == 0
    single = json.loads((tmp_path / "single" / "metrics.json").read_text())["rows"]
    swept = json.loads((out / "random-s1.json").read_text())["rows"]
    drop = lambda rs: [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in rs]  # noqa: E731
    assert drop(swept) == drop(single)
    # Run again: every run is reused; --seed with --seeds is refused.
    capsys.readouterr()
    assert cli(["rounds", *tiny, "--sweep", str(sweep), "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("(reused)") == 4
    assert cli(["rounds", "--seed", "1", "--seeds", "0,1"]) == 2
    assert "give the seeds of a sweep with --seeds" in capsys.readouterr().err
