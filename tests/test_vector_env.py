"""The native vector env against Gymnasium's SyncVectorEnv of single envs, step by step."""

import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import data_equivalence
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import bow_gym
from bow_gym.datasets.base import Sample, SegmentationDataset
from bow_gym.datasets.synthetic import SyntheticDataset
from bow_gym.envs.better_worse_seg import EVAL_ONLY_KEY
from bow_gym.envs.vector import BetterWorseSegVectorEnv
from bow_gym.oracles import Oracle
from bow_gym.wrappers import current_changing_clicks
from tests._support import ConstantOracle, OtherMasks

#: Every registered id whose spec names the native vector env (the registry, not a copied list).
VECTOR_IDS = sorted(i for i, spec in gym.registry.items()
                    if spec.vector_entry_point == "bow_gym.envs.vector:BetterWorseSegVectorEnv")
SMALL = {"dataset_kwargs": {"n_images": 6, "size": 96}}
MODES = ["NextStep", "SameStep"]


def test_every_variant_has_the_vector_entry_point():
    assert VECTOR_IDS == sorted(bow_gym.ENV_VARIANTS)


def _kwargs(env_id: str, **extra) -> dict:
    merged = {**SMALL, **extra}
    variant = bow_gym.ENV_VARIANTS.get(env_id, {})
    if "dataset" not in extra:
        merged["dataset_kwargs"] = {**variant.get("dataset_kwargs", {}),
                                    **merged["dataset_kwargs"]}
    else:
        merged.pop("dataset_kwargs")
    return merged


def _pair(env_id, n, mode="NextStep", copy=True, **extra):
    kwargs = _kwargs(env_id, **extra)
    sync = gym.make_vec(env_id, num_envs=n, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": mode, "copy": copy}, **kwargs)
    vec = gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point",
                       autoreset_mode=mode, copy=copy, **kwargs)
    return sync, vec


def _assert_same(a, b, path="result"):
    """Exact equality, with the same types, dtypes and keys (``_key`` masks included)."""
    assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if isinstance(a, dict):
        assert a.keys() == b.keys(), f"{path}: keys differ by {set(a) ^ set(b)}"
        for k in a:
            _assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, (
            f"{path}: {a.dtype}{a.shape} != {b.dtype}{b.shape}")
        if not data_equivalence(a, b, exact=True):
            where = np.argwhere(a != b)[:5].tolist() if a.dtype != object else "objects"
            pytest.fail(f"{path}: differs at {where}")
    else:
        assert data_equivalence(a, b, exact=True), f"{path}: {a!r} != {b!r}"


def _run_both(sync, vec, n_steps, seed=0, stagger_at=(), action_rng=None):
    """Step both with the same actions; ``stagger_at`` steps reset some sub-envs mid-episode
    (``reset_mask``), so that episodes end at different steps. Returns the answers seen."""
    rng = action_rng or np.random.default_rng(seed)
    _assert_same(sync.reset(seed=seed), vec.reset(seed=seed), "reset")
    n = vec.num_envs
    accepted = []
    for t in range(n_steps):
        if t in stagger_at:
            mask = np.zeros(n, bool)
            mask[t % n] = True
            _assert_same(sync.reset(options={"reset_mask": mask.copy()}),
                         vec.reset(options={"reset_mask": mask.copy()}), f"reset_mask@{t}")
        actions = rng.integers(0, vec.single_action_space.n, n)
        a, b = sync.step(actions), vec.step(actions)
        _assert_same(a, b, f"step {t}")
        info = b[4]
        if "accepted" in info:
            accepted += info["accepted"][info["_accepted"]].tolist()
    return accepted


@pytest.mark.parametrize("copy", [True, False])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("env_id", VECTOR_IDS)
def test_sub_envs_equal_single_envs_step_by_step(env_id, mode, copy):
    sync, vec = _pair(env_id, 3, mode, copy)
    assert isinstance(vec.unwrapped, BetterWorseSegVectorEnv)
    # 26 steps: five episodes per sub-env, one of them cut short, so episodes end apart.
    accepted = _run_both(sync, vec, 26, seed=7, stagger_at=(8,))
    assert True in accepted and False in accepted  # both kinds of answers were compared


