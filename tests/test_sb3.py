"""SB3 baselines: the extractor with PPO/A2C/DQN, checkpoints, masking, no ground truth."""

import csv
import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from _support import ConstantOracle, OtherMasks
from gymnasium import spaces

import bow_gym  # noqa: F401
from agents import ClickPolicy, run_episode
from agents.sb3 import (
    ALGOS,
    AnswerPredictionCallback,
    BeliefExtractor,
    PatchFeatureExtractor,
    PatchGridExtractor,
    SB3Args,
    SB3ClickPolicy,
    build_policy,
    main,
    make_vec_env,
    tag_name,
    train_sb3,
)
from bow_gym.datasets.synthetic import SyntheticDataset
from bow_gym.envs.better_worse_seg import EVAL_ONLY_KEY, BetterWorseSegEnv
from bow_gym.wrappers import (
    BeliefObservation,
    ClickHistory,
    ClickMasks,
    PatchActions,
    StripEvalInfo,
    belief_observation,
    changing_clicks,
    patch_policy_inputs,
    patch_shares,
    split_belief_observation,
)

TINY = {"dataset_kwargs": {"n_images": 8, "size": 96}}

# Small networks and a few hundred clicks: the tests check the plumbing, not the learning.
_PER_ALGO = {
    "ppo": {"n_steps": 16, "batch_size": 32, "n_epochs": 2},
    "maskable_ppo": {"n_steps": 16, "batch_size": 32, "n_epochs": 2},
    "a2c": {"n_steps": 2},
    "dqn": {"learning_starts": 48, "batch_size": 16, "gradient_steps": 1},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny networks and single observations gain nothing from a second thread, and on a busy
    # two-core machine two threads spend most of their time waiting for each other.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _args(algo: str, out, **overrides) -> SB3Args:
    kwargs = dict(algo=algo, total_answers=192, num_envs=4, width=8, channels=4, out=str(out),
                  progress=False, env_kwargs=TINY, **_PER_ALGO[algo])
    return SB3Args(**{**kwargs, **overrides})


@pytest.fixture(scope="module", params=[*ALGOS, "ppo-features", "dqn-features", "ppo-belief"])
def trained(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"sb3-{request.param}")
    algo, _, obs = request.param.partition("-")
    extra = {"aux_coef": 1.0, "aux_steps": 2} if obs == "belief" else {}
    args = _args(algo, out, obs=obs or "pixels", **extra)
    policy, history = train_sb3(args)
    return args, policy, history, out


def _tiny_env(**kwargs) -> gym.Env:
    return gym.make("BetterWorseSeg-v0", **TINY, **kwargs)


def _first_obs(policy: SB3ClickPolicy, env: gym.Env, seed: int) -> np.ndarray:
    """What the SB3 policy reads at the start of an episode (pixels, patch features or belief)."""
    obs = env.reset(seed=seed)[0]
    if policy.spec.get("obs") == "features":
        return patch_policy_inputs(obs, env.unwrapped)
    if policy.spec.get("obs") == "belief":
        return belief_observation(obs, env.unwrapped, ClickHistory(policy.spec["clicks"]))
    return obs


def test_trains_and_writes_run_folder(trained):
    args, policy, history, out = trained
    assert isinstance(policy, ClickPolicy) and policy.name == args.algo
    assert not policy.reads_ground_truth
    net = getattr(policy.policy, "q_net", policy.policy)  # DQN keeps its extractor in q_net
    extractor = {"pixels": PatchGridExtractor, "features": PatchFeatureExtractor,
                 "belief": BeliefExtractor}[args.obs]
    assert isinstance(net.features_extractor, extractor)
    # One entry per vectorised step; rewards are +-1, so the mean is 2 * share - 1.
    assert set(history) == {"clicks", "reward", "better_share"}
    assert history["clicks"] == [args.num_envs * (i + 1) for i in range(len(history["clicks"]))]
    assert history["clicks"][-1] >= args.total_answers
    np.testing.assert_allclose(history["reward"], 2 * np.array(history["better_share"]) - 1)
    assert json.loads((out / "history.json").read_text()) == history
    assert json.loads((out / "args.json").read_text())["algo"] == args.algo
    for name in ("agent.safetensors", "model.zip", "progress.csv"):
        assert (out / name).is_file(), name
    with open(out / "progress.csv") as f:
        columns = set(next(csv.reader(f)))
    assert {"charts/reward", "charts/better_share", "charts/clicks_per_s"} <= columns
    assert any(c.startswith("losses/") for c in columns)
    assert not any(c.startswith(("train/", "rollout/", "time/")) for c in columns)
    if args.aux_coef:
        assert {"losses/answer_nll", "charts/answer_accuracy"} <= columns
    assert list((out / "tb").glob("events.out.tfevents.*"))


def test_patch_head_is_tied_and_frozen(trained):
    _, policy, _, _ = trained
    p = policy.policy
    heads = [p.action_net] if hasattr(p, "action_net") else [p.q_net.q_net[-1]]
    for head in heads:
        n = head.out_features
        assert not head.weight.requires_grad
        torch.testing.assert_close(head.weight[:, :n], torch.eye(n))
        assert not head.weight[:, n:].any() and not head.bias.any()


def test_checkpoint_round_trip_gives_identical_actions(trained):
    args, policy, _, out = trained
    loaded = SB3ClickPolicy.load(out / "agent.safetensors")
    assert loaded.name == args.algo and loaded.spec == policy.spec
    assert json.loads(loaded.metadata["args"])["algo"] == args.algo
    env = _tiny_env()
    for seed in range(3):
        a = run_episode(env, policy, seed=seed).actions
        b = run_episode(env, loaded, seed=seed).actions
        assert a == b
    obs = _first_obs(policy, env, 0)
    torch.testing.assert_close(policy.scores(obs), loaded.scores(obs), rtol=0, atol=0)


def test_sb3_zip_loads_with_sb3(trained):
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import A2C, DQN, PPO

    args, policy, _, out = trained
    model = {"ppo": PPO, "a2c": A2C, "dqn": DQN, "maskable_ppo": MaskablePPO}[args.algo].load(
        out / "model.zip", device="cpu")
    obs = _first_obs(policy, _tiny_env(), 1)
    action, _ = model.predict(obs, deterministic=True)
    assert int(action) == int(torch.argmax(policy.scores(obs)))


def test_never_repeats_a_rejected_click(trained):
    _, policy, _, _ = trained
    env = _tiny_env(clicks_per_episode=20)  # long episodes: many rejections to avoid
    base: BetterWorseSegEnv = env.unwrapped
    rejections = 0
    for seed in range(3):
        rec = run_episode(env, policy, seed=seed)
        clicks = []
        for a in rec.actions:
            label, y, x = base.decode_action(a)
            assert (y % 8, x % 8) == (4, 4)  # the patch's centre pixel
            clicks.append((label, (y // 8) * 16 + x // 8))
        rejected = set()
        for click, r in zip(clicks, rec.rewards, strict=True):
            assert click not in rejected
            if r < 0:
                rejected.add(click)
        rejections += len(rejected)
    assert rejections > 0
    if policy.spec["obs"] == "belief":
        return  # a rejection updates the belief, so even unmasked it need not repeat the click
    # Without the mask a greedy policy repeats a reverted click: the state has not changed.
    unmasked = SB3ClickPolicy(policy.policy, policy.algo, policy.spec, avoid_rejected=False)
    rec = run_episode(env, unmasked, seed=0)
    assert len(set(rec.actions)) < len(rec.actions)




def test_actions_do_not_depend_on_ground_truth(trained):
    _, policy, _, _ = trained
    ds = SyntheticDataset(n_images=3, size=96)
    # The belief policy reads the answers (which may depend on the truth): fix them.
    oracle = ConstantOracle(-1) if policy.spec["obs"] == "belief" else "dice"
    envs = [BetterWorseSegEnv(d, on_worse="keep", oracle=oracle, feature_cache=None)
            for d in (ds, OtherMasks(ds, 9, 0))]
    blind = SB3ClickPolicy(policy.policy, policy.algo, policy.spec, avoid_rejected=False)
    runs = [[run_episode(e, blind, seed=s).actions for s in range(3)] for e in envs]
    assert runs[0] == runs[1]
    # With the mask, later clicks may differ only through the expert's answers; the first
    # click of every episode sees the same observation and no answer yet.
    envs = [BetterWorseSegEnv(d, on_worse="keep", feature_cache=None)
            for d in (ds, OtherMasks(ds, 9, 0))]
    runs = [[run_episode(e, policy, seed=s) for s in range(3)] for e in envs]
    assert [r.actions[0] for r in runs[0]] == [r.actions[0] for r in runs[1]]
    assert [r.rewards for r in runs[0]] != [r.rewards for r in runs[1]]  # the truths differ


@pytest.mark.parametrize("kind", ["sync", "native"])
def test_training_envs_hide_ground_truth(tmp_path, kind):
    vec = make_vec_env(_args("a2c", tmp_path, vector_env=kind), 2)
    assert vec.action_space == spaces.Discrete(512)
    for env in getattr(vec, "envs", []):
        chain, e = [], env
        while isinstance(e, gym.Wrapper):
            chain.append(type(e))
            e = e.env
        assert PatchActions in chain and StripEvalInfo in chain
    assert hasattr(vec, "envs") == (kind == "sync")
    vec.reset()
    _, _, _, infos = vec.step(np.array([0, 300]))
    assert all(EVAL_ONLY_KEY not in info for info in infos)
    vec.close()


@pytest.mark.parametrize("algo", ["ppo", "maskable_ppo", "dqn"])
def test_native_and_sync_vector_envs_train_the_same_weights(tmp_path, algo):
    """By default the SB3 agents train on the native vector env (obs=pixels); SB3's DummyVecEnv
    of single envs gives the same episodes, answers and masks, so the same weights."""
    trained = {}
    for kind in ("native", "sync"):
        policy, history = train_sb3(_args(algo, tmp_path / kind, total_answers=96,
                                          vector_env=kind, tensorboard=False))
        trained[kind] = (policy.policy.state_dict(), history)
        saved = json.loads((tmp_path / kind / "args.json").read_text())
        assert saved["vector_env"] == kind
    (a, ha), (b, hb) = trained["native"], trained["sync"]
    assert ha == hb and len(ha["clicks"]) >= 24  # whole rollouts
    assert all(torch.equal(x, y) for x, y in zip(a.values(), b.values(), strict=True))


def test_vector_env_choice(tmp_path):
    from agents.sb3 import resolved

    assert SB3Args().vector_env == "native"
    for obs, reward in (("pixels", "answer"), ("features", "dice_gain"), ("belief", "answer")):
        assert resolved(_args("ppo", tmp_path, obs=obs, reward=reward))["vector_env"] == "native"
    with pytest.raises(ValueError, match=r"vector_env must be one of \['native', 'sync'\], got "
                                         r"'subproc'"):
        train_sb3(_args("ppo", tmp_path / "x", vector_env="subproc"))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("obs", "reward"), [("features", "dice_gain"), ("belief", "answer")])
def test_native_and_sync_train_the_same_weights_for_every_observation(tmp_path, obs, reward):
    """The feature and belief observations (and the Dice-gain reward) are built per sub-env on
    the native vector env: the same weights as the DummyVecEnv of wrapped single envs."""
    trained = {}
    for kind in ("native", "sync"):
        policy, history = train_sb3(_args("ppo", tmp_path / kind, total_answers=64, obs=obs,
                                          reward=reward, vector_env=kind, tensorboard=False))
        trained[kind] = (policy.policy.state_dict(), history)
    (a, ha), (b, hb) = trained["native"], trained["sync"]
    assert ha == hb
    assert all(torch.equal(x, y) for x, y in zip(a.values(), b.values(), strict=True))


def test_sampling_is_seeded(trained):
    _, policy, _, _ = trained
    sampler = SB3ClickPolicy(policy.policy, policy.algo, policy.spec, greedy=False)
    env = _tiny_env()
    a = run_episode(env, sampler, seed=4).actions
    assert a == run_episode(env, sampler, seed=4).actions


def test_extractor_geometry():
    ext = PatchGridExtractor(spaces.Box(0, 255, (4, 128, 128), np.uint8), width=8, channels=3)
    x = torch.rand(2, 4, 128, 128)
    out = ext(x)
    assert out.shape == (2, 3 * 256) and ext.features_dim == 3 * 256
    assert not out.view(2, 3, 256)[:, :2].any()  # zero-initialised logits: uniform first clicks
    # A grid that is not a power-of-two divisor of the observation (DINOv2 at 224: 14 x 14).
    ext = PatchGridExtractor(spaces.Box(0, 255, (5, 224, 224), np.uint8), grid=(14, 14), width=8)
    assert ext(torch.rand(1, 5, 224, 224)).shape == (1, 8 * 196)
    with pytest.raises(ValueError, match="multiple"):
        PatchGridExtractor(spaces.Box(0, 255, (4, 100, 100), np.uint8))


def test_feature_extractor_geometry_and_observation_wrapper():
    env = _tiny_env()
    from bow_gym.wrappers import PatchFeatureObservation

    wrapped = PatchFeatureObservation(PatchActions(env))
    obs, _ = wrapped.reset(seed=0)
    assert wrapped.observation_space.contains(obs) and obs.shape == (256, 13 + 6)
    raw_env = _tiny_env()
    raw, _ = raw_env.reset(seed=0)
    np.testing.assert_array_equal(obs, patch_policy_inputs(raw, raw_env.unwrapped))
    ext = PatchFeatureExtractor(wrapped.observation_space, width=8, channels=3)
    out = ext(torch.as_tensor(np.stack([obs, obs])))
    assert out.shape == (2, 3 * 256) and ext.features_dim == 3 * 256
    assert not out.view(2, 3, 256)[:, :2].any()  # zero-initialised logits: uniform first clicks
    with pytest.raises(ValueError, match="patches, features"):
        PatchFeatureExtractor(spaces.Box(0, 255, (4, 128, 128), np.uint8))
    with pytest.raises(TypeError, match="BetterWorseSegEnv"):
        PatchFeatureObservation(gym.make("CartPole-v1"))


def test_belief_observation_records_the_answered_clicks():
    env = BeliefObservation(PatchActions(_tiny_env()))
    base: BetterWorseSegEnv = env.unwrapped
    obs, _ = env.reset(seed=0)
    p, k, d = base.n_patches, base.clicks_per_episode, base.backbone.dim + 2
    assert env.observation_space.contains(obs) and obs.shape == (p, d + 1 + p + 2 * k + 1)
    features, m, graph, before, after, answers = split_belief_observation(obs, k)
    np.testing.assert_array_equal(graph, base.propagation_graph())
    assert not m.any() and not before.any() and not after.any() and not answers.any()
    patch = int(np.argmax(graph.sum(1)))  # a click that reaches several patches
    obs2, reward, *_ , info = env.step(p + patch)  # foreground on that patch
    _, m2, _, before, after, answers = split_belief_observation(obs2, k)
    assert info["patch"] == patch and answers[0] == reward and not answers[1:].any()
    np.testing.assert_array_equal(before[0], 0.0)
    np.testing.assert_array_equal(after[0], graph[patch].astype(np.float32))  # what was proposed
    assert not before[1:].any() and not after[1:].any()
    # The policy builds the same rows from its own memory of the episode.
    hist = ClickHistory(k)
    hist.add(m, graph[patch], 1, reward)
    np.testing.assert_array_equal(obs2, belief_observation(base._get_obs(), base, hist))
    # A background click clears the reach; more clicks than the budget keep the latest.
    hist = ClickHistory(2)
    for answer in (1, -1, 1):
        hist.add(np.ones(4), np.array([1, 0, 1, 0]), 0, answer)
    cols = hist.columns(4)
    np.testing.assert_array_equal(cols[:, 2], [0, 1, 0, 1])
    assert list(cols[:2, -1]) == [-1, 1]
    with pytest.raises(ValueError, match="clicks"):
        ClickHistory(0)
    with pytest.raises(TypeError, match="BetterWorseSegEnv"):
        BeliefObservation(gym.make("CartPole-v1"))


def test_belief_extractor_scores_clicks_by_dice_gain_against_its_belief():
    env = BeliefObservation(PatchActions(_tiny_env()))
    obs, _ = env.reset(seed=0)
    ext = BeliefExtractor(env.observation_space, clicks=5, width=8, posterior_steps=0)
    out = ext(torch.as_tensor(obs[None]))
    p = obs.shape[0]
    assert out.shape == (1, 2 * p + 8) and ext.features_dim == 2 * p + 8
    # Untrained the belief is 0.5 everywhere; from an empty mask a foreground click on r
    # patches gains 2 (r / 2) / (r + P / 2), and a background click changes nothing, so it
    # scores as a Dice loss of 1.
    _, _, graph, *_ = split_belief_observation(obs, 5)
    reach = graph.sum(1)
    expected = 10.0 * 2 * (reach / 2) / (reach + p / 2)  # alpha starts at 10
    np.testing.assert_allclose(out[0, :p].detach().numpy(), -10.0)
    np.testing.assert_allclose(out[0, p : 2 * p].detach().numpy(), expected, rtol=1e-4)
    # An answer moves the belief: "better" to a foreground click raises what it reached.
    ext.posterior_steps = 20
    obs2 = env.step(p + int(np.argmax(reach)))[0]
    _, _, _, _, _, answers = split_belief_observation(obs2, 5)
    q_after = ext.belief(torch.as_tensor(obs2[None]))[0][0]
    reached = torch.as_tensor(graph[int(np.argmax(reach))] > 0)
    shift = (q_after[reached].mean() - 0.5).item()
    assert shift * answers[0] > 0.05
    with pytest.raises(ValueError, match="no feature columns"):
        BeliefExtractor(spaces.Box(-1, 1, (256, 256 + 11), np.float32), clicks=5)


def test_answer_prediction_callback_learns_from_clicks_that_changed_something(tmp_path):
    from types import SimpleNamespace

    from stable_baselines3.common.logger import configure

    env = BeliefObservation(PatchActions(_tiny_env()))
    obs, _ = env.reset(seed=0)
    p = obs.shape[0]
    spec = {"obs_shape": list(obs.shape), "n_actions": 2 * p, "grid": [16, 16], "width": 8,
            "channels": 2, "head": "patch", "obs": "belief", "clicks": 5, "posterior_steps": 20}
    sb3_policy = build_policy("a2c", spec)
    for group in sb3_policy.optimizer.param_groups:
        group["lr"] = 1e-3  # build_policy's schedule is 0: it builds policies for acting
    cb = AnswerPredictionCallback(steps=3, batch_size=1)
    cb.model = SimpleNamespace(_last_obs=np.stack([obs, obs]), policy=sb3_policy,
                               logger=configure(str(tmp_path), ["csv"]))
    # From an empty mask a background click changes nothing: only the foreground one is kept.
    cb.locals = {"actions": np.array([3, p + 3]), "rewards": np.array([-1.0, 1.0])}
    before = [t.detach().clone() for t in sb3_policy.features_extractor.parameters()]
    assert cb._on_step()
    assert len(cb.replay) == 1 and cb.replay.rows[0][3] == 1.0 and cb.replay.updates == 3
    after = list(sb3_policy.features_extractor.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_belief_needs_ppo_or_a2c_and_aux_needs_belief(tmp_path):
    with pytest.raises(ValueError, match="ppo' or 'a2c"):
        train_sb3(_args("dqn", tmp_path, obs="belief"))
    with pytest.raises(ValueError, match="aux_coef needs obs='belief'"):
        train_sb3(_args("ppo", tmp_path, aux_coef=1.0))
    with pytest.raises(TypeError, match="BeliefExtractor"):
        cb = AnswerPredictionCallback()
        cb.model = type("M", (), {"policy": type("P", (), {"features_extractor": None})()})()
        cb._extractor()


def test_short_belief_training_beats_random_on_easy_variant(tmp_path):
    from agents import RandomClicker

    data = {"n_images": 60, "size": 96}
    args = SB3Args(algo="ppo", obs="belief", width=32, aux_coef=1.0, total_answers=320,
                   env_id="BetterWorseSeg-Easy-v0", env_kwargs={"dataset_kwargs": data},
                   out=str(tmp_path), tensorboard=False, progress=False, seed=0)
    policy, _ = train_sb3(args)
    env = BetterWorseSegEnv(dataset_kwargs={**data, "contrast": 2.5, "split": "test"},
                            feature_cache=None)
    # Untrained, the structure alone (a flat belief updated by the answers) already beats
    # random clicking: the training must add to it.
    untrained = SB3ClickPolicy(build_policy("ppo", policy.spec), "ppo", policy.spec)

    def dice(clicker: ClickPolicy) -> float:
        return float(np.mean([run_episode(env, clicker, seed=i, options={"index": i}).final_dice
                              for i in range(len(env.dataset))]))

    learned, before, rand = dice(policy), dice(untrained), dice(RandomClicker())
    assert learned > rand + 0.1 and learned > before + 0.1, (learned, before, rand)


def test_tag_names_follow_project_convention():
    assert tag_name("train/value_loss") == "losses/value"
    assert tag_name("train/loss") == "losses/loss"
    assert tag_name("time/fps") == "charts/clicks_per_s"
    assert tag_name("train/learning_rate") == "charts/learning_rate"
    assert tag_name("charts/reward") == "charts/reward"


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="algo"):
        train_sb3(SB3Args(algo="sac", out=str(tmp_path)))  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        SB3ClickPolicy.load(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a bow-gym SB3 checkpoint"):
        SB3ClickPolicy.load(tmp_path / "bad.safetensors")


def test_cli(tmp_path, capsys):
    main(["--algo", "a2c", "--total-answers", "8", "--num-envs", "2", "--limit", "2",
          "--width", "8", "--channels", "2", "--no-tensorboard", "--no-progress",
          "--out", str(tmp_path)])
    assert "a2c: trained 8 clicks" in capsys.readouterr().out
    policy = SB3ClickPolicy.load(tmp_path / "agent.safetensors")
    assert policy.name == "a2c" and not (tmp_path / "tb").exists()


def test_changing_clicks_known_answer():
    # Three patches; a click on 0 reaches 0 and 1, on 1 only 1, on 2 only 2.
    graph = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=bool)
    shares = np.array([1.0, 0.0, 0.5])
    #          background: 0 (clears 0), 1 (nothing to clear), 2 (clears half)
    #          foreground: 0 (fills 1), 1 (fills 1), 2 (fills the other half)
    np.testing.assert_array_equal(changing_clicks(shares, graph),
                                  [True, False, True, True, True, True])
    np.testing.assert_array_equal(changing_clicks(np.ones(3), graph),
                                  [True, True, True, False, False, False])


def test_click_masks_drop_no_op_and_rejected_clicks():
    env = ClickMasks(PatchActions(_tiny_env(oracle=ConstantOracle(-1), on_worse="keep")))
    base: BetterWorseSegEnv = env.unwrapped
    env.reset(seed=0)
    p = base.n_patches
    masks = env.action_masks()
    assert masks.shape == (2 * p,) and not masks[:p].any() and masks[p:].all()  # empty mask
    env.step(p + 5)  # foreground on patch 5: answered "worse", kept (on_worse="keep")
    masks = env.action_masks()
    assert not masks[p + 5]  # rejected, and would change nothing now
    assert masks[5]  # clearing it again would change the mask
    expected = changing_clicks(patch_shares(base.current_mask(), base.grid),
                               base.propagation_graph())
    expected[p + 5] = False
    np.testing.assert_array_equal(masks, expected)
    env.reset(seed=0)
    assert env.action_masks()[p + 5]  # a new episode forgets the rejections
    with pytest.raises(TypeError, match="Discrete"):
        ClickMasks(_tiny_env())


def test_maskable_ppo_never_takes_a_masked_click(tmp_path):
    from stable_baselines3.common.callbacks import BaseCallback

    from agents.sb3 import build_model

    class Check(BaseCallback):
        taken = 0

        def _on_step(self) -> bool:
            masks, actions = self.locals["action_masks"], self.locals["actions"]
            assert masks[np.arange(len(actions)), actions].all()
            Check.taken += len(actions)
            return True

    args = _args("maskable_ppo", tmp_path, total_answers=128, tensorboard=False)
    vec = make_vec_env(args, args.num_envs)
    build_model(args, vec, tmp_path).learn(total_timesteps=128, callback=Check())
    assert Check.taken >= 128
    # Evaluation masks the same clicks: every click of a long episode changes the mask.
    policy, _ = train_sb3(_args("maskable_ppo", tmp_path / "run", total_answers=64))
    env = _tiny_env(clicks_per_episode=30, on_worse="keep")
    base: BetterWorseSegEnv = env.unwrapped
    for seed in range(2):
        obs, info = env.reset(seed=seed)
        policy.reset(seed)
        for _ in range(30):
            valid = changing_clicks(patch_shares(base.current_mask(), base.grid),
                                    base.propagation_graph())
            action = policy.act(obs, info, base)
            label, y, x = base.decode_action(action)
            patch = (y // base.cell[0]) * base.grid[1] + x // base.cell[1]
            assert valid[label * base.n_patches + patch] or not valid.any()
            obs, reward, _, _, info = env.step(action)
            policy.observe(action, reward, False, info)
