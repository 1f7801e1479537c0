"""Known-answer tests for ``benchmarks.paired`` on hand-made result folders."""

from __future__ import annotations

import json

import pytest

from benchmarks.paired import main, pair_rows, summarise


def _row(policy: str, split: int, seed: int, d5: float, ds: str = "kv") -> dict:
    # Dice@k = d5 * k / 5, so every metric's difference is known too.
    return {"dataset": ds, "policy": policy, "split": split, "seed": seed,
            **{f"dice@{k}": d5 * k / 5 for k in range(1, 6)}}


def _run(tmp_path, name: str, policy: str, scores: dict, refs: dict | None = None,
         validation: bool = False, best: str | None = None):
    refs = refs or {}
    rows = []
    for (split, seed), d5 in scores.items():
        rows += [_row("random", split, seed, refs.get((split, seed), 0.2)),
                 _row("gt", split, seed, 0.7), _row(policy, split, seed, d5)]
    folder = tmp_path / name
    folder.mkdir()
    (folder / "compare_policies.json").write_text(json.dumps({
        "per_seed": rows, "best_agent": {"kv": best or policy},
        "settings": {"validation": validation, "transductive": False}}))
    return folder


A = {(0, 0): 0.60, (0, 1): 0.62, (1, 0): 0.58, (1, 1): 0.61}
B = {(0, 0): 0.63, (0, 1): 0.63, (1, 0): 0.60, (1, 1): 0.60}


def test_paired_difference_known_answer(tmp_path, capsys):
    fa, fb = _run(tmp_path, "a", "feat", A), _run(tmp_path, "b", "hyb", B)
    main(["--a", str(fa), "--b", str(fb), "--out", str(tmp_path / "out")])
    res = json.loads((tmp_path / "out" / "paired.json").read_text())
    assert (res["a"]["policy"], res["b"]["policy"]) == ("feat", "hyb")
    s5 = next(s for s in res["summary"] if s["metric"] == "dice@5")
    # differences +0.03, +0.01, +0.02, -0.01: mean 0.0125, sd 0.017078, t(3) = 3.182
    assert s5["diff"] == pytest.approx(0.0125)
    half = 3.182 * 0.0170783 / 2
    assert s5["diff_ci_low"] == pytest.approx(0.0125 - half, abs=1e-5)
    assert s5["diff_ci_high"] == pytest.approx(0.0125 + half, abs=1e-5)
    assert (s5["b_wins"], s5["pairs"]) == (3, 4)
    s1 = next(s for s in res["summary"] if s["metric"] == "dice@1")
    assert s1["diff"] == pytest.approx(0.0025)
    assert (tmp_path / "out" / "paired.png").stat().st_size > 0
    assert "no difference shown" in capsys.readouterr().out.splitlines()[-2]


def test_a_constant_shift_is_significant_although_the_intervals_overlap():
    a = {"per_seed": [_row("x", s, 0, v) for s, v in enumerate((0.5, 0.6, 0.7))]}
    b = {"per_seed": [_row("y", s, 0, v + 0.01) for s, v in enumerate((0.5, 0.6, 0.7))]}
    s5 = summarise(pair_rows(a, "x", b, "y"))[-1]
    assert s5["diff"] == pytest.approx(0.01)
    assert s5["diff_ci_low"] == pytest.approx(0.01)  # every pair gains the same
    assert s5["b_wins"] == 3


def test_only_shared_pairs_are_compared(tmp_path):
    fa = _run(tmp_path, "a", "feat", A)
    fb = _run(tmp_path, "b", "hyb", {(0, 0): 0.70, (5, 5): 0.1})
    rows = pair_rows(json.loads((fa / "compare_policies.json").read_text()), "feat",
                     json.loads((fb / "compare_policies.json").read_text()), "hyb")
    assert [(r["split"], r["seed"]) for r in rows] == [(0, 0)]
    assert rows[0]["diff_dice@5"] == pytest.approx(0.10)


@pytest.mark.parametrize("make_b, argv_extra, message", [
    (lambda t: _run(t, "b", "hyb", B, refs={(1, 0): 0.25}), [], "the random clicker gives"),
    (lambda t: _run(t, "b", "hyb", B, validation=True), [], "differ in --validation"),
    (lambda t: _run(t, "b", "hyb", {(7, 7): 0.5}), [], "share no (data set, split, seed)"),
    (lambda t: _run(t, "b", "hyb", B), ["--b-policy", "nope"], "'nope' is not in that run"),
    (lambda t: t / "missing", [], "compare_policies.json not found"),
])
def test_runs_that_do_not_pair_are_refused(tmp_path, make_b, argv_extra, message):
    fa, fb = _run(tmp_path, "a", "feat", A), make_b(tmp_path)
    with pytest.raises(SystemExit, match=message.replace("(", r"\(").replace(")", r"\)")):
        main(["--a", str(fa), "--b", str(fb), "--out", str(tmp_path / "out"), *argv_extra])
    assert not (tmp_path / "out" / "paired.json").exists()


def test_two_learners_of_one_run_pair_up_and_the_best_needs_naming_when_ambiguous(tmp_path):
    folder = _run(tmp_path, "a", "feat", A)
    res = json.loads((folder / "compare_policies.json").read_text())
    res["per_seed"] += [_row("hyb", sp, se, B[(sp, se)]) for sp, se in B]
    res["best_agent"] = {"kv": "hyb", "other": "feat"}
    (folder / "compare_policies.json").write_text(json.dumps(res))
    with pytest.raises(SystemExit, match="names 2 best agents"):
        main(["--a", str(folder), "--b", str(folder), "--out", str(tmp_path / "o")])
    main(["--a", str(folder), "--a-policy", "feat", "--b", str(folder), "--b-policy", "hyb",
          "--out", str(tmp_path / "o")])
    s5 = json.loads((tmp_path / "o" / "paired.json").read_text())["summary"][-1]
    assert s5["diff"] == pytest.approx(0.0125)


def test_one_pair_has_no_interval_and_no_verdict(tmp_path, capsys):
    fa = _run(tmp_path, "a", "feat", {(0, 0): 0.60})
    fb = _run(tmp_path, "b", "hyb", {(0, 0): 0.55})
    main(["--a", str(fa), "--b", str(fb), "--out", str(tmp_path / "out")])
    s5 = next(s for s in json.loads((tmp_path / "out" / "paired.json").read_text())["summary"]
              if s["metric"] == "dice@5")
    assert s5["diff"] == pytest.approx(-0.05) and s5["pairs"] == 1
    assert s5["diff_ci_low"] != s5["diff_ci_low"]  # NaN: one value has no interval
    last = capsys.readouterr().out.splitlines()[-2]
    assert "one pair: no interval" in last and "A better" not in last