@pytest.mark.parametrize("extra", [
    {"image_order": "sequential"},
    {"on_worse": "keep"},
    {"oracle": "margin", "oracle_kwargs": {"delta": 0.02}},
    {"threshold": 0.6, "clicks_per_episode": 3},
    {"obs_size": 96, "include_clicks": True},
    {"context_cache_size": 0},  # as many image slots as sub-envs: slots are evicted and reused
    {"oracle": ConstantOracle(1)},  # a user's oracle: Oracle.judge_batch's per-click default
], ids=lambda e: ",".join(e))
def test_settings_equal_single_envs(extra):
    sync, vec = _pair("BetterWorseSeg-v0", 3, **extra)
    _run_both(sync, vec, 20, seed=3, stagger_at=(4,))


class _SomeEmpty(SegmentationDataset):
    """Synthetic images; every other one with an empty ground truth (a "normal" image)."""

    name = "some-empty"

    def __init__(self, n: int = 6):
        self.base = SyntheticDataset(n_images=n, size=96)

    @property
    def ids(self):
        return self.base.ids

    def _load(self, index):
        s = self.base[index]
        return Sample(s.image, s.mask if index % 2 else np.zeros_like(s.mask), s.id)


def test_empty_ground_truth_and_initial_masks_equal_single_envs():
    ds = _SomeEmpty()
    masks = {ds.ids[1]: ds[1].mask, ds.ids[2]: np.ones((40, 30))}
    for mode in MODES:
        sync, vec = _pair("BetterWorseSeg-v0", 3, mode, dataset=ds, initial_masks=masks)
        _run_both(sync, vec, 18, seed=1, stagger_at=(3,))

    def from_image(image_id, image):
        return image[..., 0] > 128

    sync, vec = _pair("BetterWorseSeg-v0", 2, dataset=ds, initial_masks=from_image)
    _run_both(sync, vec, 12, seed=2)
    option = {"initial_mask": np.eye(20), "index": 3}
    _assert_same(sync.reset(seed=4, options=dict(option)), vec.reset(seed=4, options=dict(option)))


def test_disabled_autoreset_equals_sync_with_reset_masks():
    sync, vec = _pair("BetterWorseSeg-v0", 2, "Disabled", clicks_per_episode=2)
    _assert_same(sync.reset(seed=0), vec.reset(seed=0))
    rng = np.random.default_rng(0)
    for t in range(7):
        actions = rng.integers(0, vec.single_action_space.n, 2)
        out = vec.step(actions)
        _assert_same(sync.step(actions), out, f"step {t}")
        if out[2].any():
            with pytest.raises(RuntimeError, match="DISABLED"):
                vec.step(actions)
            mask = out[2].copy()
            _assert_same(sync.reset(options={"reset_mask": mask.copy()}),
                         vec.reset(options={"reset_mask": mask.copy()}))


