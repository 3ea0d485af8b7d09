"""Paired-difference statistics: is arm B better than arm A on the same series?

Both arms are scored on the same series, so the question is about the per-series differences
``d_i = b_i - a_i`` (lower metrics are better, so ``d < 0`` means B wins on series ``i``), not
about two independent means:

* the mean difference with a 95% percentile-bootstrap interval (series resampled with
  replacement, a fixed seed so a rerun prints the same interval);
* the relative change of the mean, ``mean(b) / mean(a) - 1`` (the form of the published
  "+0.32% MAE"), with its interval from the same resamples;
* the win rate: the share of series where B is lower, ties counted as half a win;
* the two-sided Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``, zero differences
  dropped as in Wilcoxon's original test): small when the differences lean one way.

Pairs where either value is not finite (a metric undefined on a series, e.g. MAPE of an all-zero
horizon) are left out, and ``n`` says how many were kept.
"""

from __future__ import annotations

import numpy as np

__all__ = ["N_BOOTSTRAP", "paired_stats"]

N_BOOTSTRAP = 10_000
_CHUNK = 1_000  # resamples drawn at a time: [chunk, n] indices stay a few MB for any n


def _bootstrap_means(
    a: np.ndarray, b: np.ndarray, n_boot: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Means of ``a`` and ``b`` over the same ``n_boot`` resamples of the series: ``[n_boot]``
    each (one index draw for both, so that the difference and the ratio are paired)."""
    rng = np.random.default_rng(seed)
    n = len(a)
    mean_a, mean_b = np.empty(n_boot), np.empty(n_boot)
    for start in range(0, n_boot, _CHUNK):
        idx = rng.integers(0, n, size=(min(_CHUNK, n_boot - start), n))  # [chunk, n]
        mean_a[start : start + len(idx)] = a[idx].mean(axis=1)
        mean_b[start : start + len(idx)] = b[idx].mean(axis=1)
    return mean_a, mean_b


def _wilcoxon_p(d: np.ndarray) -> float:
    from scipy.stats import wilcoxon

    if not np.any(d != 0):
        return 1.0  # no signed difference at all (scipy would warn and divide 0 by 0)
    return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def paired_stats(
    a, b, *, n_boot: int = N_BOOTSTRAP, seed: int = 0, level: float = 0.95
) -> dict[str, float | int | None]:
    """Statistics of ``b - a`` per series for a lower-is-better metric; ``a``, ``b`` ``[N]``.

    Returns ``n`` (finite pairs kept), ``mean_a``, ``mean_b``, ``mean_diff`` with
    ``ci_low``/``ci_high``, ``rel_change`` (``mean_b / mean_a - 1``) with
    ``rel_ci_low``/``rel_ci_high`` (None when ``mean_a`` is 0), ``win_rate`` of ``b`` (ties
    half), ``wins``/``ties``/``losses`` and ``p_wilcoxon``. Raises ValueError for arrays of
    different shapes or no finite pair."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"paired values must be two 1-D arrays of one length, got {a.shape} "
                         f"and {b.shape}")  # fmt: skip
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) == 0:
        raise ValueError("no series where both arms have a finite value")
    d = b - a  # [N]
    boot_a, boot_b = _bootstrap_means(a, b, n_boot, seed)  # [n_boot] each
    tails = 100 * np.array([(1 - level) / 2, (1 + level) / 2])
    ci = np.percentile(boot_b - boot_a, tails)
    mean_a, mean_b = float(a.mean()), float(b.mean())
    rel = rel_ci = None
    if mean_a != 0 and np.all(boot_a != 0):
        rel = mean_b / mean_a - 1
        rel_ci = np.percentile(boot_b / boot_a - 1, tails)
    wins, ties = int(np.sum(d < 0)), int(np.sum(d == 0))
    return {
        "n": len(d),
        "mean_a": mean_a,
        "mean_b": mean_b,
        "mean_diff": float(d.mean()),
        "ci_low": float(ci[0]),
        "ci_high": float(ci[1]),
        "rel_change": None if rel is None else float(rel),
        "rel_ci_low": None if rel_ci is None else float(rel_ci[0]),
        "rel_ci_high": None if rel_ci is None else float(rel_ci[1]),
        "win_rate": (wins + 0.5 * ties) / len(d),
        "wins": wins,
        "ties": ties,
        "losses": len(d) - wins - ties,
        "p_wilcoxon": _wilcoxon_p(d),
    }
