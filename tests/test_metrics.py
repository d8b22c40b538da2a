"""Each metric against a value computed by hand on a small accuracy matrix."""
import pytest

from lifelong import metrics as M

# after exp i (rows) on exp j (cols)
R = [[0.9, 0.1, 0.0],
     [0.6, 0.8, 0.2],
     [0.5, 0.7, 0.9]]
B = [0.1, 0.2, 0.3]  # accuracy before training


def test_average_accuracy():
    assert M.average_accuracy(R) == pytest.approx((0.5 + 0.7 + 0.9) / 3)


def test_average_incremental_accuracy():
    assert M.average_incremental_accuracy(R) == pytest.approx((0.9 + (0.6 + 0.8) / 2 + (0.5 + 0.7 + 0.9) / 3) / 3)


def test_forgetting():
    # exp 0: max(0.9, 0.6) - 0.5 = 0.4 ; exp 1: max(0.1, 0.8) - 0.7 = 0.1
    assert M.forgetting(R) == pytest.approx((0.4 + 0.1) / 2)


def test_bwt():
    # (0.5 - 0.9) + (0.7 - 0.8)
    assert M.bwt(R) == pytest.approx((-0.4 - 0.1) / 2)


def test_fwt():
    # R[0][1] - b1 = 0.1 - 0.2 ; R[1][2] - b2 = 0.2 - 0.3
    assert M.fwt(R, B) == pytest.approx((-0.1 - 0.1) / 2)


def test_single_experience_has_no_forgetting():
    assert M.forgetting([[0.7]]) == 0.0 and M.bwt([[0.7]]) == 0.0 and M.fwt([[0.7]], [0.1]) == 0.0


def test_non_square_matrix_is_rejected():
    with pytest.raises(ValueError, match="square"):
        M.average_accuracy([[0.1, 0.2]])


def test_summary_keys():
    s = M.summary(R, B)
    assert set(s) == {"average_accuracy", "average_incremental_accuracy", "forgetting", "bwt", "fwt"}
