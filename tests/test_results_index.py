"""The stored results: every folder records how it was made, and INDEX.md is what the records give."""

import json

import pytest

from benchmarks import index


def test_every_results_folder_has_a_valid_run_json():
    folders = index.run_folders()
    assert len(folders) >= 78  # the results moved into <script>/<run>/, none lost
    for folder in folders:
        record = index.load_record(folder)  # raises, naming the file, if anything is missing
        assert record["script"] in record["command"]
        assert len(record["git_commit"]) == 40
        assert all(isinstance(s, int) for s in record["seeds"])


def test_no_result_lies_outside_the_script_run_layout():
    stray = [p for p in index.RESULTS.iterdir() if p.is_file() and p.name != index.INDEX_NAME]
    stray += [p for script in index.RESULTS.iterdir() if script.is_dir()
              for p in script.iterdir() if p.is_file()]
    assert not stray, f"result files outside benchmarks/results/<script>/<run>/: {stray}"


def test_index_is_up_to_date():
    committed = (index.RESULTS / index.INDEX_NAME).read_text()
    assert committed == index.render(), "run python -m benchmarks.index"
    assert index.main(["--check"]) == 0


def test_a_folder_without_or_with_a_wrong_record_is_refused(tmp_path):
    run = tmp_path / "compare_policies" / "toy"
    run.mkdir(parents=True)
    with pytest.raises(index.RecordError, match="run.json: missing"):
        index.render(tmp_path)
    record = {"script": "compare_policies", "run": "toy", "command": "python -m benchmarks.x",
              "git_commit": "0" * 40, "git_dirty": False, "date": "2026-01-01T00:00:00Z",
              "machine": {}, "seeds": [0, 1, 2], "protocol": None, "datasets": ["synthetic"]}
    (run / "run.json").write_text(json.dumps({**record, "seeds": 3}))
    with pytest.raises(index.RecordError, match="'seeds' should be list"):
        index.render(tmp_path)
    (run / "run.json").write_text(json.dumps({**record, "run": "other"}))
    with pytest.raises(index.RecordError, match="lies in compare_policies/toy"):
        index.render(tmp_path)
    (run / "run.json").write_text(json.dumps(record))
    text = index.render(tmp_path)
    assert "| `compare_policies` | [toy](compare_policies/toy/) | 2026-01-01 | `0000000` | 0-2 |" in text
    assert index.main(["--results", str(tmp_path), "--check"]) == 1  # no INDEX.md yet
    assert index.main(["--results", str(tmp_path)]) == 0
    assert index.main(["--results", str(tmp_path), "--check"]) == 0
