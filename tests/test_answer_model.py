import numpy as np
import pytest
import torch
from _support import ConstantOracle, OtherMasks

import bow_gym  # noqa: F401
from agents import RandomClicker, run_episode
from agents.answer_model import (
    AnswerModelAgent,
    AnswerModelArgs,
    answer_logits,
    flip_augment,
    mask_shares,
    masks_after_clicks,
    soft_dice,
    train,
)
from bow_gym.datasets.synthetic import SyntheticDataset
from bow_gym.envs.better_worse_seg import BetterWorseSegEnv
from bow_gym.oracles import DiceOracle, Overlap
from bow_gym.propagation import select_patches
from bow_gym.wrappers import image_feature_inputs, patch_context_inputs, patch_inputs


def test_soft_dice_and_masks_after_clicks_known_answers():
    q = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert float(soft_dice(torch.tensor([1.0, 1.0, 0.0, 0.0]), q)) == pytest.approx(1.0)
    assert float(soft_dice(torch.tensor([1.0, 0.0, 1.0, 0.0]), q)) == pytest.approx(0.5)
    assert float(soft_dice(torch.zeros(4), q)) == 0.0
    graph = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
                         dtype=torch.float32)
    mask = torch.tensor([0.0, 0.0, 1.0, 0.5])
    after = masks_after_clicks(mask, graph)
    assert after.shape == (2, 4, 4)
    assert after[1, 0].tolist() == [1.0, 1.0, 1.0, 0.5]  # foreground on patch 0 adds 0 and 1
    assert after[0, 2].tolist() == [0.0, 0.0, 0.0, 0.5]  # background on patch 2 removes it
    assert after[0, 0].tolist() == mask.tolist()  # nothing to remove: a no-op


def test_answer_logits_agree_with_the_dice_oracle_when_the_belief_is_the_truth():
    """With q = the ground truth, sign(logit + beta) is the Dice oracle's exact answer."""
    rng = np.random.default_rng(0)
    oracle, checked = DiceOracle(), 0
    for _ in range(300):
        p = 24
        gt = (rng.random(p) < rng.uniform(0.1, 0.6)).astype(np.float32)
        before = (rng.random(p) < rng.uniform(0.0, 0.6)).astype(np.float32)
        region = rng.random(p) < rng.uniform(0.05, 0.5)
        label = int(rng.integers(2))
        after = np.where(region, float(label), before).astype(np.float32)
        if np.array_equal(after, before) or gt.sum() == 0:
            continue

        truth = oracle.judge(*(Overlap(int((m * gt).sum()), int(m.sum()), int(gt.sum()))
                               for m in (before, after)))
        margin = answer_logits(torch.tensor(gt), torch.tensor(before), torch.tensor(after),
                               torch.tensor(1.0), torch.tensor(0.0))
        if abs(float(margin)) > 1e-6:  # exact ties are "worse" by rule, any margin sign is fine
            assert (float(margin) > 0) == (truth > 0)
            checked += 1
    assert checked > 150


def test_flip_augment_moves_image_and_masks_together():
    images = np.zeros((64, 3, 16, 16), np.uint8)
    images[:, :, :8, :8] = 255  # top-left patch of a 2 x 2 grid
    before = np.zeros((64, 4), np.float32)
    before[:, 0] = 1.0
    after = before * 0.5
    im, b, a = flip_augment(images, before, after, (2, 2), np.random.default_rng(0))
    assert images[:, :, :8, :8].min() == 255 and before[:, 0].min() == 1.0  # inputs untouched
    for i in range(64):
        shares = im[i, 0].reshape(2, 8, 2, 8).mean(axis=(1, 3)).ravel() / 255
        assert np.array_equal(shares, b[i]) and np.array_equal(a[i], b[i] * 0.5)
    assert len({int(np.argmax(x)) for x in b}) == 4  # all four flips occur


def test_mask_shares_pool_each_cell():
    obs = np.zeros((4, 16, 16), np.uint8)
    obs[3, :8, :8] = 255
    obs[3, 8:12, 8:16] = 255
    assert mask_shares(obs, (2, 2)).tolist() == [1.0, 0.0, 0.0, 0.5]


