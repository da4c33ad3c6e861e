"""Scaling laws of a metric in the data size D: pure functions over numpy arrays.

Each law fits its parameters to points (D, y), predicts y at any D, and inverts to the D that
reaches a target y. scipy is imported only when a nonlinear fit runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# exp(700) is near the largest float; a size beyond it is not a size.
MAX_LOG_SIZE = 700.0


class FitError(ValueError):
    """The points cannot be fitted by the law (for example a negative loss for the power law)."""


@dataclass(frozen=True)
class Law:
    """A named family y = f(D; params) with its fit and its inverse."""

    name: str
    formula: str
    params: tuple[str, ...]
    template: str
    predict: Callable[[np.ndarray, np.ndarray], np.ndarray]
    fit: Callable[..., np.ndarray]
    invert: Callable[[float, np.ndarray], tuple[float | None, str | None]]

    def show(self, values: dict[str, float]) -> str:
        """The formula with fitted values, for people (`1.48 + 29.6 * D^-0.495`)."""
        return self.template.format(**values)


def _size_from_log(log_d: float) -> tuple[float | None, str | None]:
    if not math.isfinite(log_d) or log_d > MAX_LOG_SIZE:
        return None, "the fitted curve reaches the target only at an astronomically large size"
    return math.exp(log_d), None


def _best_least_squares(residuals, jacobian, starts: list[np.ndarray], bounds) -> np.ndarray:
    """The least-squares solution with the lowest cost over several starting points.

    An analytic Jacobian makes each fit several times cheaper than finite differences, which
    counts when the bootstrap refits hundreds of times.
    """
    from scipy.optimize import least_squares

    results = []
    for start in starts:
        start = np.clip(start, bounds[0] + 1e-9, bounds[1] - 1e-9)
        try:
            results.append(
                least_squares(residuals, start, jac=jacobian, bounds=bounds, method="trf")
            )
        except ValueError:  # residuals not finite at this start: try the next one
            continue
    good = [r for r in results if np.isfinite(r.cost)]
    if not good:
        raise FitError("no starting point gave a finite fit")
    return min(good, key=lambda r: r.cost).x


# --- power law: y = E + A * D^-alpha, E, A, alpha > 0 (losses) -------------------------------


def power_predict(d: np.ndarray, p: np.ndarray) -> np.ndarray:
    e, a, alpha = p
    return e + a * np.asarray(d, dtype=float) ** -alpha


def power_fit(d: np.ndarray, y: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """Least squares on log y over log-parameters, so every parameter stays positive."""
    d, y = np.asarray(d, dtype=float), np.asarray(y, dtype=float)
    if (y <= 0).any():
        raise FitError(
            "the power law E + A * D^-alpha needs positive values (a loss); use "
            "scaling.law loglinear or score"
        )

    def residuals(theta):
        return np.log(power_predict(d, np.exp(theta))) - np.log(y)

    def jacobian(theta):
        e, a, alpha = np.exp(theta)
        term = a * d**-alpha
        return (
            np.stack([np.full_like(d, e), term, -alpha * np.log(d) * term], axis=1)
            / (e + term)[:, None]
        )

    starts = [start] if start is not None else _power_starts(d, y)
    bounds = (
        np.array([-30.0, -30.0, math.log(1e-4)]),
        np.array([math.log(y.max()) + 1.0, 60.0, math.log(5.0)]),
    )
    return np.exp(_best_least_squares(residuals, jacobian, [np.log(s) for s in starts], bounds))


def _power_starts(d: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """A profile start (for each alpha on a grid, E and A by linear least squares; the best
    positive one) and two far-apart guesses: a floor near 0 and a floor near the smallest value."""
    first = y[np.argmin(d)]
    starts = [
        np.array([e, max(first - e, 1e-3 * first) * d.min() ** alpha, alpha])
        for e, alpha in ((1e-3 * y.min(), 0.3), (0.9 * y.min(), 1.0))
    ]
    best = None
    for alpha in np.geomspace(0.01, 3.0, 40):
        design = np.stack([np.ones_like(d), d**-alpha], axis=1)
        (e, a), *_ = np.linalg.lstsq(design, y, rcond=None)
        if e > 0 and a > 0:
            cost = float(np.sum((np.log(e + a * d**-alpha) - np.log(y)) ** 2))
            if best is None or cost < best[0]:
                best = (cost, np.array([e, a, alpha]))
    return ([best[1]] if best else []) + starts


def power_invert(target: float, p: np.ndarray) -> tuple[float | None, str | None]:
    e, a, alpha = p
    if target <= e:
        return None, f"{target:.4g} is at or below the fitted floor E = {e:.4g}"
    return _size_from_log((math.log(a) - math.log(target - e)) / alpha)


# --- score law: y = (a + alpha * ln D)^beta, beta > 0 (scores that grow with data) ------------


def score_predict(d: np.ndarray, p: np.ndarray) -> np.ndarray:
    a, alpha, beta = p
    base = a + alpha * np.log(np.asarray(d, dtype=float))
    return np.maximum(base, 0.0) ** beta


def score_fit(d: np.ndarray, y: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """Least squares in y over (a, alpha, ln beta); starts from linear fits of y^(1/beta)."""
    d, y = np.asarray(d, dtype=float), np.asarray(y, dtype=float)
    if (y < 0).any():
        raise FitError(
            "the score law (a + alpha * ln D)^beta needs non-negative values; use "
            "scaling.law loglinear"
        )

    log_d = np.log(d)

    def residuals(theta):
        return score_predict(d, np.array([theta[0], theta[1], math.exp(theta[2])])) - y

    def jacobian(theta):
        beta = math.exp(theta[2])
        base = np.maximum(theta[0] + theta[1] * log_d, 1e-300)
        slope = np.where(base > 1e-300, beta * base ** (beta - 1), 0.0)
        return np.stack(
            [slope, slope * log_d, beta * base**beta * np.log(base) * (base > 1e-300)], axis=1
        )

    if start is not None:
        starts = [start]
    else:
        starts = [
            np.array([*_line(np.log(d), y ** (1 / beta)), beta]) for beta in (0.5, 1.0, 2.0, 4.0)
        ]
    thetas = [np.array([s[0], s[1], math.log(s[2])]) for s in starts]
    bounds = (
        np.array([-np.inf, -np.inf, math.log(0.05)]),
        np.array([np.inf, np.inf, math.log(20)]),
    )
    a, alpha, log_beta = _best_least_squares(residuals, jacobian, thetas, bounds)
    return np.array([a, alpha, math.exp(log_beta)])


def score_invert(target: float, p: np.ndarray) -> tuple[float | None, str | None]:
    a, alpha, beta = p
    if target < 0:
        return None, "the score law only reaches non-negative values"
    if alpha == 0:
        return None, "the fitted curve is flat (alpha = 0)"
    return _size_from_log((target ** (1 / beta) - a) / alpha)


# --- log-linear: y = a + b * ln D ---------------------------------------------------------------


def loglinear_predict(d: np.ndarray, p: np.ndarray) -> np.ndarray:
    return p[0] + p[1] * np.log(np.asarray(d, dtype=float))


def loglinear_fit(d: np.ndarray, y: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """Ordinary least squares in ln D (closed form; `start` is not needed)."""
    return np.array(_line(np.log(np.asarray(d, dtype=float)), np.asarray(y, dtype=float)))


def loglinear_invert(target: float, p: np.ndarray) -> tuple[float | None, str | None]:
    if p[1] == 0:
        return None, "the fitted line is flat (b = 0)"
    return _size_from_log((target - p[0]) / p[1])


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Intercept and slope of the least-squares line."""
    slope, intercept = np.polyfit(x, y, 1)
    return float(intercept), float(slope)


LAWS: dict[str, Law] = {
    law.name: law
    for law in (
        Law(
            "power",
            "E + A * D^-alpha",
            ("E", "A", "alpha"),
            "{E:.3g} + {A:.3g} * D^-{alpha:.3g}",
            power_predict,
            power_fit,
            power_invert,
        ),
        Law(
            "score",
            "(a + alpha * ln D)^beta",
            ("a", "alpha", "beta"),
            "({a:.3g} + {alpha:.3g} * ln D)^{beta:.3g}",
            score_predict,
            score_fit,
            score_invert,
        ),
        Law(
            "loglinear",
            "a + b * ln D",
            ("a", "b"),
            "{a:.3g} + {b:.3g} * ln D",
            loglinear_predict,
            loglinear_fit,
            loglinear_invert,
        ),
    )
}
