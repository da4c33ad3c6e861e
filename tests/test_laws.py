"""The scaling laws as pure functions: exact recovery from noiseless points, their inverses at
the edges, and the messages of values a law cannot fit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sweeps.laws import LAWS, MAX_LOG_SIZE, FitError, _size_from_log

SIZES = np.geomspace(100, 100_000, 10)
CASES = {
    "power": [[1.5, 40.0, 0.5], [0.05, 3.0, 0.15], [2.0, 900.0, 1.8]],
    "score": [[0.5, 0.05, 2.0], [0.1, 0.08, 0.5], [0.2, 0.01, 4.0]],
    "loglinear": [[0.2, 0.05], [3.0, -0.2]],
}


@pytest.mark.parametrize(
    "law, truth", [(law, truth) for law, cases in CASES.items() for truth in cases]
)
def test_a_law_recovers_its_parameters_from_exact_points(law, truth):
    curve = LAWS[law]
    values = curve.predict(SIZES, np.array(truth))
    fitted = curve.fit(SIZES, values)
    assert fitted == pytest.approx(truth, rel=1e-4)
    assert curve.predict(SIZES, fitted) == pytest.approx(values, rel=1e-6)
    again = curve.fit(list(SIZES), list(values), start=np.array(truth) * 1.2)
    assert again == pytest.approx(truth, rel=1e-4)


def test_predictions_take_integer_sizes_and_parameters():
    assert LAWS["power"].predict([100, 1000], np.array([1, 10, 1])) == pytest.approx([1.1, 1.01])
    assert LAWS["score"].predict(np.e**2, np.array([1, 1, 2])) == pytest.approx(9.0)
    assert LAWS["score"].predict(1.0, np.array([-1.0, 1.0, 2.0])) == 0.0  # clipped at zero
    assert LAWS["loglinear"].predict([1, math.e], np.array([1, 2])) == pytest.approx([1, 3])


def test_formulas_show_the_fitted_values():
    assert LAWS["power"].show({"E": 1.48, "A": 29.6, "alpha": 0.4951}) == ("1.48 + 29.6 * D^-0.495")
    assert LAWS["score"].params == ("a", "alpha", "beta")
    assert LAWS["loglinear"].show({"a": 0.2, "b": -0.05}) == "0.2 + -0.05 * ln D"


def test_sizes_beyond_any_real_data_are_refused():
    assert _size_from_log(MAX_LOG_SIZE) == (math.exp(MAX_LOG_SIZE), None)
    for log_d in (MAX_LOG_SIZE + 0.1, math.inf, math.nan):
        assert _size_from_log(log_d) == (
            None,
            "the fitted curve reaches the target only at an astronomically large size",
        )


def test_inverses_at_their_edges():
    power = np.array([1.5, 40.0, 0.5])
    assert LAWS["power"].invert(1.5, power) == (
        None,
        "1.5 is at or below the fitted floor E = 1.5",
    )
    size, reason = LAWS["power"].invert(1.5 + 40.0 / 100, power)  # D = 100^2
    assert size == pytest.approx(10_000) and reason is None
    score = np.array([-1.0, 0.5, 2.0])  # zero at ln D = 2
    size, reason = LAWS["score"].invert(0.0, score)
    assert size == pytest.approx(math.e**2) and reason is None
    assert LAWS["score"].invert(-0.1, score) == (
        None,
        "the score law only reaches non-negative values",
    )
    assert LAWS["score"].invert(1.0, np.array([1.0, 0.0, 2.0])) == (
        None,
        "the fitted curve is flat (alpha = 0)",
    )
    assert LAWS["loglinear"].invert(1.0, np.array([1.0, 0.0])) == (
        None,
        "the fitted line is flat (b = 0)",
    )


def test_values_a_law_cannot_fit_are_named():
    with pytest.raises(
        FitError,
        match=r"^the power law E \+ A \* D\^-alpha needs positive values \(a loss\); use "
        r"scaling.law loglinear or score$",
    ):
        LAWS["power"].fit(SIZES[:4], np.array([3.0, 2.0, 1.0, 0.0]))
    with pytest.raises(
        FitError,
        match=r"^the score law \(a \+ alpha \* ln D\)\^beta needs non-negative values; use "
        r"scaling.law loglinear$",
    ):
        LAWS["score"].fit(SIZES[:4], np.array([0.1, 0.2, -0.1, 0.4]))
    with pytest.raises(FitError, match="^no starting point gave a finite fit$"):
        LAWS["power"].fit(SIZES[:4], np.array([3.0, 2.0, 1.5, 1.2]), start=np.full(3, np.nan))


def test_a_score_of_zero_is_a_value_the_score_law_fits():
    truth = np.array([-0.5, 0.1, 1.0])  # zero up to D = e^5, then growing
    sizes = np.geomspace(200, 200_000, 8)
    values = LAWS["score"].predict(sizes, truth)
    assert values.min() >= 0
    fitted = LAWS["score"].fit(sizes, np.concatenate([[0.0], values[1:]]))
    assert fitted[2] > 0