def test_seeding_gives_sub_env_i_the_single_env_seeded_s_plus_i():
    n, seed = 3, 11
    vec = gym.make_vec("BetterWorseSeg-Noisy-v0", num_envs=n, **_kwargs("BetterWorseSeg-Noisy-v0"))
    singles = [gym.make("BetterWorseSeg-Noisy-v0", **_kwargs("BetterWorseSeg-Noisy-v0"))
               for _ in range(n)]
    obs, info = vec.reset(seed=seed)
    for i, env in enumerate(singles):
        o, inf = env.reset(seed=seed + i)
        assert np.array_equal(obs[i], o) and info["image_id"][i] == inf["image_id"]
    rng = np.random.default_rng(0)
    for _ in range(12):  # with next-step autoreset the single env resets where the batch does
        actions = rng.integers(0, vec.single_action_space.n, n)
        obs, rewards, *_ , info = vec.step(actions)
        for i, env in enumerate(singles):
            if info.get("_answer", np.zeros(n, bool))[i]:
                o, r, *_ = env.step(int(actions[i]))
                assert np.array_equal(obs[i], o) and rewards[i] == r
            else:
                o, inf = env.reset()
                assert np.array_equal(obs[i], o) and info["image_id"][i] == inf["image_id"]
    assert vec.unwrapped.np_random_seed == tuple(e.unwrapped.np_random_seed for e in singles)
    # A list gives one seed per sub-env; None keeps a sub-env's generator running.
    a, _ = vec.reset(seed=[5, None, 5])
    assert np.array_equal(a[0], a[2])
    b, _ = gym.make_vec("BetterWorseSeg-v0", num_envs=3, **SMALL).reset(seed=12)
    c, _ = gym.make_vec("BetterWorseSeg-v0", num_envs=3, **SMALL).reset(seed=13)
    assert not all(np.array_equal(x, y) for x, y in zip(b, c, strict=True))


def test_handed_out_or_pickled_generators_keep_the_single_envs_draws():
    """The resets' image draws are batched over the sub-envs' generators (bow_gym.envs.draws):
    generators handed out through np_random, drawn from by someone else, or pickled with the env
    mid-run, must still give every sub-env the single env's images."""
    n = 4
    vec = gym.make_vec("BetterWorseSeg-v0", num_envs=n, **SMALL)
    sync = gym.make_vec("BetterWorseSeg-v0", num_envs=n, vectorization_mode="sync", **SMALL)
    vec.reset(seed=7)
    sync.reset(seed=7)
    rng = np.random.default_rng(1)

    def run(steps):
        for _ in range(steps):
            actions = rng.integers(0, vec.single_action_space.n, n)
            a, b = vec.step(actions), sync.step(actions)
            assert np.array_equal(a[0], b[0]) and list(a[4]["image_id"]) == list(b[4]["image_id"])

    run(13)  # two resets each: every generator keeps half of an output
    vec = pickle.loads(pickle.dumps(vec))
    run(6)
    for ours, theirs in zip(vec.unwrapped.np_random, sync.np_random, strict=True):
        assert ours.bit_generator.state == theirs.bit_generator.state
    vec.unwrapped.np_random[1].integers(5)
    sync.np_random[1].integers(5)
    run(12)


def test_make_vec_defaults_spaces_and_metadata():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # make_vec warns about missing autoreset metadata
        vec = gym.make_vec("BetterWorseSeg-v0", num_envs=4, **SMALL)
    assert isinstance(vec, BetterWorseSegVectorEnv)  # the vector entry point is the default
    assert isinstance(gym.make_vec("BetterWorseSeg-v0", num_envs=2, vectorization_mode="sync",
                                   **SMALL), SyncVectorEnv)
    single = gym.make("BetterWorseSeg-v0", **SMALL)
    assert vec.single_observation_space == single.observation_space
    assert vec.single_action_space == single.action_space
    assert vec.observation_space == gym.vector.utils.batch_space(single.observation_space, 4)
    assert vec.action_space == gym.vector.utils.batch_space(single.action_space, 4)
    assert vec.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP
    same = gym.make_vec("BetterWorseSeg-v0", num_envs=2, autoreset_mode="SameStep", **SMALL)
    assert same.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
    assert vec.spec.id == "BetterWorseSeg-v0" and vec.spec.kwargs["num_envs"] == 4
    obs, info = vec.reset(seed=0)
    assert vec.observation_space.contains(obs)
    vec.action_space.seed(0)
    obs, rewards, term, trunc, info = vec.step(vec.action_space.sample())
    assert vec.observation_space.contains(obs)
    assert rewards.dtype == np.float64 and term.dtype == trunc.dtype == np.bool_


