"""Continual-evaluation metrics (De Lange et al., ICLR 2023) against values computed by hand."""
import math

import numpy as np
import pytest

from lifelong import continual_metrics as C

N = math.nan
# 3 experiences x 4 iterations, evaluated after every iteration; experience k trained in
# (BOUNDS[k-1], BOUNDS[k]]. Experience 0 dips at the start of experience 1 (0.9 -> 0.7 -> 0.4)
# and experience 1 at the start of experience 2 (1.0 -> 0.5).
STEPS = list(range(1, 13))
BOUNDS = [4, 8, 12]
ACC = [
    # exp0  exp1  exp2      step
    [0.2, N, N],  # 1
    [0.5, N, N],  # 2
    [0.8, N, N],  # 3
    [0.9, N, N],  # 4   end of exp 0
    [0.7, 0.3, N],  # 5
    [0.4, 0.6, N],  # 6
    [0.6, 0.8, N],  # 7
    [0.9, 1.0, N],  # 8   end of exp 1
    [0.7, 0.5, 0.4],  # 9
    [0.85, 0.9, 0.6],  # 10
    [0.9, 1.0, 0.7],  # 11
    [0.9, 1.0, 0.8],  # 12  end of exp 2
]


def test_min_acc_per_experience_and_average():
    # exp0 over steps 5..12: min(0.7, 0.4, 0.6, 0.9, 0.7, 0.85, 0.9, 0.9) = 0.4
    # exp1 over steps 9..12: min(0.5, 0.9, 1.0, 1.0) = 0.5   (step 8 = its own boundary: excluded)
    assert C.min_acc_per_experience(STEPS, ACC, BOUNDS) == pytest.approx([0.4, 0.5])
    assert C.min_acc(STEPS, ACC, BOUNDS) == pytest.approx((0.4 + 0.5) / 2)


def test_min_acc_stops_at_the_current_experience():
    # current = 1: exp0 over steps 5..8 only -> 0.4 ; exp1 is the current one, not averaged
    assert C.min_acc_per_experience(STEPS, ACC, BOUNDS, current=1) == pytest.approx([0.4])
    assert C.min_acc(STEPS, ACC, BOUNDS, current=1) == pytest.approx(0.4)
    # current = 0: no previous experience
    assert C.min_acc_per_experience(STEPS, ACC, BOUNDS, current=0) == []
    assert math.isnan(C.min_acc(STEPS, ACC, BOUNDS, current=0))


def test_min_acc_range_is_strictly_after_the_boundary():
    acc = np.array(ACC)
    acc[3, 0] = 0.1  # a low value at step 4 = end of exp 0 itself does not count
    assert C.min_acc_per_experience(STEPS, acc, BOUNDS, current=1) == pytest.approx([0.4])
    acc[4, 0] = 0.1  # ... but at step 5 it does
    assert C.min_acc_per_experience(STEPS, acc, BOUNDS, current=1) == pytest.approx([0.1])


def test_wc_acc():
    # current 2: 1/3 * A(exp2, step 12) + 2/3 * min-ACC = 0.8/3 + 2/3 * 0.45
    assert C.wc_acc(STEPS, ACC, BOUNDS) == pytest.approx(0.8 / 3 + 2 / 3 * 0.45)
    # current 1: 1/2 * A(exp1, step 8) + 1/2 * 0.4
    assert C.wc_acc(STEPS, ACC, BOUNDS, current=1) == pytest.approx(0.5 * 1.0 + 0.5 * 0.4)
    # current 0: just A(exp0, step 4)
    assert C.wc_acc(STEPS, ACC, BOUNDS, current=0) == pytest.approx(0.9)
    assert C.wc_acc(STEPS, ACC, BOUNDS, current=-1) == C.wc_acc(STEPS, ACC, BOUNDS)


def test_windowed_forgetting():
    # window of 2 iterations = consecutive evaluations only:
    #   exp0: 0.9->0.7 = 0.2, 0.7->0.4 = 0.3, 0.9->0.7 = 0.2  -> 0.3
    #   exp1: 1.0->0.5 = 0.5 ; exp2: never decreases -> 0
    assert C.windowed_forgetting_per_experience(STEPS, ACC, BOUNDS, 2) == pytest.approx([0.3, 0.5, 0.0])
    assert C.windowed_forgetting(STEPS, ACC, BOUNDS, 2) == pytest.approx((0.3 + 0.5 + 0.0) / 3)
    # window of 3 iterations reaches 0.9 (step 4) -> 0.4 (step 6) = 0.5 for exp0
    assert C.windowed_forgetting_per_experience(STEPS, ACC, BOUNDS, 3) == pytest.approx([0.5, 0.5, 0.0])
    # 10 and 100: same maxima on this short curve
    assert C.windowed_forgetting(STEPS, ACC, BOUNDS, 10) == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert C.windowed_forgetting(STEPS, ACC, BOUNDS, 100) == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    # a window of 1 iteration holds a single evaluation: nothing to compare
    assert C.windowed_forgetting(STEPS, ACC, BOUNDS, 1) == 0.0


