import numpy as np
import pytest
import torch
from _support import ConstantOracle, OtherMasks

import bow_gym  # noqa: F401
from agents import RandomClicker, run_episode
from agents.reinforce import (
    BeliefPolicyNet,
    PatchPolicyNet,
    ReinforceAgent,
    ReinforceArgs,
    belief_policy_inputs,
    patch_policy_inputs,
    split_belief_inputs,
    train,
)
from agents.unet import ClickUNet
from bow_gym.datasets.synthetic import SyntheticDataset
from bow_gym.envs.better_worse_seg import BetterWorseSegEnv


def test_unet_logits_map_to_actions_and_start_uniform():
    net = ClickUNet(4)
    obs = torch.randint(0, 255, (3, 4, 128, 128), dtype=torch.uint8)
    logits, value = net(obs)
    assert logits.shape == (3, 2, 128, 128) and value.shape == (3,)
    assert torch.all(logits == 0)  # zero-initialised head: uniform policy
    assert ClickUNet(5)(torch.zeros(1, 5, 128, 128))[0].shape == (1, 2, 128, 128)


def _env(n: int = 2, **kwargs) -> BetterWorseSegEnv:
    return BetterWorseSegEnv(dataset_kwargs={"n_images": n, "size": 96}, feature_cache=None,
                             **kwargs)


def test_patch_policy_inputs_known_values():
    env = _env()
    obs, _ = env.reset(seed=0)
    graph = env.propagation_graph()
    p = graph.shape[0]
    x = patch_policy_inputs(obs, env)
    d = env.patch_features().shape[1]
    assert x.shape == (p, d + 6) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, :d], env.patch_features())
    assert x[0, d] == -1 and x[-1, d + 1] == 1  # patch coordinates
    # empty mask: no foreground anywhere; the reach is the propagation graph's row size
    np.testing.assert_array_equal(x[:, d + 2], 0)
    np.testing.assert_allclose(x[:, d + 3], graph.sum(1) / p)
    np.testing.assert_array_equal(x[:, d + 4:], 0)
    # a full mask: every share is 1
    obs[3] = 255
    x = patch_policy_inputs(obs, env)
    np.testing.assert_allclose(x[:, [d + 2, d + 4, d + 5]], 1)
    net = PatchPolicyNet(8)
    logits, value = net(torch.as_tensor(np.stack([x, x])))
    assert logits.shape == (2, 2 * p) and value.shape == (2,)
    assert torch.all(logits == 0)  # zero-initialised head: uniform policy


def test_patch_policy_clicks_patch_centres_and_skips_no_op_clicks():
    env = _env()
    agent = ReinforceAgent(policy="patches", online_batch=0, seed=0)
    obs, _ = env.reset(seed=0)
    inputs, valid = agent.policy_inputs(obs, env, [])
    p = env.grid[0] * env.grid[1]
    # from an empty mask a background click changes nothing: only foreground clicks are valid
    assert valid.shape == (2 * p,) and not valid[:p].any() and valid[p:].all()
    _, valid = agent.policy_inputs(obs, env, [(1, 3)])
    assert not valid[p + 3] and valid.sum() == p - 1
    for seed in range(5):
        agent.reset(seed)
        label, y, x = env.decode_action(agent.act(obs, {}, env))
        ch, cw = env.cell
        assert label == 1 and y % ch == ch // 2 and x % cw == cw // 2
        assert 0 < agent.last_confidence < 1
    obs2 = np.stack([obs, obs])
    with pytest.raises(ValueError, match="one env per observation"):
        agent.act_batch(obs2, [[], []], env)
    actions, _ = agent.act_batch(obs2, [[], []], [env, env])
    assert actions.shape == (2,)
    with pytest.raises(ValueError, match="policy"):
        ReinforceAgent(policy="pixels")