def test_copy_modes():
    fresh = gym.make_vec("BetterWorseSeg-v0", num_envs=2, copy=True, **SMALL)
    own = gym.make_vec("BetterWorseSeg-v0", num_envs=2, copy=False, **SMALL)
    a, _ = fresh.reset(seed=0)
    b, _ = fresh.step(np.array([5, 9]))[:2]
    assert a is not b and not np.shares_memory(a, b)
    c, _ = own.reset(seed=0)
    kept = c.copy()
    d = own.step(np.array([5, 9]))[0]
    assert c is d  # the env's buffer, rewritten by the step
    assert np.array_equal(d, b) and np.array_equal(kept, a)


def test_gymnasium_vector_wrappers_see_what_they_see_on_sync():
    # Gymnasium 1.4 ships no vector env checker; its vector wrappers are the consumers that
    # rely on the batched API, so they must give what they give over SyncVectorEnv.
    from gymnasium.wrappers.vector import DictInfoToList, RecordEpisodeStatistics

    sync, vec = _pair("BetterWorseSeg-v0", 3)
    sync, vec = DictInfoToList(RecordEpisodeStatistics(sync)), DictInfoToList(
        RecordEpisodeStatistics(vec))
    _assert_same(sync.reset(seed=5), vec.reset(seed=5))
    rng = np.random.default_rng(5)
    for t in range(13):
        actions = rng.integers(0, vec.single_action_space.n, 3)
        a, b = list(sync.step(actions)), list(vec.step(actions))
        for info in a[4] + b[4]:  # a list of dicts now
            info.get("episode", {}).pop("t", None)  # wall time
        _assert_same(a, b, f"step {t}")
    assert vec.env.episode_count == sync.env.episode_count == 6
    assert list(vec.env.return_queue) == list(sync.env.return_queue)


def test_pickles_mid_episode_and_closes():
    vec = gym.make_vec("BetterWorseSeg-v0", num_envs=3, **SMALL).unwrapped
    vec.reset(seed=0)
    vec.step(np.array([1, 2, 3]))
    clone = pickle.loads(pickle.dumps(vec))
    assert clone._store.size <= 3  # only the images the sub-envs are on travel with it
    rng = np.random.default_rng(0)
    for _ in range(9):
        actions = rng.integers(0, vec.single_action_space.n, 3)
        _assert_same(vec.step(actions), clone.step(actions))
    vec.close()
    assert vec.closed
    with pytest.raises(RuntimeError, match="closed"):
        vec.step(np.array([1, 2, 3]))
    vec.close()  # twice is fine


@pytest.mark.parametrize("actions, match", [
    (np.array([1, 2]), r"shape \(3,\)"),
    (np.array([[1, 2, 3]]), r"shape \(3,\)"),
    (np.array([1.0, 2.0, 3.0]), "integer array"),
    (np.array([True, False, True]), "integer array"),
    (np.array([0, -1, 2]), r"sub-envs \[1\] got \[-1\]"),
    (np.array([0, 1, 2 * 128 * 128]), r"in \[0, 32768\)"),
    (np.array([0, 1, 2], np.int32), None),  # any integer dtype is fine
    ([4, 5, 6], None),
])
def test_bad_actions_are_refused_clearly(actions, match):
    vec = gym.make_vec("BetterWorseSeg-v0", num_envs=3, **SMALL)
    with pytest.raises(RuntimeError, match="reset"):
        vec.step(np.array([0, 0, 0]))
    vec.reset(seed=0)
    if match is None:
        vec.step(actions)
    else:
        with pytest.raises(ValueError, match=match):
            vec.step(actions)


def test_bad_arguments_and_reset_options_are_refused():
    with pytest.raises(ValueError, match="num_envs"):
        BetterWorseSegVectorEnv(0, **SMALL)
    with pytest.raises(ValueError, match="autoreset_mode"):
        BetterWorseSegVectorEnv(2, autoreset_mode="whenever", **SMALL)
    with pytest.raises(ValueError, match="threshold"):  # the single env's own checks apply
        BetterWorseSegVectorEnv(2, threshold=2.0, **SMALL)
    vec = BetterWorseSegVectorEnv(2, **SMALL)
    with pytest.raises(ValueError, match="one entry per sub-env"):
        vec.reset(seed=[1, 2, 3])
    with pytest.raises(ValueError, match="reset_mask"):
        vec.reset(options={"reset_mask": [True, False]})
    with pytest.raises(ValueError, match="at least one"):
        vec.reset(options={"reset_mask": np.zeros(2, bool)})
    with pytest.raises(ValueError, match="unknown reset options"):
        vec.reset(options={"mask": 1})
    with pytest.raises(ValueError, match="index"):
        vec.reset(options={"index": 99})