def test_windowed_plasticity():
    # window 2: exp0 max consecutive rise 0.3 (0.2->0.5, 0.5->0.8, 0.6->0.9)
    #           exp1 0.5->0.9 = 0.4 ; exp2 0.4->0.6 = 0.2
    assert C.windowed_plasticity_per_experience(STEPS, ACC, BOUNDS, 2) == pytest.approx([0.3, 0.4, 0.2])
    assert C.windowed_plasticity(STEPS, ACC, BOUNDS, 2) == pytest.approx(0.9 / 3)
    # window 10: exp0 0.2 (step 1) -> 0.9 (step 4) = 0.7 ; exp1 0.3 -> 1.0 = 0.7 ; exp2 0.4 -> 0.8 = 0.4
    assert C.windowed_plasticity_per_experience(STEPS, ACC, BOUNDS, 10) == pytest.approx([0.7, 0.7, 0.4])
    assert C.windowed_plasticity(STEPS, ACC, BOUNDS, 10) == pytest.approx(1.8 / 3)


def test_window_is_in_iterations_not_evaluations():
    # a 0.6 drop spread over 9 iterations (step 1 -> step 10) fits in w = 10 but not in w = 9
    steps = list(range(1, 11))
    acc = [[0.9 - 0.6 * i / 9] for i in range(10)]
    assert C.windowed_forgetting(steps, acc, [10], 10) == pytest.approx(0.6)
    assert C.windowed_forgetting(steps, acc, [10], 9) == pytest.approx(0.6 * 8 / 9)


def test_curve_average_accuracy():
    # mean over the seen experiences at each evaluation, then over the 12 evaluations
    per_eval = [0.2, 0.5, 0.8, 0.9,
                (0.7 + 0.3) / 2, (0.4 + 0.6) / 2, (0.6 + 0.8) / 2, (0.9 + 1.0) / 2,
                (0.7 + 0.5 + 0.4) / 3, (0.85 + 0.9 + 0.6) / 3, (0.9 + 1.0 + 0.7) / 3, (0.9 + 1.0 + 0.8) / 3]
    assert C.curve_average_accuracy(STEPS, ACC) == pytest.approx(sum(per_eval) / 12)
    assert C.curve_average_accuracy(STEPS, ACC) == pytest.approx(8.133333333 / 12)


def test_eval_every_two_iterations():
    # keep the evaluations at steps 2, 4, ..., 12
    steps = STEPS[1::2]
    acc = ACC[1::2]
    # exp0 after step 4: (0.4, 0.9, 0.85, 0.9) -> 0.4 ; exp1 after step 8: (0.9, 1.0) -> 0.9
    assert C.min_acc_per_experience(steps, acc, BOUNDS) == pytest.approx([0.4, 0.9])
    assert C.wc_acc(steps, acc, BOUNDS) == pytest.approx(0.8 / 3 + 2 / 3 * 0.65)
    # evaluations are 2 iterations apart: a 2-iteration window never holds two of them
    assert C.windowed_forgetting(steps, acc, BOUNDS, 2) == 0.0
    assert C.windowed_plasticity(steps, acc, BOUNDS, 2) == 0.0
    # w = 3 or 10: exp0 0.9 (4) -> 0.4 (6) = 0.5 ; exp1 1.0 (8) -> 0.9 (10) = 0.1 ; exp2 0
    assert C.windowed_forgetting(steps, acc, BOUNDS, 3) == pytest.approx(0.6 / 3)
    assert C.windowed_forgetting(steps, acc, BOUNDS, 10) == pytest.approx(0.6 / 3)
    # w = 10 plasticity: exp0 0.4 (6) -> 0.9 (8) = 0.5 ; exp1 0.6 -> 1.0 = 0.4 ; exp2 0.6 -> 0.8 = 0.2
    assert C.windowed_plasticity(steps, acc, BOUNDS, 10) == pytest.approx(1.1 / 3)


def test_eval_period_not_hitting_the_boundary():
    # evaluations at steps 3, 6, 9, 12: the end of exp 1 (step 8) is read at step 6
    steps = STEPS[2::3]
    acc = ACC[2::3]
    assert C.wc_acc(steps, acc, BOUNDS, current=1) == pytest.approx(0.5 * 0.6 + 0.5 * 0.4)
    assert C.min_acc_per_experience(steps, acc, BOUNDS, current=1) == pytest.approx([0.4])


