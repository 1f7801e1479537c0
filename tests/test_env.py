import pickle

import gymnasium as gym
import numpy as np
import pytest

import bow_gym
from bow_gym.datasets.base import Sample, SegmentationDataset
from bow_gym.datasets.synthetic import SyntheticDataset
from bow_gym.envs.better_worse_seg import EVAL_ONLY_KEY, BetterWorseSegEnv
from bow_gym.metrics import dice
from bow_gym.propagation import propagate

ENV_IDS = list(bow_gym.ENV_VARIANTS)
SMALL = {"dataset_kwargs": {"n_images": 6, "size": 96}}


def _make(env_id="BetterWorseSeg-v0", **kwargs):
    merged = {**SMALL, **kwargs}
    variant = bow_gym.ENV_VARIANTS[env_id]
    merged["dataset_kwargs"] = {**variant.get("dataset_kwargs", {}), **merged["dataset_kwargs"]}
    return gym.make(env_id, **merged)


def _rollout(env, seed, n_steps=12):
    obs, info = env.reset(seed=seed)
    env.action_space.seed(seed)
    trace = [(obs.copy(), info["image_id"])]
    for _ in range(n_steps):
        obs, r, term, trunc, info = env.step(env.action_space.sample())
        trace.append((obs.copy(), r, term, info["pixels_changed"], info[EVAL_ONLY_KEY]["dice"]))
        if term or trunc:
            obs, info = env.reset()
            trace.append((obs.copy(), info["image_id"]))
    return trace


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert len(x) == len(y)
        for u, v in zip(x, y, strict=True):
            if isinstance(u, np.ndarray):
                assert np.array_equal(u, v)
            else:
                assert u == v


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_registered_env_passes_gymnasium_check_env(env_id):
    from gymnasium.utils.env_checker import check_env

    env = _make(env_id)
    check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_registered_env_passes_sb3_check_env(env_id):
    from stable_baselines3.common.env_checker import check_env

    env = _make(env_id)
    check_env(env.unwrapped, warn=True)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_registered_env_repeats_exactly_under_a_seed(env_id):
    a, b = _rollout(_make(env_id), seed=3), _rollout(_make(env_id), seed=3)
    _same(a, b)
    c = _rollout(_make(env_id), seed=4)
    assert any(
        not np.array_equal(x[0], y[0]) for x, y in zip(a, c, strict=False)
    ), "different seeds should give different episodes"


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_registered_env_pickles_mid_episode(env_id):
    env = _make(env_id)
    env.reset(seed=0)
    env.step(5)
    clone = pickle.loads(pickle.dumps(env))
    for action in (100, env.action_space.n - 7, 12345):
        o1, r1, t1, _, i1 = env.step(action)
        o2, r2, t2, _, i2 = clone.step(action)
        assert np.array_equal(o1, o2) and r1 == r2 and t1 == t2
        assert i1[EVAL_ONLY_KEY] == i2[EVAL_ONLY_KEY]


def test_make_by_module_path_and_defaults():
    env = gym.make("bow_gym:BetterWorseSeg-v0", **SMALL)
    base = env.unwrapped
    assert isinstance(base, BetterWorseSegEnv)
    assert base.observation_space.shape == (4, 128, 128)
    assert base.observation_space.dtype == np.uint8
    assert base.action_space.n == 2 * 128 * 128
    assert base.threshold == 0.8 and base.clicks_per_episode == 5 and base.on_worse == "revert"
    assert base.backbone.name == "lab_texture"


def test_cnn_policy_accepts_observation():
    from stable_baselines3 import PPO

    env = _make()
    model = PPO("CnnPolicy", env, n_steps=8, batch_size=8, n_epochs=1, device="cpu", seed=0)
    model.learn(total_timesteps=8)
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert env.action_space.contains(int(action))


def test_action_encoding_round_trip_and_errors():
    base = _make().unwrapped
    for label, y, x in [(0, 0, 0), (1, 127, 127), (1, 5, 99), (0, 64, 3)]:
        a = base.encode_action(label, y, x)
        assert base.decode_action(a) == (label, y, x)
        assert base.decode_action(np.int64(a)) == (label, y, x)
    # the flattened (2, H, W) logit map indexes actions one-to-one
    logits = np.zeros((2, 128, 128))
    logits[1, 5, 99] = 1
    assert int(np.argmax(logits)) == base.encode_action(1, 5, 99)
    env = _make()
    env.reset(seed=0)
    for bad in (-1, 2 * 128 * 128, 1.5, "3", np.array([1, 2])):
        with pytest.raises(ValueError, match=r"action must be an integer in \[0, 32768\)"):
            env.step(bad)