def test_render_frames_equal_single_envs(monkeypatch):
    sync, vec = _pair("BetterWorseSeg-v0", 2, render_mode="rgb_array", render_ground_truth=True)
    sync.reset(seed=0)
    vec.reset(seed=0)
    for t in range(7):
        actions = np.array([t * 997 % 32768, t * 4099 % 32768])
        sync.step(actions)
        vec.step(actions)
        _assert_same(sync.render(), vec.render())
    import matplotlib

    matplotlib.use("Agg")
    shown = []
    monkeypatch.setattr("bow_gym.render.show_human", lambda frame, fig, fps: shown.append(frame))
    human = gym.make_vec("BetterWorseSeg-v0", num_envs=3, render_mode="human", **SMALL)
    human.reset(seed=0)
    human.step(np.array([1, 2, 3]))
    assert len(shown) == 2 and shown[0].ndim == 3  # one tiled frame per reset and step
    assert human.render() is None
    human.close()


def test_ground_truth_reaches_only_eval_only():
    # Two vector envs whose data differ only in ground truth, with an oracle that ignores it:
    # everything but info["eval_only"] must be identical.
    images = SyntheticDataset(n_images=4, size=96)
    outs = []
    for ds in (images, OtherMasks(images)):
        vec = BetterWorseSegVectorEnv(3, ds, oracle=ConstantOracle(1), feature_cache=None)
        trace = [vec.reset(seed=0)]
        rng = np.random.default_rng(0)
        for _ in range(12):
            trace.append(vec.step(rng.integers(0, vec.single_action_space.n, 3)))
        outs.append(trace)
    differs = False
    for a, b in zip(*outs, strict=True):
        a, b = list(a), list(b)
        ia, ib = a.pop(), b.pop()
        _assert_same(a, b)
        eval_a, eval_b = ia.pop(EVAL_ONLY_KEY), ib.pop(EVAL_ONLY_KEY)
        ia.pop("_" + EVAL_ONLY_KEY), ib.pop("_" + EVAL_ONLY_KEY)
        _assert_same(ia, ib)
        differs |= not data_equivalence(eval_a, eval_b)
    assert differs  # the ground truth did change what evaluation sees


def test_batched_helpers_equal_the_single_envs():
    sync, vec = _pair("BetterWorseSeg-v0", 3)
    _run_both(sync, vec, 3, seed=9)
    base = vec.unwrapped
    for i, env in enumerate(sync.envs):
        single = env.unwrapped
        assert np.array_equal(base.current_masks()[i], single.current_mask())
        assert np.array_equal(base.propagation_graphs()[i], single.propagation_graph())
        assert np.array_equal(base.patch_features()[i], single.patch_features())
        assert np.array_equal(base.changing_clicks()[i], current_changing_clicks(single))
        assert np.array_equal(base.ground_truth_for_evaluation()[i],
                              single.ground_truth_for_evaluation())
    label, y, x = base.decode_actions(np.array([5, 16384 + 130, 32767]))
    assert label.tolist() == [0, 1, 1] and y.tolist() == [0, 1, 127] and x.tolist() == [5, 2, 127]
    assert base.encode_actions(label, y, x).tolist() == [5, 16384 + 130, 32767]