def test_nan_for_unseen_experiences_is_ignored():
    # unseen experiences are NaN; a missing evaluation (NaN) inside a range is skipped too
    acc = np.array(ACC)
    acc[5, 0] = np.nan  # drop the 0.4 of exp0 at step 6
    assert C.min_acc_per_experience(STEPS, acc, BOUNDS) == pytest.approx([0.6, 0.5])
    # windows use the remaining evaluations: 0.9 (4) -> 0.6 (7) is 3 iterations apart
    assert C.windowed_forgetting_per_experience(STEPS, acc, BOUNDS, 4) == pytest.approx([0.3, 0.5, 0.0])
    assert C.windowed_forgetting_per_experience(STEPS, acc, BOUNDS, 3) == pytest.approx([0.2, 0.5, 0.0])
    # an experience never evaluated is left out of the WF / WP average
    acc[:, 2] = np.nan
    assert C.windowed_forgetting(STEPS, acc, BOUNDS, 10) == pytest.approx((0.3 + 0.5) / 2)
    assert math.isnan(C.windowed_forgetting_per_experience(STEPS, acc, BOUNDS, 10)[2])
    assert all(np.isfinite(list(C.summary(STEPS, ACC, BOUNDS).values())[:-1]))


def test_single_experience():
    steps, acc, bounds = [1, 2, 3, 4], [[0.3], [0.6], [0.5], [0.8]], [4]
    assert C.min_acc_per_experience(steps, acc, bounds) == []
    assert math.isnan(C.min_acc(steps, acc, bounds))
    assert C.wc_acc(steps, acc, bounds) == pytest.approx(0.8)
    assert C.windowed_forgetting(steps, acc, bounds, 10) == pytest.approx(0.1)
    assert C.windowed_plasticity(steps, acc, bounds, 10) == pytest.approx(0.5)
    s = C.summary(steps, acc, bounds)
    assert math.isnan(s["min_acc"]) and s["wc_acc"] == pytest.approx(0.8)
    assert s["curve_average_accuracy"] == pytest.approx((0.3 + 0.6 + 0.5 + 0.8) / 4)


def test_summary_keys_and_values():
    s = C.summary(STEPS, ACC, BOUNDS)
    assert set(s) == {"min_acc", "wc_acc", "wf_10", "wp_10", "wf_100", "wp_100",
                      "curve_average_accuracy", "min_acc_per_experience"}
    assert s["min_acc"] == pytest.approx(0.45)
    assert s["wc_acc"] == pytest.approx(0.8 / 3 + 0.3)
    assert s["wf_10"] == pytest.approx(1 / 3) and s["wp_10"] == pytest.approx(0.6)
    assert s["min_acc_per_experience"] == pytest.approx([0.4, 0.5])
    assert isinstance(s["min_acc_per_experience"], list)
    assert set(C.summary(STEPS, ACC, BOUNDS, windows=(2,))) >= {"wf_2", "wp_2"}


def test_matches_brute_force_on_random_curves():
    rng = np.random.default_rng(0)
    for period in (1, 3):
        steps = np.arange(period, 61, period)
        bounds = [20, 40, 60]
        acc = rng.uniform(size=(len(steps), 3))
        for k in range(1, 3):
            acc[steps <= bounds[k - 1], k] = np.nan
        for w in (1, 2, 5, 10, 100):
            for j in range(3):
                ok = ~np.isnan(acc[:, j])
                s, a = steps[ok], acc[ok, j]
                pairs = [(m, n) for n in range(len(s)) for m in range(n) if s[n] - s[m] <= w - 1]
                wf = max([0.0] + [a[m] - a[n] for m, n in pairs])
                wp = max([0.0] + [a[n] - a[m] for m, n in pairs])
                assert C.windowed_forgetting_per_experience(steps, acc, bounds, w)[j] == pytest.approx(wf)
                assert C.windowed_plasticity_per_experience(steps, acc, bounds, w)[j] == pytest.approx(wp)


@pytest.mark.parametrize("bad", [
    dict(acc=[[0.5, N]] * 3),  # wrong number of rows
    dict(steps=[1, 1, 2, 3]),  # not increasing
    dict(acc=[[50.0, N]] * 4),  # percentages
    dict(bounds=[2]),  # one boundary for two experiences
    dict(bounds=[3, 2]),
])
def test_invalid_input_is_rejected(bad):
    args = dict(steps=[1, 2, 3, 4], acc=[[0.5, N], [0.5, N], [0.5, 0.5], [0.5, 0.5]], bounds=[2, 4])
    args.update(bad)
    with pytest.raises(ValueError):
        C.summary(args["steps"], args["acc"], args["bounds"])


def test_invalid_window_and_current():
    with pytest.raises(ValueError):
        C.windowed_forgetting(STEPS, ACC, BOUNDS, 0)
    with pytest.raises(ValueError):
        C.windowed_plasticity(STEPS, ACC, BOUNDS, 2.5)
    with pytest.raises(ValueError):
        C.min_acc(STEPS, ACC, BOUNDS, current=3)
