"""Label-free rewards of the MaxEnt-TS search (jaxts.search.rewards): Welch PSD, number parsing,
spectral reward, the HAR verifier and answer format, M4 caption faithfulness."""

from __future__ import annotations

import time

import numpy as np
import pytest

from jaxts.data import HAR_LABEL_NAMES, load_har, split_har
from jaxts.search.rewards import (
    HarVerifier,
    caption_claims,
    caption_faithfulness,
    har_features,
    har_reward,
    oracle_spectral_reward,
    parse_har_answer,
    parse_numbers,
    spectral_distance,
    spectral_reward,
    welch_psd,
)


def _text(x) -> str:
    return ", ".join(f"{v:.2f}" for v in x)


# ---------------------------------------------------------------------------------- Welch


@pytest.mark.parametrize(
    ("n", "nperseg", "fs"),
    [(200, 16, 1.0), (97, 17, 1.0), (96, 24, 50.0), (64, 64, 1.0), (300, None, 2.0)],
)
def test_welch_equals_scipy(n, nperseg, fs):
    signal = pytest.importorskip("scipy.signal")
    x = np.random.default_rng(n).normal(size=n).cumsum() + 3.0
    f_ref, p_ref = signal.welch(x, fs=fs, nperseg=nperseg if nperseg else min(256, n))
    f, p = welch_psd(x, nperseg, fs=fs)
    np.testing.assert_allclose(f, f_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(p, p_ref, rtol=1e-6, atol=0)


def test_welch_errors():
    with pytest.raises(ValueError, match="nperseg must be in"):
        welch_psd(np.ones(10), 11)
    with pytest.raises(ValueError, match="1-D series"):
        welch_psd(np.ones((2, 5)))


# --------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12, 13, 15", [12, 13, 15]),
        ("12 13 15\n16", [12, 13, 15, 16]),
        ("-3.5,+2, .5, 1e3, \u22127", [-3.5, 2, 0.5, 1000, -7]),
        ("1,234", [1, 234]),  # a comma always separates
        ("H12 24h x2 then 7.", [7]),  # glued to letters: not numbers
        ("1.2.3, 4", [1.2, 4]),
        ("Sure! Here: 101, 102,, 103...", [101, 102, 103]),
        ("no numbers at all", []),
        ("", []),
    ],
)
def test_parse_numbers(text, expected):
    np.testing.assert_array_equal(parse_numbers(text), np.asarray(expected, dtype=np.float64))


# ------------------------------------------------------------------------- spectral reward


def _seasonal(n, start=0, seed=0, noise=0.1):
    t = np.arange(start, start + n)
    rng = np.random.default_rng(seed)
    return 100 + 20 * np.sin(2 * np.pi * t / 24) + noise * 20 * rng.normal(size=n)


def test_spectral_reward_orders_continuations():
    ctx = _seasonal(96)
    r = spectral_reward(ctx, max_len=48)
    similar = r(_text(_seasonal(48, start=96, seed=1)))
    noise = r(_text(100 + 20 * np.random.default_rng(2).normal(size=48)))
    const = r(_text(np.full(48, 100.0)))
    scaled = r(_text(100 + 5 * (_seasonal(48, start=96, seed=1) - 100)))  # 5x the amplitude
    assert similar > noise > const, (similar, noise, const)
    assert similar > scaled
    assert -1.0 < similar <= 0.0 and const >= r.floor
    # Scale/level invariance of the normalised reward: the same shapes in other units (equal
    # up to the 2-decimal rounding of the text).
    r2 = spectral_reward(ctx * 1000 - 7, max_len=48)
    assert r2(_text(_seasonal(48, start=96, seed=1) * 1000 - 7)) == pytest.approx(similar, abs=1e-3)


def test_spectral_reward_floor_and_never_nan():
    r = spectral_reward(_seasonal(96), max_len=24)
    assert r.floor == -10.0  # -(0.5 + 0.5) * cap
    for text in ["", "no numbers", "1, 2, 3, 4, 5, 6, 7", "Answer: walking"]:
        assert r(text) == r.floor
    for text in ["1e308, -1e308, 1e308, 0, 0, 0, 0, 0, 1e308", "5, 5, 5, 5, 5, 5, 5, 5", "0 " * 30]:
        v = r(text)
        assert np.isfinite(v) and r.floor <= v <= 0.0
    # Only the first max_len numbers count: junk after the horizon changes nothing.
    good = _text(_seasonal(24, start=96))
    assert r(good) == r(good + ", 1e9, -1e9, 1e9")
    # A constant context is allowed (only the level is then compared) and stays finite.
    assert np.isfinite(spectral_reward(np.full(50, 3.0))(_text(np.arange(20.0))))