def test_env_mask_equals_pure_propagation_and_info_dice():
    env = _make(on_worse="keep")
    base = env.unwrapped
    env.reset(seed=1)
    sample = base.dataset[base._ctx.index]
    feats = base.features.get(sample.image)
    gt = base.ground_truth_for_evaluation()
    mask = np.zeros((128, 128), bool)
    rng = np.random.default_rng(0)
    for _ in range(5):
        label, y, x = int(rng.integers(2)), int(rng.integers(128)), int(rng.integers(128))
        obs, reward, *_, info = env.step(base.encode_action(label, y, x))
        new = propagate(mask, feats, (y, x), bool(label), 0.8)
        assert np.array_equal(obs[3] > 127, new)
        assert info["pixels_changed"] == int(np.count_nonzero(new != mask))
        better = dice(new, gt) > dice(mask, gt)
        assert reward == (1.0 if better else -1.0)
        assert info[EVAL_ONLY_KEY]["dice"] == pytest.approx(dice(new, gt))
        mask = new


def test_revert_keeps_mask_on_worse():
    env = _make()
    base = env.unwrapped
    env.reset(seed=0, options={"index": 0})
    gt = base.ground_truth_for_evaluation()
    # a foreground click far from the lesion is worse on an empty start
    ys, xs = np.nonzero(~gt)
    far = np.argmax((ys - np.nonzero(gt)[0].mean()) ** 2 + (xs - np.nonzero(gt)[1].mean()) ** 2)
    obs, reward, *_, info = env.step(base.encode_action(1, int(ys[far]), int(xs[far])))
    assert reward == -1.0 and not info["accepted"]
    assert not obs[3].any()
    assert info["pixels_changed"] > 0


class _SwappedMasks(SegmentationDataset):
    """Same images as a synthetic set, other ground truth."""

    def __init__(self, base, masks):
        self.base, self.masks, self.name = base, masks, "swapped"

    @property
    def ids(self):
        return self.base.ids

    def _load(self, index):
        s = self.base[index]
        return Sample(s.image, self.masks(index, s.mask), s.id)


def test_ground_truth_never_reaches_the_observation():
    images = SyntheticDataset(n_images=4, size=96)
    other = _SwappedMasks(images, lambda i, m: np.roll(~m, 17, axis=1))
    actions = np.random.default_rng(0).integers(0, 2 * 128 * 128, 8)
    traces = []
    for ds in (images, other):
        env = BetterWorseSegEnv(ds, on_worse="keep", feature_cache=None)
        obs, _ = env.reset(seed=0)
        trace = [obs]
        for a in actions:
            obs, _, term, _, _ = env.step(int(a))
            trace.append(obs)
            if term:
                obs, _ = env.reset()
                trace.append(obs)
        traces.append(trace)
    for a, b in zip(*traces, strict=True):
        assert np.array_equal(a, b)


def test_initial_masks_mapping_callable_and_option():
    ds = SyntheticDataset(n_images=3, size=96)
    gt0 = ds[0].mask
    env = BetterWorseSegEnv(ds, initial_masks={ds.ids[0]: gt0}, feature_cache=None)
    obs, info = env.reset(seed=0, options={"index": 0})
    assert info[EVAL_ONLY_KEY]["initial_dice"] > 0.95  # its own ground truth, resized
    assert np.array_equal(obs[3] > 127, env.ground_truth_for_evaluation())
    obs, info = env.reset(options={"index": 1})  # not in the mapping: empty
    assert not obs[3].any() and info[EVAL_ONLY_KEY]["initial_dice"] == 0.0
    calls = []
    env = BetterWorseSegEnv(ds, initial_masks=lambda i, im: calls.append(i) or np.ones((7, 9)),
                            feature_cache=None)
    obs, _ = env.reset(options={"index": 2})
    assert calls == [ds.ids[2]] and (obs[3] == 255).all()
    obs, _ = env.reset(options={"index": 2, "initial_mask": np.zeros((50, 50))})
    assert not obs[3].any()
    with pytest.raises(ValueError, match="2-D mask"):
        env.reset(options={"index": 2, "initial_mask": np.zeros((2, 2, 2))})