def test_judge_batch_default_is_judge_per_change():
    class Parity(Oracle):
        def judge(self, before, after, rng=None):
            return 1 if (after.tp + int(rng.integers(2))) % 2 else -1

    from bow_gym.oracles import Overlap

    before = Overlap(np.array([1, 2, 3]), np.array([4, 5, 6]), np.array([7, 8, 9]))
    after = Overlap(np.array([2, 2, 5]), np.array([4, 6, 6]), np.array([7, 8, 9]))
    rngs = [np.random.default_rng(i) for i in range(3)]
    again = [np.random.default_rng(i) for i in range(3)]
    batch = Parity().judge_batch(before, after, rngs)
    one = [Parity().judge(Overlap(*(int(f[i]) for f in before)),
                          Overlap(*(int(f[i]) for f in after)), again[i]) for i in range(3)]
    assert batch.tolist() == one and batch.dtype == np.int64


# ------------------------------------------------------------------ what agents read of a sub-env
def test_sub_env_views_follow_their_sub_env_and_match_the_single_env():
    sync, vec = _pair("BetterWorseSeg-v0", 3)
    sync.reset(seed=4)
    vec.reset(seed=4)
    views = [vec.unwrapped.sub_env(i) for i in range(3)]
    rng = np.random.default_rng(0)
    for _ in range(12):  # across episode ends: the views follow their sub-env's new image
        for view, single in zip(views, sync.envs, strict=True):
            single = single.unwrapped
            assert np.array_equal(view.patch_features(), single.patch_features())
            assert np.array_equal(view.propagation_graph(), single.propagation_graph())
            assert (view.grid, view.cell, view.obs_size, view.n_patches) == (
                single.grid, single.cell, single.obs_size, single.n_patches)
            assert view.encode_action(1, 3, 4) == single.encode_action(1, 3, 4)
        actions = rng.integers(0, vec.single_action_space.n, 3)
        sync.step(actions)
        vec.step(actions)
    # a copy: an agent that edits it does not change the env
    views[0].propagation_graph()[:] = False
    assert views[0].propagation_graph().any()
    # what agents may read, not the ground truth nor the env's controls
    for name in ("ground_truth_for_evaluation", "step", "reset", "_ctx"):
        assert not hasattr(views[0], name)
    with pytest.raises(ValueError, match=r"sub-env index must be an int in \[0, 3\), got 3"):
        vec.unwrapped.sub_env(3)


@pytest.mark.parametrize("mode", MODES)
def test_vector_reward_and_strip_wrappers_equal_the_single_env_ones(mode):
    from bow_gym.wrappers import (
        DiceGainReward,
        DiceGainRewardVector,
        StripEvalInfo,
        StripEvalInfoVector,
    )

    kwargs = _kwargs("BetterWorseSeg-v0", on_worse="keep")  # kept "worse" clicks lose Dice
    sync = SyncVectorEnv([lambda: StripEvalInfo(DiceGainReward(gym.make("BetterWorseSeg-v0",
                                                                        **kwargs)))] * 3,
                         autoreset_mode=mode)
    vec = StripEvalInfoVector(DiceGainRewardVector(gym.make_vec(
        "BetterWorseSeg-v0", num_envs=3, vectorization_mode="vector_entry_point",
        autoreset_mode=mode, **kwargs)))
    _assert_same(sync.reset(seed=1), vec.reset(seed=1), "reset")
    rng = np.random.default_rng(1)
    rewards = []
    for t in range(14):  # more than two episodes of 5 clicks
        actions = rng.integers(0, vec.single_action_space.n, 3)
        a, b = sync.step(actions), vec.step(actions)
        _assert_same(a, b, f"step {t}")
        assert EVAL_ONLY_KEY not in b[-1] and EVAL_ONLY_KEY not in b[-1].get("final_info", {})
        rewards.append(b[1])
    assert np.any(np.concatenate(rewards) > 0) and np.any(np.concatenate(rewards) < 0)
    with pytest.raises(ValueError, match="wrap the vector env with it before StripEvalInfoVector"):
        DiceGainRewardVector(StripEvalInfoVector(gym.make_vec(
            "BetterWorseSeg-v0", num_envs=2, vectorization_mode="vector_entry_point",
            **kwargs))).reset(seed=0)
