import json

import pytest

from bow_gym.cli import main


def test_demo_writes_table_and_figure(tmp_path, capsys):
    assert main(["demo", "--episodes", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mean dice after 5 clicks, gt:" in out and "random" in out
    rows = json.loads((tmp_path / "demo.json").read_text())
    assert len(rows) == 4 and {r["policy"] for r in rows} == {"random", "gt"}
    png = (tmp_path / "episodes.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) < 500_000  # the first picture a newcomer opens; it was 4.5 MB for 4 episodes
    assert not list(tmp_path.glob(".*tmp"))


def test_episodes_figure_rows_and_checks():
    import numpy as np

    from bow_gym.render import EpisodeRow, episodes_figure, render_frame

    image = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), bool)
    frames = [render_frame(image, mask, scale=2) for _ in range(3)]
    rows = [EpisodeRow("random clicking", "a", frames, [0.0, 0.1, 0.2], [1, -1]),
            EpisodeRow("ground-truth clicker", "a", frames, [0.0, 0.5, 0.6], [1, 1]),
            EpisodeRow("random clicking", "b", frames[:2], [0.0, 0.0], [-1])]
    small = episodes_figure(rows, panel=40)
    big = episodes_figure(rows, panel=80)
    assert small.dtype == np.uint8 and small.shape[2] == 3
    assert big.shape[1] - small.shape[1] == 3 * 40  # three click columns, each 40 px wider
    with pytest.raises(ValueError, match="3 frames but 2 Dice"):
        episodes_figure([EpisodeRow("p", "a", frames, [0.0, 0.1], [1, 1])])


def test_list_and_bad_input(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "BetterWorseSeg-v0" in out and "kvasir-seg" in out and "dinov2_vits14" in out
    assert main(["demo", "--dataset", "kvasir-seg", "--root", "/no/such/dir"]) == 2
    assert "/no/such/dir" in capsys.readouterr().err
    assert main(["demo", "--env", "NoSuchEnv-v0"]) == 2
    assert "NoSuchEnv" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["demo", "--episodes", "0"], ["demo", "--episodes", "-1"],
                                  ["featurize", "--limit", "0"], ["demo", "--limit", "x"]])
def test_counts_below_one_are_usage_errors(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*argv, *(["--out", str(tmp_path / "o")] if argv[0] == "demo" else [])])
    assert exc.value.code == 2
    assert f"argument {argv[1]}: expected an integer >= 1, got {argv[2]!r}" in \
        capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.real_data
def test_env_on_real_kvasir(shared_data):
    import gymnasium as gym
    import numpy as np

    import bow_gym  # noqa: F401
    from agents import GroundTruthClicker, RandomClicker, run_episode

    env = gym.make("BetterWorseSeg-v0", dataset="kvasir-seg", root=shared_data / "kvasir-seg",
                   dataset_kwargs={"limit": 6})
    assert len(env.unwrapped.dataset) == 6
    gt = [run_episode(env, GroundTruthClicker(), options={"index": i}).final_dice for i in range(6)]
    rnd = [run_episode(env, RandomClicker(), seed=i, options={"index": i}).final_dice
           for i in range(6)]
    assert np.mean(gt) > 0.5 and np.mean(gt) > np.mean(rnd)


def test_featurize_fills_the_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BOW_GYM_CACHE", str(tmp_path))
    assert main(["featurize", "--limit", "3"]) == 0
    assert len(list(tmp_path.rglob("*.npz"))) == 3
    assert "3 images" in capsys.readouterr().out
