"""Label-free rewards on generated text for the MaxEnt-TS / DTS searches (issue 13, section 2).

Every reward is a ``Callable[[str], float]`` on the decoded generated text; it is built from the
task's *input* only (the context series, the HAR window, the M4 series to caption) and never sees
the evaluation label or the held-out truth. The one exception, :func:`oracle_spectral_reward`,
is named and flagged (``reward.is_oracle = True``) as an upper bound for analysis only.

- :func:`spectral_reward`: numeric continuations scored by the Welch log-PSD distance and a
  statistics distance to the context.
- :class:`HarVerifier` + :func:`har_reward`: "Answer: <label>" format term plus the log-probability
  of the stated label under a logistic-regression verifier trained on a disjoint split.
- :func:`caption_faithfulness`: the fraction-style score of the statements a caption makes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from jaxts.data._har import HAR_FS, HAR_LABEL_NAMES

__all__ = [
    "HarVerifier",
    "caption_claims",
    "caption_faithfulness",
    "har_features",
    "har_reward",
    "oracle_spectral_reward",
    "parse_har_answer",
    "parse_numbers",
    "spectral_distance",
    "spectral_reward",
    "welch_psd",
]

Reward = Callable[[str], float]

# A number not glued to letters/digits/dots on its left (so "H12", "x2", "1.2.3"'s ".3" are not
# numbers) nor to letters/digits on its right ("24h" is not the number 24).
_NUM = re.compile(
    r"(?<![A-Za-z0-9_.])[-+]?(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?(?![A-Za-z0-9_])"
)


def parse_numbers(text: str) -> np.ndarray:
    """The numbers written in ``text``, in order, as float64 ``[K]`` (empty when none).

    Accepts LLMTime-style output: ``"12, 13, 15"``, ``"12 13 15"``, newlines, ``-3.5``, ``1e3``,
    the Unicode minus. A comma always separates numbers (never a thousands separator), so
    ``"1,234"`` is ``[1, 234]``. Junk is skipped: numbers glued to letters (``"H12"``, ``"24h"``),
    the trailing part of ``"1.2.3"``, and non-finite values."""
    text = text.replace("\u2212", "-")
    vals = [float(m.group()) for m in _NUM.finditer(text)]
    out = np.asarray(vals, dtype=np.float64)
    return out[np.isfinite(out)]


# ---------------------------------------------------------------------------------- Welch PSD


def welch_psd(
    x: np.ndarray, nperseg: int | None = None, fs: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Welch power spectral density of a 1-D series: ``(freqs [F], psd [F])``, ``F = nperseg//2+1``.

    The settings of ``scipy.signal.welch`` defaults: periodic Hann window, 50% overlap
    (``nperseg // 2``), each segment's mean removed, one-sided density scaling (units²/Hz), mean
    over the segments, no padding. ``nperseg=None`` is ``min(256, len(x))`` like scipy."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or x.size < 2:
        raise ValueError(f"welch_psd expects a 1-D series of >= 2 values, got shape {x.shape}")
    n = min(256, x.size) if nperseg is None else int(nperseg)
    if not 2 <= n <= x.size:
        raise ValueError(f"nperseg must be in [2, len(x)={x.size}], got {n}")
    step = n - n // 2
    starts = np.arange(0, x.size - n + 1, step)
    seg = x[starts[:, None] + np.arange(n)]  # [S, n]
    seg = seg - seg.mean(axis=1, keepdims=True)
    win = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)  # periodic Hann (scipy's 'hann')
    spec = np.abs(np.fft.rfft(seg * win, axis=1)) ** 2 / (fs * np.sum(win**2))  # [S, F]
    # One-sided: fold the negative frequencies in, except DC and (even n) Nyquist.
    spec[:, 1 : (n + 1) // 2] *= 2.0
    return np.fft.rfftfreq(n, 1.0 / fs), spec.mean(axis=0)


# ---------------------------------------------------------------------------- spectral reward


def _acf1(x: np.ndarray) -> float:
    """Lag-1 autocorrelation; 0 for a constant series (undefined there)."""
    d = x - x.mean()
    den = float(np.dot(d, d))
    return float(np.dot(d[1:], d[:-1]) / den) if den > 0 else 0.0


def spectral_distance(
    y: np.ndarray,
    ref: np.ndarray,
    *,
    nperseg: int | None = None,
    normalize: bool = True,
    eps: float = 1e-4,
) -> tuple[float, float]:
    """``(d_f, d_t)`` between a series ``y`` and a reference ``ref`` (both 1-D, >= 4 values).

    Both are first expressed in the reference's units: with ``normalize=True``,
    ``z = (x - mean(ref)) / std(ref)`` (so the distances are comparable across series of any
    level and scale and a level/scale mismatch of ``y`` is *not* normalised away).

    - ``d_f = (1/pi) * integral_0^pi |log(S_y + e) - log(S_ref + e)| domega``: the mean absolute
      log-PSD difference over the normalised angular frequencies, trapezoid rule on the Welch
      grid, both PSDs with the same ``nperseg`` (default ``min(len(y), len(ref), 64)``). ``e`` is
      ``eps`` times the reference's variance: a constant ``y`` (PSD 0) costs ``|log e|``-ish
      instead of infinity.
    - ``d_t = (|mean_y - mean_ref| + |std_y - std_ref| + |acf1_y - acf1_ref|) / 3`` on the
      normalised values: level, scale and lag-1 autocorrelation, an alignment-free (DTW-free)
      temporal distance that works when ``y`` and ``ref`` have different lengths."""
    y = np.asarray(y, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if min(y.size, ref.size) < 4:
        raise ValueError(f"spectral_distance needs >= 4 values, got {y.size} and {ref.size}")
    mu, sd = (float(ref.mean()), float(ref.std())) if normalize else (0.0, 1.0)
    sd = sd if sd > 0 else 1.0  # a constant reference: only the level is compared
    zy, zr = (y - mu) / sd, (ref - mu) / sd
    n = min(y.size, ref.size, 64) if nperseg is None else min(int(nperseg), y.size, ref.size)
    freqs, sy = welch_psd(zy, n)
    _, sr = welch_psd(zr, n)
    e = eps * max(float(zr.var()), 1e-12)
    gap = np.abs(np.log(sy + e) - np.log(sr + e))  # [F]
    w = 2.0 * np.pi * freqs  # the grid in angular frequency, [0, pi]
    d_f = float(np.sum((gap[1:] + gap[:-1]) * np.diff(w)) / 2.0 / np.pi)
    d_t = (abs(zy.mean() - zr.mean()) + abs(zy.std() - zr.std()) + abs(_acf1(zy) - _acf1(zr))) / 3
    return d_f, float(d_t)


def _spectral(ref, w_f, w_t, normalize, max_len, min_len, cap, nperseg) -> Reward:
    ref = np.asarray(ref, dtype=np.float64)
    if ref.ndim != 1 or ref.size < max(min_len, 4) or not np.isfinite(ref).all():
        raise ValueError(
            f"reference must be a finite 1-D series of >= {max(min_len, 4)} values, "
            f"got shape {ref.shape}"
        )
    if w_f < 0 or w_t < 0 or cap <= 0 or min_len < 4:
        raise ValueError(
            f"expected w_f, w_t >= 0, cap > 0, min_len >= 4; got {w_f}, {w_t}, {cap}, {min_len}"
        )
    floor = -(w_f + w_t) * cap

    def reward(text: str) -> float:
        y = parse_numbers(text)
        if max_len is not None:
            y = y[:max_len]
        if y.size < min_len:
            return floor
        with np.errstate(all="ignore"):
            d_f, d_t = spectral_distance(y, ref, nperseg=nperseg, normalize=normalize)
        r = -(w_f * min(d_f, cap) + w_t * min(d_t, cap))
        return float(r) if np.isfinite(r) else floor

    reward.floor = floor
    return reward


def spectral_reward(
    context: np.ndarray,
    *,
    w_f: float = 0.5,
    w_t: float = 0.5,
    normalize: bool = True,
    max_len: int | None = None,
    min_len: int = 8,
    cap: float = 10.0,
    nperseg: int | None = None,
) -> Reward:
    """Label-free reward of a numeric continuation against its own CONTEXT series.

    ``reward(text) = -(w_f * min(d_f, cap) + w_t * min(d_t, cap))`` with ``(d_f, d_t)`` of
    :func:`spectral_distance` between the numbers parsed from ``text`` (the first ``max_len``
    of them when given, e.g. the forecast horizon) and ``context``. The reward is in
    ``[floor, 0]``, 0 for a continuation statistically identical to the context. Text with fewer
    than ``min_len`` parseable numbers (too few for a PSD) gets ``floor = -(w_f + w_t) * cap``,
    the worst possible value (exposed as ``reward.floor``); the result is never NaN."""
    return _spectral(context, w_f, w_t, normalize, max_len, min_len, cap, nperseg)


def oracle_spectral_reward(
    truth: np.ndarray,
    *,
    w_f: float = 0.5,
    w_t: float = 0.5,
    normalize: bool = True,
    max_len: int | None = None,
    min_len: int = 8,
    cap: float = 10.0,
    nperseg: int | None = None,
) -> Reward:
    """ORACLE (uses the held-out ground truth): :func:`spectral_reward` with the truth as the
    reference. An upper bound for analysis only; a search guided by it has seen the answer.
    The returned callable carries ``is_oracle = True``."""
    reward = _spectral(truth, w_f, w_t, normalize, max_len, min_len, cap, nperseg)
    reward.is_oracle = True
    return reward


# ------------------------------------------------------------------------------- HAR verifier


def har_features(windows: np.ndarray, fs: float = HAR_FS) -> np.ndarray:
    """Per-window statistics ``[N, 31]`` of ``windows [N, T, 3]`` (or one ``[T, 3]`` -> ``[1, 31]``).

    For each of x, y, z and the magnitude ``sqrt(x²+y²+z²)``: mean, std, min, max, energy (mean
    of squares), dominant frequency in Hz (largest periodogram bin, DC excluded, after removing
    the mean) and mean absolute first difference (jerk); then the 3 pairwise correlations of the
    axes: 4 x 7 + 3 = 31 columns."""
    w = np.asarray(windows, dtype=np.float64)
    if w.ndim == 2:
        w = w[None]
    if w.ndim != 3 or w.shape[-1] != 3 or w.shape[1] < 4:
        raise ValueError(f"expected windows [N, T>=4, 3] or [T, 3], got {np.shape(windows)}")
    sig = np.concatenate([w, np.linalg.norm(w, axis=-1, keepdims=True)], axis=-1)  # [N, T, 4]
    d = sig - sig.mean(axis=1, keepdims=True)
    power = np.abs(np.fft.rfft(d, axis=1)) ** 2  # [N, F, 4]
    freqs = np.fft.rfftfreq(w.shape[1], 1.0 / fs)
    dom = freqs[np.argmax(power[:, 1:], axis=1) + 1]  # [N, 4], DC excluded
    feats = [
        sig.mean(axis=1),
        sig.std(axis=1),
        sig.min(axis=1),
        sig.max(axis=1),
        (sig**2).mean(axis=1),
        dom,
        np.abs(np.diff(sig, axis=1)).mean(axis=1),
    ]
    sd = d[..., :3].std(axis=1) + 1e-9  # [N, 3]
    corr = [
        (d[..., i] * d[..., j]).mean(axis=1) / (sd[:, i] * sd[:, j])
        for i, j in ((0, 1), (0, 2), (1, 2))
    ]
    return np.concatenate([*feats, np.stack(corr, axis=1)], axis=1)  # [N, 31]


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


class HarVerifier:
    """Multinomial logistic regression on :func:`har_features` (standardised), with an L2
    penalty ``l2/2 * ||W||²`` (bias not penalised).

    Fitted by Nesterov-accelerated full-batch gradient descent from zero weights with the step
    ``1 / L`` (``L`` the gradient's Lipschitz bound): deterministic, no seed needed, and the same
    weights on every run. Train it on the verifier half of :func:`jaxts.data.split_har` only."""

    def __init__(self, *, l2: float = 1e-3, steps: int = 1000, num_classes: int = 6):
        if l2 < 0 or steps < 1 or num_classes < 2:
            raise ValueError(f"expected l2 >= 0, steps >= 1, num_classes >= 2; got {l2}, {steps}")
        self.l2, self.steps, self.num_classes = l2, steps, num_classes
        self.mean = self.scale = self.weights = None

    def _design(self, windows: np.ndarray) -> np.ndarray:
        f = (har_features(windows) - self.mean) / self.scale
        return np.concatenate([f, np.ones((f.shape[0], 1))], axis=1)  # [N, D+1], bias last

    def fit(self, windows: np.ndarray, labels: np.ndarray) -> HarVerifier:
        """Fit on ``windows [N, T, 3]`` and integer ``labels [N]`` in ``0..num_classes-1``."""
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != len(windows) or len(labels) == 0:
            raise ValueError(f"expected labels [N={len(windows)}], got shape {labels.shape}")
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"labels must be in 0..{self.num_classes - 1}")
        f = har_features(windows)
        self.mean, self.scale = f.mean(axis=0), f.std(axis=0) + 1e-9
        x = self._design(windows)  # [N, D]
        n = x.shape[0]
        y = np.eye(self.num_classes)[labels]  # [N, C]
        lip = 0.5 * np.linalg.eigvalsh(x.T @ x / n)[-1] + self.l2
        mask = np.ones((x.shape[1], 1))
        mask[-1] = 0.0  # no penalty on the bias row
        w = np.zeros((x.shape[1], self.num_classes))
        prev = w
        for t in range(1, self.steps + 1):
            v = w + (t - 2) / (t + 1) * (w - prev)  # Nesterov look-ahead
            p = np.exp(_log_softmax(x @ v))
            grad = x.T @ (p - y) / n + self.l2 * mask * v
            prev, w = w, v - grad / lip
        self.weights = w
        return self

    def log_proba(self, window: np.ndarray) -> np.ndarray:
        """Log class probabilities: ``[C]`` for one window ``[T, 3]``, ``[N, C]`` for ``[N, T, 3]``."""
        if self.weights is None:
            raise ValueError("HarVerifier.log_proba called before fit")
        out = _log_softmax(self._design(window) @ self.weights)
        return out[0] if np.ndim(window) == 2 else out

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """Most likely class per window, int ``[N]``."""
        return np.argmax(
            self.log_proba(np.asarray(windows).reshape(-1, *np.shape(windows)[-2:])), 1
        )

    def accuracy(self, windows: np.ndarray, labels: np.ndarray) -> float:
        """Fraction of ``windows [N, T, 3]`` whose predicted class equals ``labels [N]``."""
        return float(np.mean(self.predict(windows) == np.asarray(labels)))


_ANSWER = re.compile(r"answer\s*:", re.IGNORECASE)
_TAIL_JUNK = " \t\r\n.!?,;:*_`'\"<>)(][}{"


def _norm_label(s: str) -> str:
    return re.sub(r"[\s\-]+", "_", s.strip().lower())


def parse_har_answer(text: str, labels: Sequence[str] = HAR_LABEL_NAMES) -> str | None:
    """The allowed label the text ends with, in its canonical spelling from ``labels``, or None.

    Grammar: the LAST ``Answer:`` (any case, spaces around the colon allowed) must be followed
    by exactly one label and nothing else but whitespace and punctuation/markdown (``. ! ? , ;
    * _ ` ' " < > ( ) [ ] { }``). Matching ignores case and treats spaces/hyphens as underscores
    (``"Walking Upstairs."`` -> ``"walking_upstairs"``)."""
    hits = list(_ANSWER.finditer(text))
    if not hits:
        return None
    tail = _norm_label(text[hits[-1].end() :].strip(_TAIL_JUNK))
    canon = {_norm_label(lab): lab for lab in labels}
    return canon.get(tail)


def har_reward(
    window: np.ndarray, verifier: HarVerifier, labels: Sequence[str] = HAR_LABEL_NAMES
) -> Reward:
    """Label-free HAR reward for one window ``[T, 3]``.

    ``reward(text) = format + log p_verifier(stated label | window)``: ``format`` is 0 when
    :func:`parse_har_answer` finds an allowed label (``labels[k]`` names verifier class ``k``),
    else -1, and then the verifier term is the *smallest* class log-probability of this window,
    so every unformatted text scores below every formatted one. The window's true label is
    never given to the reward."""
    logp = verifier.log_proba(np.asarray(window))  # [C]
    if logp.shape != (len(labels),):
        raise ValueError(f"verifier has {logp.shape[0]} classes but {len(labels)} labels given")
    index = {lab: k for k, lab in enumerate(labels)}
    worst = float(logp.min())

    def reward(text: str) -> float:
        lab = parse_har_answer(text, labels)
        return worst - 1.0 if lab is None else float(logp[index[lab]])

    return reward


# --------------------------------------------------------------------- M4 caption faithfulness

# A number in a caption may use thousands separators ("1,234.5"), unlike parse_numbers.
# A clock time, hours or a percentage ("peaks at 14:00", "every 24 hours") is not a level.
_CNUM = (
    r"([-+\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)"
    r"(?![\d,.]*\s*(?::\d|h\b|am\b|pm\b|hours?\b|%|percent))"
)
_GAP = r"[^.;\n\d]{0,40}?"  # up to 40 characters within the same clause before the number
_NUMERIC = {
    "mean": rf"\b(?:mean|average)\b{_GAP}{_CNUM}",
    "min": rf"\b(?:min(?:imum)?|lowest|as low as|bottoms? out)\b{_GAP}{_CNUM}",
    "max": rf"\b(?:max(?:imum)?|highest|peaks?|peaking|as high as)\b{_GAP}{_CNUM}",
    "start": rf"\b(?:starts?|starting|begins?|beginning|initial(?:ly)?|opens?)\b{_GAP}{_CNUM}",
    "end": rf"\b(?:ends?|ending|finish(?:es)?|final(?:ly)?|closes?|last value)\b{_GAP}{_CNUM}",
}
_FLAT = (
    r"\b(?:no|without(?: a| any)?)\s+(?:clear |obvious |significant |overall |strong )?"
    r"(?:upward |downward )?trend|\b(?:flat|stable|stationary|steady|trendless)\b"
)
_UP = r"\b(?:increas\w*|ris(?:e|es|ing)|upward|grow(?:s|ing|th)?|climb\w*|up-?trend)\b"
_DOWN = r"\b(?:decreas\w*|declin\w*|fall(?:s|ing)?|downward|drop(?:s|ping)?|down-?trend)\b"
_NO_CYCLE = (
    r"\b(?:no|without(?: a| any)?)\s+(?:clear |obvious |strong |visible )?"
    r"(?:daily |diurnal |24[- ]hour |seasonal )?(?:cycle|seasonality|periodicity|pattern)"
    r"|\b(?:not|non-?)\s*(?:periodic|seasonal|cyclic(?:al)?)\b|\baperiodic\b"
)
_CYCLE = (
    r"\b(?:daily|diurnal|24[- ]hour|day-night|circadian)\s+(?:cycle|pattern|seasonality|"
    r"periodicity|rhythm|oscillation|seasonal pattern|variation)s?"
    r"|\brepeats? (?:every|each) (?:day|24 hours)|\bevery 24 hours\b|\bperiod of 24\b"
)


def caption_claims(text: str) -> list[tuple[str, float | str]]:
    """The statements a caption makes, in a fixed order, as ``(kind, value)`` pairs.

    Recognised (case-insensitive), each kind at most once (its first occurrence):

    - ``("mean" | "min" | "max" | "start" | "end", number)``: a keyword (mean/average;
      min/minimum/lowest/as low as; max/maximum/highest/peak/as high as; starts/begins/initial;
      ends/final/finishes/last value) followed within the same clause (no ``.``, ``;``, newline
      or other digit in between, <= 40 characters) by a number (``1,234.5`` allowed).
    - ``("trend", "up" | "down" | "flat")``: "no (clear) trend", "flat", "stable", "stationary",
      "steady" -> flat (these spans are removed first, so "no upward trend" is flat, not up);
      then increas*/rise/rising/upward/grow*/climb* -> up and decreas*/declin*/fall*/downward/
      drop* -> down. Both up and down may be claimed (each is a statement).
    - ``("daily_cycle", "yes" | "no")``: "no (clear) (daily) cycle/seasonality/periodicity",
      "not periodic", "aperiodic" -> no (checked first, then removed); "daily/diurnal/24-hour
      cycle/pattern/seasonality/...", "repeats every day", "every 24 hours" -> yes."""
    low = text.lower().replace("\u2212", "-")
    claims: list[tuple[str, float | str]] = []
    for kind, pat in _NUMERIC.items():
        m = re.search(pat, low)
        if m:
            claims.append((kind, float(m.group(1).replace(",", "").replace("\u2212", "-"))))
    rest = low
    for pat, kind, value in (
        (_FLAT, "trend", "flat"),
        (_UP, "trend", "up"),
        (_DOWN, "trend", "down"),
        (_NO_CYCLE, "daily_cycle", "no"),
        (_CYCLE, "daily_cycle", "yes"),
    ):
        if re.search(pat, rest):
            claims.append((kind, value))
            rest = re.sub(pat, " ", rest)  # "no upward trend" must not also count as "up"
    return claims


def _acf(x: np.ndarray, lag: int) -> float:
    d = x - x.mean()
    den = float(np.dot(d, d))
    return float(np.dot(d[lag:], d[:-lag]) / den) if den > 0 and x.size > lag else 0.0


def caption_faithfulness(
    series: np.ndarray,
    *,
    rtol: float = 0.1,
    trend_threshold: float = 0.5,
    cycle_threshold: float = 0.4,
    period: int = 24,
) -> Reward:
    """Label-free faithfulness of a caption of ``series`` (the values shown to the model).

    ``reward(text)`` = the mean over the statements of :func:`caption_claims` of +1 (faithful)
    or -1 (not); 0 (neutral) when the caption asserts nothing recognisable. Checks:

    - numbers: ``|claim - stat| <= rtol * (max - min)`` (the series' range; ``rtol * |stat|``
      for a constant series), stats mean, min, max, ``series[0]`` (start), ``series[-1]`` (end);
    - trend: the least-squares slope times ``len(series)`` (the fitted change over the window)
      divided by the series' std; ``> trend_threshold`` is up, ``< -trend_threshold`` down, else
      flat;
    - daily cycle: the lag-``period`` autocorrelation ``>= cycle_threshold`` means a cycle."""
    x = np.asarray(series, dtype=np.float64)
    if x.ndim != 1 or x.size < 3 or not np.isfinite(x).all():
        raise ValueError(f"series must be a finite 1-D array of >= 3 values, got {x.shape}")
    stats = {"mean": x.mean(), "min": x.min(), "max": x.max(), "start": x[0], "end": x[-1]}
    span = float(x.max() - x.min())
    t = np.arange(x.size, dtype=np.float64)
    slope = np.polyfit(t, x, 1)[0]
    change = slope * x.size / x.std() if x.std() > 0 else 0.0
    truth = {
        "trend": "up"
        if change > trend_threshold
        else "down"
        if change < -trend_threshold
        else "flat",
        "daily_cycle": "yes" if _acf(x, period) >= cycle_threshold else "no",
    }

    def faithful(kind: str, value: float | str) -> bool:
        if kind in truth:
            return value == truth[kind]
        tol = rtol * span if span > 0 else rtol * abs(stats[kind]) + 1e-12
        return abs(value - stats[kind]) <= tol

    def reward(text: str) -> float:
        claims = caption_claims(text)
        if not claims:
            return 0.0
        return float(np.mean([1.0 if faithful(k, v) else -1.0 for k, v in claims]))

    reward.stats = {**{k: float(v) for k, v in stats.items()}, "change": float(change)}
    reward.stats["acf_period"] = _acf(x, period)
    return reward