def test_patch_context_inputs_known_values():
    class _Env:  # what patch_context_inputs reads of an env
        grid = (3, 3)

        def patch_features(self):
            return np.arange(9, dtype=np.float32).reshape(9, 1)  # value 3 * row + col

    x = patch_context_inputs(_Env())
    assert x.shape == (9, 4 * 1 + 2) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, :3], patch_inputs(_Env()))
    np.testing.assert_allclose(x[:, 3], np.arange(9) - 4.0)  # minus the image's mean
    assert x[4, 4] == pytest.approx(0.0)  # centre: its 3 x 3 neighbourhood is the whole grid
    # corner (0, 0): the repeated border gives rows and columns {0, 0, 1}: mean 12 / 9
    assert x[0, 4] == pytest.approx(12 / 9)
    assert x[8, 4] == pytest.approx(-12 / 9)
    assert x[4, 5] == pytest.approx(0.0)  # 5 x 5 around the centre is symmetric too


def test_image_feature_inputs_known_values():
    class _Env:  # what image_feature_inputs reads of an env
        grid = (2, 3)

        def patch_features(self):
            return np.arange(12, dtype=np.float32).reshape(6, 2)  # patch p: (2 p, 2 p + 1)

    obs = np.zeros((4, 8, 12), np.uint8)  # 4 x 4 pixels per patch
    obs[0, :4, :4] = 255  # red in the top-left patch
    obs[1, 4:, 8:] = 255  # green in the bottom-right patch
    obs[2, 0, 0] = 255  # one blue pixel: 1/4 of the top-left cell at 2 x 2 cells per patch
    obs[3] = 255  # the mask channel is not read
    x = image_feature_inputs(obs, _Env())
    assert x.shape == (3 + 2, 4, 6) and x.dtype == np.float32
    assert np.all(x[0, :2, :2] == 1.0) and x[0].sum() == 4.0
    assert np.all(x[1, 2:, 4:] == 1.0) and x[1].sum() == 4.0
    assert x[2, 0, 0] == pytest.approx(0.25) and x[2].sum() == pytest.approx(0.25)
    np.testing.assert_array_equal(x[3, ::2, ::2], [[0, 2, 4], [6, 8, 10]])
    np.testing.assert_array_equal(x[4, 1::2, 1::2], [[1, 3, 5], [7, 9, 11]])
    assert image_feature_inputs(obs, _Env(), cells=1).shape == (5, 2, 3)
    with pytest.raises(ValueError, match="cells"):
        image_feature_inputs(obs, _Env(), cells=0)


def test_residual_belief_starts_as_the_feature_belief():
    env = BetterWorseSegEnv(dataset_kwargs={"n_images": 2, "size": 96}, feature_cache=None)
    obs, _ = env.reset(seed=0)
    agent = _agent(belief="residual", width=8)
    agent.net.eval()
    with torch.no_grad():
        agent.net.unet.head.weight.zero_()  # an untrained correction
        mlp = agent.net.patches(torch.as_tensor(patch_inputs(env))[None])
        np.testing.assert_allclose(agent.belief_logits(agent.belief_inputs(obs, env)).numpy(),
                                   mlp.numpy(), rtol=1e-5, atol=1e-6)
        assert mlp.std() > 0.01  # a non-trivial belief: the comparison can fail
        agent.net.unet.head.weight.normal_(0, 0.5)
        assert not torch.allclose(agent.belief_logits(agent.belief_inputs(obs, env)), mlp)


def test_env_propagation_graph_is_the_features_selection():
    env = BetterWorseSegEnv(dataset_kwargs={"n_images": 2, "size": 96}, feature_cache=None)
    with pytest.raises(RuntimeError, match="reset"):
        env.propagation_graph()
    env.reset(seed=0, options={"index": 1})
    graph = env.propagation_graph()
    feats = env.features.get(env.dataset[1].image)
    assert graph.shape == (env.n_patches, env.n_patches) and graph.dtype == bool
    for patch in (0, 77, 255):
        assert np.array_equal(graph[patch], select_patches(feats, patch, env.threshold))
    graph[:] = False  # a copy: the env's own graph is untouched
    assert env.propagation_graph().any()
    pf = env.patch_features()
    assert pf.shape == (env.n_patches, feats.shape[-1]) and pf.dtype == np.float32
    assert np.array_equal(pf, feats.reshape(env.n_patches, -1))


def _agent(**kw) -> AnswerModelAgent:
    torch.manual_seed(0)
    agent = AnswerModelAgent((16, 16), **kw)
    with torch.no_grad():
        for head in (m for n, m in agent.net.named_modules() if n.split(".")[-1] == "head"):
            head.weight.normal_(0, 0.5)  # a non-trivial belief
    return agent