def test_spectral_distance_zero_on_itself_and_definition():
    x = _seasonal(96)
    assert spectral_distance(x, x) == (0.0, 0.0)
    y = x[:48] * 2.0  # level and scale change: d_t against a hand computation
    _, d_t = spectral_distance(y, x)
    zx, zy = (x - x.mean()) / x.std(), (y - x.mean()) / x.std()
    acf = [
        np.sum((z - z.mean())[1:] * (z - z.mean())[:-1]) / np.sum((z - z.mean()) ** 2)
        for z in (zy, zx)
    ]
    expected_t = (abs(zy.mean() - zx.mean()) + abs(zy.std() - zx.std()) + abs(acf[0] - acf[1])) / 3
    assert d_t == pytest.approx(expected_t, rel=1e-12)
    # Twice the amplitude about the same mean: S_y = 4 S_ref at every frequency, so the
    # normalised integral of the log gap is log 4, less a little where S is near the
    # eps = 1e-4 floor (the gap there is log((4S + e) / (S + e)) < log 4).
    d_f, d_t = spectral_distance(x.mean() + 2.0 * (x - x.mean()), x)
    assert np.log(4.0) * 0.99 < d_f < np.log(4.0)
    assert spectral_distance(x.mean() + 2.0 * (x - x.mean()), x, eps=1e-12)[0] == pytest.approx(
        np.log(4.0), rel=1e-6
    )
    assert d_t == pytest.approx(1.0 / 3.0)  # only the std differs: |2 - 1| / 3


def test_oracle_is_marked():
    truth = _seasonal(24, start=96)
    r = oracle_spectral_reward(truth)
    assert r.is_oracle is True and not hasattr(spectral_reward(truth), "is_oracle")
    assert "ORACLE" in oracle_spectral_reward.__doc__
    assert r(_text(truth)) == pytest.approx(0.0, abs=1e-2)  # the text rounds to 2 decimals


def test_spectral_reward_bad_inputs():
    with pytest.raises(ValueError, match="reference must be"):
        spectral_reward(np.ones(3))
    with pytest.raises(ValueError, match="reference must be"):
        spectral_reward(np.array([1.0, np.nan] * 10))
    with pytest.raises(ValueError, match="w_f, w_t >= 0"):
        spectral_reward(np.ones(20), w_f=-1)


# ------------------------------------------------------------------------------------- HAR


@pytest.fixture(scope="module")
def har_split():
    return split_har(load_har(), seed=0)


@pytest.fixture(scope="module")
def verifier(har_split):
    ver_half, _ = har_split
    t0 = time.perf_counter()
    v = HarVerifier().fit(ver_half.windows, ver_half.labels)
    v.fit_seconds = time.perf_counter() - t0
    return v


def test_verifier_beats_chance_on_the_eval_half(har_split, verifier):
    ver_half, eval_half = har_split
    acc = verifier.accuracy(eval_half.windows, eval_half.labels)
    print(
        f"HAR verifier: eval-half accuracy {acc:.3f} (chance 1/6), "
        f"fit {verifier.fit_seconds:.2f} s on {len(ver_half)} windows"
    )
    assert acc > 0.6
    assert verifier.fit_seconds < 5.0
    # Deterministic: the same weights on a refit.
    again = HarVerifier().fit(ver_half.windows, ver_half.labels)
    np.testing.assert_array_equal(again.weights, verifier.weights)


