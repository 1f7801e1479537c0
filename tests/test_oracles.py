import numpy as np
import pytest

from bow_gym.oracles import (
    BETTER,
    WORSE,
    DiceOracle,
    MarginOracle,
    NoisyOracle,
    Overlap,
    make_oracle,
)


def test_overlap_counts_and_dice_known_answer():
    pred = np.zeros((4, 4), bool)
    gt = np.zeros((4, 4), bool)
    pred[0, :4] = True  # 4 px
    gt[0, 2:4] = True
    gt[1, :4] = True  # 6 px, 2 overlapping
    o = Overlap.of(pred, gt)
    assert o == Overlap(2, 4, 6)
    assert o.dice == pytest.approx(0.4)
    assert Overlap(0, 0, 0).dice == 1.0


def test_dice_oracle_strict_improvement_only():
    o = DiceOracle()
    assert o.judge(Overlap(2, 4, 6), Overlap(3, 4, 6)) == BETTER
    assert o.judge(Overlap(3, 4, 6), Overlap(2, 4, 6)) == WORSE
    assert o.judge(Overlap(2, 4, 6), Overlap(2, 4, 6)) == WORSE  # tie -> worse


def test_empty_ground_truth_compares_false_positives():
    o = DiceOracle()
    assert o.judge(Overlap(0, 10, 0), Overlap(0, 4, 0)) == BETTER  # Dice 0 -> 0, FP fell
    assert o.judge(Overlap(0, 4, 0), Overlap(0, 0, 0)) == BETTER
    assert o.judge(Overlap(0, 0, 0), Overlap(0, 5, 0)) == WORSE
    assert o.judge(Overlap(0, 0, 0), Overlap(0, 0, 0)) == WORSE


def test_margin_oracle():
    o = MarginOracle(delta=0.05)
    base = Overlap(40, 100, 100)  # dice 0.4
    assert o.judge(base, Overlap(42, 100, 100)) == WORSE  # +0.02
    assert o.judge(base, Overlap(50, 100, 100)) == BETTER  # +0.10
    assert MarginOracle(0.0).judge(base, Overlap(41, 100, 100)) == BETTER
    with pytest.raises(ValueError, match="delta"):
        MarginOracle(-0.1)


def test_noisy_oracle_flip_rate_and_determinism():
    before, after = Overlap(2, 4, 6), Overlap(3, 4, 6)
    assert NoisyOracle(p=0.0).judge(before, after, np.random.default_rng(0)) == BETTER
    assert NoisyOracle(p=1.0).judge(before, after, np.random.default_rng(0)) == WORSE
    rng = np.random.default_rng(1)
    answers = [NoisyOracle(p=0.3).judge(before, after, rng) for _ in range(4000)]
    assert np.mean(np.array(answers) == WORSE) == pytest.approx(0.3, abs=0.03)
    a1 = [NoisyOracle(0.5).judge(before, after, np.random.default_rng(7)) for _ in range(3)]
    assert len(set(a1)) == 1
    with pytest.raises(ValueError, match="rng"):
        NoisyOracle(p=0.2).judge(before, after, None)
    with pytest.raises(ValueError, match="probability"):
        NoisyOracle(p=1.5)


def test_judge_masks_and_registry():
    gt = np.zeros((8, 8), bool)
    gt[2:6, 2:6] = True
    before = np.zeros_like(gt)
    after = before.copy()
    after[3:5, 3:5] = True
    assert DiceOracle().judge_masks(before, after, gt) == BETTER
    assert DiceOracle().judge_masks(after, before, gt) == WORSE
    assert isinstance(make_oracle("margin", delta=0.1), MarginOracle)
    with pytest.raises(ValueError, match="unknown oracle"):
        make_oracle("telepathic")


@pytest.mark.parametrize("oracle", [DiceOracle(), MarginOracle(0.01), NoisyOracle(0.3),
                                    NoisyOracle(0.2, base=MarginOracle(0.02))])
def test_judge_batch_equals_judge_one_at_a_time(oracle):
    from bow_gym.oracles import dice_of_counts

    rng = np.random.default_rng(0)
    n = 400
    gt = rng.integers(0, 50, n) * (rng.random(n) < 0.8)  # some empty ground truths
    pred_b, pred_a = rng.integers(0, 60, n), rng.integers(0, 60, n)
    pred_b[:5] = pred_a[:5] = 0  # empty prediction too: Dice of two empty masks is 1
    tp_b = np.minimum(rng.integers(0, 50, n), np.minimum(pred_b, gt))
    tp_a = np.minimum(rng.integers(0, 50, n), np.minimum(pred_a, gt))
    before, after = Overlap(tp_b, pred_b, gt), Overlap(tp_a, pred_a, gt)
    rngs = [np.random.default_rng(i) for i in range(n)]
    again = [np.random.default_rng(i) for i in range(n)]
    batch = oracle.judge_batch(before, after, rngs)
    one = [oracle.judge(Overlap(int(tp_b[i]), int(pred_b[i]), int(gt[i])),
                        Overlap(int(tp_a[i]), int(pred_a[i]), int(gt[i])), again[i])
           for i in range(n)]
    assert batch.tolist() == one and batch.dtype == np.int64
    assert (batch == BETTER).any() and (batch == WORSE).any()
    # The batched Dice is bit-identical to the scalar one.
    assert dice_of_counts(tp_b, pred_b, gt).tolist() == [
        Overlap(int(t), int(p), int(g)).dice for t, p, g in zip(tp_b, pred_b, gt, strict=True)]
    # Given the Dice before and after (as the vector env has them), the same answers; with and
    # without empty ground truth in the batch (the Dice experts' shortcut needs none).
    from bow_gym.oracles import judge_batch_with_dice

    for keep in (slice(None), gt > 0):
        b = Overlap(*(f[keep] for f in before))
        a = Overlap(*(f[keep] for f in after))
        rngs = [np.random.default_rng(i) for i in range(len(b.gt))]
        again = [np.random.default_rng(i) for i in range(len(b.gt))]
        given = judge_batch_with_dice(oracle, b, a, dice_of_counts(*b), dice_of_counts(*a), rngs)
        assert given.tolist() == oracle.judge_batch(b, a, again).tolist()