@pytest.mark.parametrize("belief", ["features", "context", "hybrid"])
def test_actions_unchanged_when_only_ground_truth_differs(belief):
    ds = SyntheticDataset(n_images=3, size=96)
    runs = []
    for answer in (1, -1):
        for data in (ds, OtherMasks(ds, 11, 1)):
            agent = _agent(online_batch=0, greedy=True, belief=belief)
            env = BetterWorseSegEnv(data, oracle=ConstantOracle(answer), feature_cache=None)
            runs.append([run_episode(env, agent, seed=s, options={"index": s}).actions
                         for s in range(3)])
    assert runs[0] == runs[1] and runs[2] == runs[3]
    assert runs[0] != runs[2]  # the answers, which it may read, do change what it does


def test_clicks_change_the_mask_and_rejected_clicks_are_not_repeated():
    env = BetterWorseSegEnv(dataset_kwargs={"n_images": 2, "size": 96},
                            oracle=ConstantOracle(-1), feature_cache=None)
    agent = _agent(online_batch=0, greedy=True)
    rec = run_episode(env, agent, seed=0)
    clicks = []
    for a in rec.actions:
        label, y, x = env.decode_action(a)
        clicks.append((label, (y // 8) * 16 + x // 8))
    assert len(set(clicks)) == len(clicks) == 5
    assert all(label == 1 for label, _ in clicks)  # from an empty mask only foreground changes it
    assert all(0.0 < c < 1.0 for c in rec.confidence)


def test_within_episode_update_lowers_the_belief_in_a_rejected_region():
    env = BetterWorseSegEnv(dataset_kwargs={"n_images": 1, "size": 96},
                            oracle=ConstantOracle(-1), feature_cache=None)
    agent = _agent(online_batch=0, greedy=True)
    obs, info = env.reset(seed=0)
    action = agent.act(obs, info, env)
    ep = agent._episode
    _, after, _, _ = ep.pending
    added = (after > 0).numpy()
    q0 = torch.sigmoid(ep.logits).numpy()
    _, reward, _, _, info = env.step(action)
    agent.observe(action, reward, False, info)
    q1 = torch.sigmoid(ep.logits + ep.offset).numpy()
    assert q1[added].mean() < q0[added].mean() - 0.05
    assert abs(q1[~added].mean() - q0[~added].mean()) < abs(q1[added].mean() - q0[added].mean())


def test_batched_episode_fits_equal_single_fits_and_ignore_padding():
    from agents.belief import fit_episode_offsets

    g = torch.Generator().manual_seed(0)
    p, k = 12, 3
    logits = torch.randn(2, p, generator=g)
    before = (torch.rand(2, k, p, generator=g) > 0.5).float()
    after = (torch.rand(2, k, p, generator=g) > 0.5).float()
    answers = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    weights = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # episode 2 has 2 clicks so far
    kappa, beta = torch.tensor(20.0), torch.tensor(1.0)
    local, shift = fit_episode_offsets(logits, before, after, answers, kappa, beta,
                                       weights=weights)
    assert local.shape == (2, p) and shift.shape == (2,)
    for i, n in enumerate((3, 2)):
        one_local, one_shift = fit_episode_offsets(logits[i], before[i, :n], after[i, :n],
                                                   answers[i, :n], kappa, beta)
        torch.testing.assert_close(local[i], one_local)
        torch.testing.assert_close(shift[i], one_shift)
    assert local.abs().sum() > 0  # the answers moved the belief
    none = fit_episode_offsets(logits, before, after, answers, kappa, beta,
                               weights=torch.zeros(2, k))
    assert not none[0].any() and not none[1].any()


@pytest.mark.parametrize("global_offset", [True, False])
def test_image_wide_offset_follows_the_answers(global_offset):
    """A "better" answer raises the whole image's belief a little, a "worse" one lowers it."""
    shifts = []
    for answer in (1, -1):
        env = BetterWorseSegEnv(dataset_kwargs={"n_images": 1, "size": 96},
                                oracle=ConstantOracle(answer), feature_cache=None)
        agent = _agent(online_batch=0, greedy=True, global_offset=global_offset)
        obs, info = env.reset(seed=0)
        action = agent.act(obs, info, env)
        ep = agent._episode
        _, reward, _, _, info = env.step(action)
        agent.observe(action, reward, False, info)
        shifts.append(float(ep.shift))
    if global_offset:
        assert shifts[0] > 0.05 and shifts[1] < -0.05
    else:
        assert shifts == [0.0, 0.0]


@pytest.mark.parametrize("belief", ["features", "context", "image", "hybrid", "residual"])
def test_checkpoint_round_trip_and_errors(tmp_path, belief):
    agent = _agent(belief=belief, width=8, epsilon=0.3, seed=2)
    rng = np.random.default_rng(0)
    obs = {"image": rng.integers(0, 255, (2, 3, 128, 128), dtype=np.uint8),
           "hybrid": rng.normal(size=(2, 16, 32, 32)).astype(np.float32),
           "residual": rng.normal(size=(2, 16, 32, 32)).astype(np.float32),
           }.get(belief, rng.normal(size=(2, 256, 15)).astype(np.float32))
    if belief != "image":
        with pytest.raises(ValueError, match="has not read any image"):
            agent.save(tmp_path / "a.safetensors")
        agent.net.train()
        agent.belief_logits(obs)  # sizes the lazy input layer, updates the running statistics
        agent.net.eval()
    agent.save(tmp_path / "a.safetensors")
    loaded = AnswerModelAgent.load(tmp_path / "a.safetensors")
    assert loaded.hparams == agent.hparams
    loaded.net.eval()
    with torch.no_grad():
        assert torch.equal(agent.belief_logits(obs), loaded.belief_logits(obs))
    assert loaded.beta.item() == agent.beta.item()
    assert not list(tmp_path.glob(".*tmp"))
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        AnswerModelAgent.load(tmp_path / "nothing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="bad.safetensors"):
        AnswerModelAgent.load(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="epsilon"):
        AnswerModelAgent((16, 16), epsilon=1.5)
    env = BetterWorseSegEnv(dataset_kwargs={"n_images": 1, "size": 96}, feature_cache=None)
    obs, info = env.reset(seed=0)
    with pytest.raises(ValueError, match="patch grid"):
        AnswerModelAgent((8, 8)).act(obs, info, env)


def test_replayed_clicks_keep_their_own_image_without_an_image_id():
    env = BetterWorseSegEnv(dataset_kwargs={"n_images": 2, "size": 96}, feature_cache=None)
    agent = AnswerModelAgent((16, 16), online_batch=0)
    for i in range(2):
        obs, _ = env.reset(seed=0, options={"index": i})
        agent.reset()
        agent.act(obs, {}, env)  # a caller that passes no info
        agent.observe(0, -1.0, True, {})
    assert len(agent.replay.images) == 2


def test_online_learning_updates_weights():
    env = BetterWorseSegEnv(dataset_kwargs={"n_images": 2, "size": 96}, feature_cache=None)
    agent = AnswerModelAgent((16, 16), online_batch=4, batch_size=4)
    before = agent.net.head.weight.detach().clone()
    run_episode(env, agent, seed=0)
    assert agent.replay.images[next(iter(agent.replay.images))].shape == (256, 15)  # features
    assert agent.updates == 1 and len(agent.replay) == 5
    agent.flush()
    assert agent.updates == 2
    assert not torch.equal(before, agent.net.head.weight)


def test_short_training_beats_random_on_easy_variant(tmp_path):
    args = AnswerModelArgs(env_id="BetterWorseSeg-Easy-v0", total_answers=320, num_envs=8,
                           out=str(tmp_path), tensorboard=True, progress=False, seed=0,
                           env_kwargs={"dataset_kwargs": {"n_images": 60, "size": 96}})
    agent, history = train(args)
    assert history["clicks"][-1] == 320 and (tmp_path / "agent.safetensors").is_file()
    env = BetterWorseSegEnv(dataset_kwargs={"n_images": 60, "size": 96, "contrast": 2.5,
                                            "split": "test"}, feature_cache=None)
    agent.greedy, agent.online_batch = True, 0
    n = len(env.dataset)
    learned = np.mean([run_episode(env, agent, seed=i, options={"index": i}).final_dice
                       for i in range(n)])
    rand = np.mean([run_episode(env, RandomClicker(), seed=i, options={"index": i}).final_dice
                    for i in range(n)])
    assert learned > rand + 0.2, (learned, rand)


def test_training_on_the_native_vector_env_equals_training_on_sync_single_envs(tmp_path):
    """Offline training steps the native vector env by default; Gymnasium's SyncVectorEnv of
    single envs gives the same episodes and answers, so the same weights (epsilon-greedy too)."""
    from agents.answer_model import AnswerModelArgs, train

    def trained(kind):
        args = AnswerModelArgs(dataset="synthetic", total_answers=48, num_envs=4, seed=2,
                               epsilon=0.2, batch_size=16, vector_env=kind, tensorboard=False,
                               progress=False, out=str(tmp_path / kind),
                               env_kwargs={"dataset_kwargs": {"n_images": 8, "size": 96}})
        agent, history = train(args)
        return list(agent.net.state_dict().values()), history

    (native, h_native), (sync, h_sync) = trained("native"), trained("sync")
    assert AnswerModelArgs().vector_env == "native"
    assert h_native == h_sync and len(h_native["clicks"]) == 12
    assert all(torch.equal(a, b) for a, b in zip(native, sync, strict=True))