def test_episode_end_and_order_errors():
    env = _make(clicks_per_episode=2)
    with pytest.raises(RuntimeError, match="reset"):
        env.unwrapped.step(0)
    env.reset(seed=0)
    assert env.step(0)[2] is False
    _, _, terminated, truncated, info = env.step(1)
    assert terminated and not truncated and info["clicks"] == 2
    with pytest.raises(RuntimeError, match="episode ended"):
        env.unwrapped.step(0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": -1.01}, "threshold"),
        ({"backbone": "resnet_magic"}, "resnet_magic"),
        ({"dataset": "no-such-set"}, "no-such-set"),
        ({"obs_size": 100}, "multiple of the patch grid"),
        ({"clicks_per_episode": 0}, "clicks_per_episode"),
        ({"on_worse": "ignore"}, "on_worse"),
        ({"oracle": "psychic"}, "psychic"),
        ({"render_mode": "ascii"}, "render_mode"),
        # bool and float counts were accepted before (True meant 1 click), and render_scale=0
        # failed only at render():
        ({"clicks_per_episode": True}, "clicks_per_episode must be an integer"),
        ({"clicks_per_episode": 2.0}, "clicks_per_episode must be an integer"),
        ({"render_scale": 0}, "render_scale must be an integer >= 1"),
        ({"render_scale": 1.5}, "render_scale must be an integer >= 1"),
        ({"obs_size": 128.0}, "obs_size must be an integer"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    args = {"dataset_kwargs": {"n_images": 2, "size": 64}, **kwargs}
    if "dataset" in kwargs:
        args.pop("dataset_kwargs")
    with pytest.raises(ValueError, match=match):
        BetterWorseSegEnv(**args)


def test_reset_options_errors():
    env = _make()
    with pytest.raises(ValueError, match="index"):
        env.reset(options={"index": 99})
    with pytest.raises(KeyError, match="nope"):
        env.reset(options={"image_id": "nope"})
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"mask": 1})


@pytest.mark.parametrize("bad", [3.0, True, False, np.float32(3), np.bool_(True), np.array(3.0),
                                 np.array([3]), "3", None, 3 + 0j])
def test_non_integer_actions_are_refused(bad):
    # Before, 3.0, True, np.float32(3), np.bool_(True) and np.array(3.0) were clicks 3 and 1.
    env = _make()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action must be an integer in \[0, 32768\)"):
        env.step(bad)


@pytest.mark.parametrize("good", [3, np.int64(3), np.int32(3), np.uint8(3), np.array(3),
                                  np.array(3, dtype=np.uint16)])
def test_integer_actions_of_every_kind_are_accepted(good):
    env = _make()
    env.reset(seed=0)
    *_, info = env.step(good)
    assert info["click"] == {"y": 0, "x": 3, "label": 0}


def test_reset_index_must_be_an_integer():
    env = _make()
    for bad in (2.7, 2.0, True, "2", np.float64(1)):
        # Before: 2.7 silently became image 2 (and True image 1).
        with pytest.raises(ValueError, match=r"options\['index'\] must be an integer"):
            env.reset(options={"index": bad})
    for good in (2, np.int64(2), np.array(2)):
        assert env.reset(options={"index": good})[1]["index"] == 2


@pytest.mark.parametrize(
    "mask, match",
    [(np.full((8, 8), np.nan), "nan"), (np.full((8, 8), 0.5), "0.5"),
     (np.eye(8) * 100, "100"), (np.where(np.eye(8) > 0, np.inf, 0), "inf"), (-np.eye(8), "-1"),
     (np.full((8, 8), "a"), "dtype")],
    ids=["nan", "probability", "0-100", "inf", "negative", "strings"],
)
def test_initial_mask_values_are_checked(mask, match):
    # Before: NaN (and every other non-zero value) became foreground.
    env = BetterWorseSegEnv(SyntheticDataset(n_images=2, size=64), feature_cache=None)
    with pytest.raises(ValueError, match=rf"options\['initial_mask'\].*{match}"):
        env.reset(options={"index": 0, "initial_mask": mask})
    env = BetterWorseSegEnv(SyntheticDataset(n_images=2, size=64), feature_cache=None,
                            initial_masks={"polyp-0-00000": mask})
    with pytest.raises(ValueError, match=rf"initial_masks\[.*{match}"):
        env.reset(options={"index": 0})