@pytest.mark.parametrize("policy", ["unet", "patches", "belief"])
def test_actions_unchanged_when_only_ground_truth_differs(policy):
    ds = SyntheticDataset(n_images=3, size=96)
    torch.manual_seed(0)
    agent = ReinforceAgent(4, policy=policy, online_batch=0, avoid_rejected=False, seed=1)
    if policy != "unet":  # materialise the lazy layers before randomising the head
        env = BetterWorseSegEnv(ds, feature_cache=None)
        obs, _ = env.reset(seed=0)
        agent.act(obs, {}, env)
    with torch.no_grad():
        for p in agent.net.head.parameters():
            p.normal_(0, 0.5)  # a non-trivial policy
    runs = []
    # The belief policy reads the answers (which may depend on the truth): fix them.
    oracle = ConstantOracle(-1) if policy == "belief" else "dice"
    for data in (ds, OtherMasks(ds, 11, 1)):
        env = BetterWorseSegEnv(data, on_worse="keep", oracle=oracle, feature_cache=None)
        runs.append([run_episode(env, agent, seed=s, options={"index": s}).actions
                     for s in range(3)])
    assert runs[0] == runs[1]


def test_rejected_clicks_are_not_repeated():
    env = BetterWorseSegEnv(dataset_kwargs={"n_images": 2, "size": 96}, feature_cache=None)
    agent = ReinforceAgent(4, online_batch=0, greedy=True)
    with torch.no_grad():
        agent.net.head.bias.copy_(torch.tensor([0.0, 5.0]))  # always foreground
        agent.net.head.weight.normal_(0, 0.01)
    rec = run_episode(env, agent, seed=0)
    patches = [(a // (128 * 128), (a % (128 * 128)) // 128 // 8, a % 128 // 8)
               for a, r in zip(rec.actions, rec.rewards, strict=True) if r < 0]
    assert len(patches) == len(set(patches))


def test_batched_acting_matches_single_and_masks_rejected():
    env = BetterWorseSegEnv(dataset_kwargs={"n_images": 2, "size": 96}, feature_cache=None)
    agent = ReinforceAgent(4, online_batch=0, greedy=True)
    with torch.no_grad():
        agent.net.head.weight.normal_(0, 0.1)
    obs = np.stack([env.reset(seed=0, options={"index": i})[0] for i in range(2)])
    actions, conf = agent.act_batch(obs, [[], []], env)
    for i in range(2):
        agent.reset()
        assert agent.act(obs[i], {}, env) == actions[i]
        # 1 - H / log(n) cancels near a uniform policy: float32 leaves ~1e-7 absolute
        assert agent.last_confidence == pytest.approx(conf[i], rel=1e-4, abs=1e-6)
    assert np.all((conf > 0) & (conf < 1))
    label, y, x = env.decode_action(int(actions[0]))
    patch = (y // 8) * env.grid[1] + x // 8
    again, _ = agent.act_batch(obs[:1], [[(label, patch)]], env)
    l2, y2, x2 = env.decode_action(int(again[0]))
    assert (l2, (y2 // 8) * env.grid[1] + x2 // 8) != (label, patch)
    # learn_online updates once a batch of answered clicks is queued; flush() takes the rest
    agent.online_batch = 2
    agent.learn_online(obs[0], int(actions[0]), 1.0)
    assert agent.updates == 0
    agent.learn_online(obs[1], int(actions[1]), -1.0)
    assert agent.updates == 1
    agent.learn_online(obs[1], int(actions[1]), -1.0)
    agent.flush()
    assert agent.updates == 2 and not agent._pending


def test_patch_policy_checkpoint_round_trip_and_online_learning(tmp_path):
    env = _env()
    agent = ReinforceAgent(policy="patches", online_batch=5, baseline="value", seed=2)
    with pytest.raises(ValueError, match="has not read any image"):
        agent.save(tmp_path / "early.safetensors")
    obs, _ = env.reset(seed=0)
    with pytest.raises(RuntimeError, match="act or act_batch"):
        agent.learn_online(obs, 0, 1.0)
    before = agent.net.head.weight.detach().clone()
    run_episode(env, agent, seed=0)  # 5 clicks: one online update
    assert agent.updates == 1 and not torch.equal(before, agent.net.head.weight)
    agent.save(tmp_path / "a.safetensors")
    loaded = ReinforceAgent.load(tmp_path / "a.safetensors")
    assert loaded.hparams == agent.hparams and loaded.policy == "patches"
    x = patch_policy_inputs(obs, env)
    agent.net.eval()
    loaded.net.eval()
    with torch.no_grad():
        assert torch.equal(agent.logits(x)[0], loaded.logits(x)[0])


def test_patch_policy_labels_a_round_in_lockstep():
    from bow_gym.rounds import label_round

    envs = [_env(6) for _ in range(3)]
    agent = ReinforceAgent(policy="patches", online_batch=4, seed=0)
    labels = label_round(envs, agent, list(range(6)), seed=0, progress=False)
    assert labels.rewards.shape == (6, 5) and np.isin(labels.rewards, (-1, 1)).all()
    assert agent.updates == 30 // 4 + 1  # online updates, the last one in flush()
    assert np.isfinite(labels.confidence).all()


def test_checkpoint_round_trip(tmp_path):
    agent = ReinforceAgent(4, temperature=0.5, baseline="value", seed=3)
    with torch.no_grad():
        agent.net.head.weight.normal_(0, 0.1)
    agent.save(tmp_path / "a.safetensors")
    loaded = ReinforceAgent.load(tmp_path / "a.safetensors")
    assert loaded.hparams == agent.hparams
    obs = np.random.default_rng(0).integers(0, 255, (2, 4, 128, 128), dtype=np.uint8)
    with torch.no_grad():
        assert torch.equal(agent.logits(obs)[0], loaded.logits(obs)[0])
    assert not list(tmp_path.glob(".*tmp"))
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        ReinforceAgent.load(tmp_path / "nothing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="bad.safetensors"):
        ReinforceAgent.load(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="baseline"):
        ReinforceAgent(4, baseline="median")


def test_online_learning_updates_weights():
    env = BetterWorseSegEnv(dataset_kwargs={"n_images": 2, "size": 96}, feature_cache=None)
    agent = ReinforceAgent(4, online_batch=5)
    before = agent.net.head.weight.detach().clone()
    run_episode(env, agent, seed=0)
    assert agent.updates == 1
    assert not torch.equal(before, agent.net.head.weight)


@pytest.mark.parametrize("policy,aux_coef", [("unet", 0.0), ("patches", 0.0), ("belief", 1.0)])
def test_short_training_beats_random_on_easy_variant(tmp_path, policy, aux_coef):
    args = ReinforceArgs(env_id="BetterWorseSeg-Easy-v0", total_answers=640, num_envs=8, lr=2e-3,
                         policy=policy, aux_coef=aux_coef,
                         out=str(tmp_path), tensorboard=True, progress=False, seed=0,
                         env_kwargs={"dataset_kwargs": {"n_images": 60, "size": 96}})
    agent, history = train(args)
    assert len(history["clicks"]) == 80 and history["clicks"][-1] == 640
    assert (tmp_path / "agent.safetensors").is_file() and any((tmp_path / "tb").iterdir())
    env = BetterWorseSegEnv(dataset_kwargs={"n_images": 60, "size": 96, "contrast": 2.5,
                                            "split": "test"}, feature_cache=None)
    agent.greedy, agent.online_batch = True, 0
    n = len(env.dataset)
    learned = np.mean([run_episode(env, agent, seed=i, options={"index": i}).final_dice
                       for i in range(n)])
    rand = np.mean([run_episode(env, RandomClicker(), seed=i, options={"index": i}).final_dice
                    for i in range(n)])
    assert learned > rand + 0.1, (learned, rand)


def test_belief_policy_inputs_and_logits_known_values():
    env = _env()
    obs, _ = env.reset(seed=0)
    agent = ReinforceAgent(policy="belief", online_batch=0, posterior_steps=0)
    x = belief_policy_inputs(obs, env)
    features, m, offset, graph = split_belief_inputs(x)
    graph_true = env.propagation_graph().astype(np.float32)
    p = len(graph_true)
    assert x.shape == (p, features.shape[1] + 2 + p) and not offset.any()
    np.testing.assert_array_equal(graph, graph_true)
    np.testing.assert_array_equal(m, ((obs[3] > 127).reshape(16, 8, 16, 8).mean(axis=(1, 3))
                                      .ravel()))
    # Untrained, the belief is 0.5 everywhere; a click's logit is alpha (10) x its Dice gain.
    with torch.no_grad():
        logits, _ = agent.logits(x)
    k = int(np.argmax(graph_true.sum(1)))
    fg = np.maximum(m, graph_true[k])
    bg = m * (1 - graph_true[k])

    def dice(mask):
        return 2 * (mask * 0.5).sum() / (mask.sum() + 0.5 * p)

    assert logits[0, p + k].item() == pytest.approx(10 * (dice(fg) - dice(m)), abs=1e-4)
    assert logits[0, k].item() == pytest.approx(10 * (dice(bg) - dice(m)), abs=1e-4)
    assert isinstance(agent.net, BeliefPolicyNet)


def test_belief_policy_answers_move_the_belief_of_the_clicked_region():
    env = _env()
    obs, _ = env.reset(seed=0)
    graph = env.propagation_graph()
    agent = ReinforceAgent(policy="belief", online_batch=0, greedy=True)
    p = len(graph)
    k = int(np.argmax(graph.sum(1)))
    shifts = {}
    for reward in (1.0, -1.0):
        ep = agent.new_episode()
        x, valid = agent.policy_inputs(obs, env, [], ep)
        assert valid[p + k]
        agent.record_answer(ep, x, p + k, reward)  # a foreground click on patch k
        x2, _ = agent.policy_inputs(obs, env, [], ep)
        off = split_belief_inputs(x2)[2]
        shifts[reward] = float(off[graph[k]].mean() - off[~graph[k]].mean())
    # "better" raises the belief in what the click selected (relative to the rest), "worse"
    # lowers it
    assert shifts[1.0] > 0.1 and shifts[-1.0] < -0.1, shifts
    # act_batch keeps each episode's click until answer_batch gives it the answer
    eps = [agent.new_episode(), agent.new_episode()]
    obs2 = np.stack([obs, env.reset(seed=1, options={"index": 1})[0]])
    env0 = _env()
    env0.reset(seed=0)
    agent.act_batch(obs2, [[], []], [env0, env], episodes=eps)
    assert all(e.pending is not None for e in eps)
    agent.answer_batch(eps, [-1.0, 1.0])
    assert all(e.pending is None and len(e.events) == 1 for e in eps)
    with pytest.raises(ValueError, match="2 observations and 1 episodes"):
        agent.act_batch(obs2, [[], []], [env0, env], episodes=eps[:1])


def test_belief_policy_arguments_checkpoint_and_auxiliary_loss(tmp_path):
    with pytest.raises(ValueError, match="aux_coef needs policy='belief'"):
        ReinforceAgent(policy="patches", aux_coef=1.0)
    with pytest.raises(ValueError, match="aux_steps"):
        ReinforceAgent(policy="belief", aux_steps=0)
    env = _env()
    agent = ReinforceAgent(policy="belief", aux_coef=1.0, aux_steps=3, online_batch=5, seed=0)
    rec = run_episode(env, agent, seed=0)  # 5 clicks: one online update, 3 auxiliary steps
    assert agent.updates == 1 and len(agent.replay) == 5
    assert agent.replay.rows[-1][3] == (1.0 if rec.rewards[-1] > 0 else 0.0)
    kappa = agent.net.log_kappa.item()
    assert kappa != pytest.approx(np.log(20.0))  # the answer model is trained
    agent.save(tmp_path / "b.safetensors")
    loaded = ReinforceAgent.load(tmp_path / "b.safetensors")
    assert loaded.hparams == agent.hparams and loaded.aux_coef == 1.0
    obs, _ = env.reset(seed=1)
    x = belief_policy_inputs(obs, env)
    agent.net.eval()
    loaded.net.eval()
    with torch.no_grad():
        assert torch.equal(agent.logits(x)[0], loaded.logits(x)[0])


def test_belief_policy_labels_a_round_in_lockstep_with_episode_memory(monkeypatch):
    from bow_gym.rounds import label_round

    envs = [_env(6) for _ in range(3)]
    agent = ReinforceAgent(policy="belief", aux_coef=1.0, aux_steps=1, online_batch=4, seed=0)
    answered = []
    record = agent.record_answer
    monkeypatch.setattr(agent, "record_answer",
                        lambda ep, *a: (answered.append(ep), record(ep, *a)))
    labels = label_round(envs, agent, list(range(6)), seed=0, progress=False)
    assert labels.rewards.shape == (6, 5) and np.isin(labels.rewards, (-1, 1)).all()
    # every click's answer reached its own episode's memory: 6 episodes of 5 answers
    # (the list keeps every memory alive, so ids are not reused)
    counts = np.unique([id(ep) for ep in answered], return_counts=True)[1]
    assert len(answered) == 30 and sorted(counts) == [5] * 6
    assert agent.updates == 30 // 4 + 1 and len(agent.replay) == 30


@pytest.mark.parametrize("policy,reward,gamma", [("unet", "answer", 0.0),
                                                 ("belief", "dice_gain", 0.5)])
def test_training_on_the_native_vector_env_equals_training_on_sync_single_envs(
        tmp_path, policy, reward, gamma):
    """The batched rollouts run on the native vector env by default; Gymnasium's SyncVectorEnv of
    single envs gives the same episodes and answers, so the same weights."""
    def trained(kind):
        args = ReinforceArgs(dataset="synthetic", total_answers=48, num_envs=4, seed=3,
                             policy=policy, reward=reward, gamma=gamma, vector_env=kind,
                             out=str(tmp_path / kind), tensorboard=False, progress=False,
                             env_kwargs={"dataset_kwargs": {"n_images": 8, "size": 96}})
        agent, history = train(args)
        return list(agent.net.state_dict().values()), history

    (native, h_native), (sync, h_sync) = trained("native"), trained("sync")
    assert ReinforceArgs().vector_env == "native"
    assert h_native == h_sync and len(h_native["clicks"]) == 12
    assert all(torch.equal(a, b) for a, b in zip(native, sync, strict=True))
    with pytest.raises(ValueError, match=r"vector_env must be one of \['native', 'sync'\], got "
                                         r"'async'"):
        train(ReinforceArgs(dataset="synthetic", vector_env="async", out=str(tmp_path / "x")))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("kind", ["native", "sync"])
def test_training_vector_envs_return_observations_an_agent_may_keep(kind):
    """Rollouts keep each step's observation until the update: the next step must not
    overwrite it (a shared buffer would make the update learn from the wrong observation)."""
    from agents.common import make_vector_env

    args = ReinforceArgs(dataset="synthetic", vector_env=kind,
                         env_kwargs={"dataset_kwargs": {"n_images": 4, "size": 96}})
    venv, views = make_vector_env(args, 2)
    obs, info = venv.reset(seed=0)
    kept = obs.copy()
    for t in range(6):  # one episode end included
        new, _, _, _, info = venv.step(np.array([views[0].encode_action(1, 40, 40 + t)] * 2))
        assert np.array_equal(obs, kept) and "eval_only" not in info
        obs, kept = new, new.copy()