def test_verifier_shapes_and_errors(har_split, verifier):
    _, eval_half = har_split
    w = eval_half.windows[:5]
    lp = verifier.log_proba(w)
    assert lp.shape == (5, 6) and np.allclose(np.exp(lp).sum(1), 1.0)
    np.testing.assert_allclose(verifier.log_proba(w[0]), lp[0], rtol=1e-12)
    assert har_features(w).shape == (5, 31) and har_features(w[0]).shape == (1, 31)
    with pytest.raises(ValueError, match="before fit"):
        HarVerifier().log_proba(w[0])
    with pytest.raises(ValueError, match="labels must be in 0..5"):
        HarVerifier().fit(w, np.array([0, 1, 2, 3, 6]))
    with pytest.raises(ValueError, match=r"windows \[N, T>=4, 3\]"):
        har_features(np.ones((5, 128, 2)))


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("The signal is periodic.\nAnswer: walking", "walking"),
        ("answer:WALKING_UPSTAIRS", "walking_upstairs"),
        ("Answer: Walking upstairs.", "walking_upstairs"),
        ("Answer: walking-downstairs!\n", "walking_downstairs"),
        ("**Answer:** **laying**", "laying"),
        ("Answer: sitting. Answer: standing", "standing"),  # the last one counts
        ("Answer: running", None),
        ("Answer: walking, maybe sitting", None),  # more than one label
        ("I think it is laying.", None),  # no 'Answer:'
        ("Answer: laying because the z axis...", None),  # must END with the label
        ("", None),
    ],
)
def test_parse_har_answer(text, label):
    assert parse_har_answer(text) == label


def test_har_reward_format_and_verifier_terms(har_split, verifier):
    _, eval_half = har_split
    window = eval_half.windows[0]
    lp = verifier.log_proba(window)
    r = har_reward(window, verifier)
    for k, name in enumerate(HAR_LABEL_NAMES):
        assert r(f"Reasoning.\nAnswer: {name}") == pytest.approx(lp[k], abs=0)
    assert r("no answer") == pytest.approx(lp.min() - 1.0)
    # Every formatted answer beats every unformatted text.
    assert min(r(f"Answer: {n}") for n in HAR_LABEL_NAMES) > r("Answer: jogging")
    with pytest.raises(ValueError, match="classes but 2 labels"):
        har_reward(window, verifier, labels=("a", "b"))


# -------------------------------------------------------------------------- M4 captions


def test_caption_claims_grammar():
    text = (
        "The series has a mean of about 1,234.5 and peaks at 14:00 each day, with a maximum "
        "of 2000. It starts at 700 and ends around 650; there is no clear upward trend, but a "
        "strong daily cycle."
    )
    assert caption_claims(text) == [
        ("mean", 1234.5),
        ("max", 2000.0),
        ("start", 700.0),
        ("end", 650.0),
        ("trend", "flat"),
        ("daily_cycle", "yes"),
    ]
    assert caption_claims("Values rise steadily. No daily pattern.") == [
        ("trend", "up"),
        ("daily_cycle", "no"),
    ]
    assert caption_claims("A lovely series.") == []


def test_caption_faithfulness_true_false_neutral():
    t = np.arange(96)
    x = 500 + 2.0 * t + 100 * np.sin(2 * np.pi * t / 24)  # rising, daily cycle
    r = caption_faithfulness(x)
    lo, hi, mean = x.min(), x.max(), x.mean()
    true_caption = (
        f"The mean is {mean:.0f}, the minimum {lo:.0f} and the maximum {hi:.0f}. It starts at "
        f"{x[0]:.0f} and ends at {x[-1]:.0f}, with an upward trend and a clear daily cycle."
    )
    assert r(true_caption) == 1.0
    false_caption = (
        f"The mean is {2 * hi:.0f}. The series is flat with no daily cycle and ends at {lo:.0f}."
    )
    assert r(false_caption) == -1.0
    assert r("It is a time series.") == 0.0  # neutral: nothing asserted
    assert r(f"The mean is {mean:.0f}, and the trend is downward.") == 0.0  # +1 and -1
    # Numeric tolerance: 10% of the range.
    span = hi - lo
    assert r(f"The mean is {mean + 0.09 * span:.1f}.") == 1.0
    assert r(f"The mean is {mean + 0.11 * span:.1f}.") == -1.0
    # A flat noisy series without a cycle.
    noise = 50 + np.random.default_rng(0).normal(size=96)
    rn = caption_faithfulness(noise)
    assert rn("Flat, with no daily cycle.") == 1.0
    assert rn("An upward trend with a daily pattern.") == -1.0
    with pytest.raises(ValueError, match="finite 1-D"):
        caption_faithfulness(np.array([1.0, np.inf, 2.0]))