@pytest.mark.parametrize("mask", [np.eye(8, dtype=bool), np.eye(8), np.eye(8, dtype=np.uint8) * 255,
                                  np.eye(8, dtype=np.int32), np.eye(8, dtype=np.float32) * 255])
def test_initial_mask_encodings_accepted(mask):
    env = BetterWorseSegEnv(SyntheticDataset(n_images=2, size=64), feature_cache=None,
                            obs_size=64)
    obs, _ = env.reset(options={"index": 0, "initial_mask": mask})
    assert obs[3].max() == 255 and obs[3].min() == 0
    np.testing.assert_array_equal(obs[3] > 0, np.kron(np.eye(8), np.ones((8, 8))) > 0)


def test_sequential_order_visits_every_image():
    env = _make(image_order="sequential")
    seen = [env.reset(seed=0)[1]["index"]] + [env.reset()[1]["index"] for _ in range(5)]
    assert seen == [0, 1, 2, 3, 4, 5]


def test_clicks_channel():
    env = _make("BetterWorseSeg-Clicks-v0")
    base = env.unwrapped
    obs, _ = env.reset(seed=0)
    assert obs.shape == (5, 128, 128) and not obs[4].any()
    obs, *_ = env.step(base.encode_action(1, 10, 20))
    obs, *_ = env.step(base.encode_action(0, 100, 50))
    assert obs[4, 10, 20] == 255 and obs[4, 100, 50] == 128
    assert np.count_nonzero(obs[4]) == 18


def test_render_rgb_array_and_human(monkeypatch):
    env = _make(render_mode="rgb_array", render_ground_truth=True)
    env.reset(seed=0)
    f0 = env.render()
    env.step(env.unwrapped.encode_action(1, 64, 64))
    f1 = env.render()
    assert f0.dtype == np.uint8 and f0.ndim == 3 and f0.shape[2] == 3
    assert f0.shape[0] > 128 * 3 and f0.shape[1] == 128 * 3
    assert not np.array_equal(f0, f1)  # the click is drawn
    import matplotlib

    matplotlib.use("Agg")
    env = _make(render_mode="human")
    env.reset(seed=0)
    env.step(0)
    env.close()


def test_noisy_variant_flips_some_answers():
    env = _make("BetterWorseSeg-Noisy-v0", on_worse="keep")
    base = env.unwrapped
    flips = total = 0
    env.reset(seed=0)
    for _ in range(60):
        obs, r, term, _, info = env.step(env.action_space.sample())
        truth = 1 if info[EVAL_ONLY_KEY]["dice"] > info[EVAL_ONLY_KEY]["dice_before"] else -1
        flips += r != truth
        total += 1
        if term:
            env.reset()
    assert base.oracle.p == 0.1
    assert 0 < flips < total * 0.3


def test_dinov2_backbone_in_env_random_init():
    from gymnasium.utils.env_checker import check_env

    env = gym.make("BetterWorseSeg-v0", backbone="dinov2_vits14",
                   backbone_kwargs={"pretrained": False, "input_size": 112},
                   dataset_kwargs={"n_images": 2, "size": 96}, feature_cache=None)
    base = env.unwrapped
    assert base.grid == (8, 8) and base.cell == (16, 16)
    check_env(base, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(base.encode_action(1, 40, 40))
    assert obs.shape == (4, 128, 128)
    with pytest.raises(ValueError, match="multiple of the patch grid"):
        BetterWorseSegEnv(dataset_kwargs={"n_images": 1}, backbone=base.backbone, obs_size=100)


def test_feature_cache_on_disk_is_reused(tmp_path):
    env = _make(feature_cache=tmp_path)
    env.reset(seed=0, options={"index": 1})
    files = list(tmp_path.rglob("*.npz"))
    assert len(files) == 1 and "lab_texture" in str(files[0])
    env2 = _make(feature_cache=tmp_path)
    env2.reset(seed=0, options={"index": 1})
    assert env2.unwrapped.features.hits == 1 and env2.unwrapped.features.misses == 0
