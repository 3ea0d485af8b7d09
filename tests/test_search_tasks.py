"""MaxEnt-TS task items (jaxts.search.tasks): HAR, M4 captions and M4 text forecasting, with the
evaluation target kept apart from the label-free reward."""

from __future__ import annotations

import numpy as np
import pytest

from jaxts.data import HAR_LABEL_NAMES, load_har, load_m4_hourly, split_har
from jaxts.search.rewards import har_reward
from jaxts.search.tasks import (
    TaskItem,
    har_items,
    llmtime_deserialize,
    llmtime_serialize,
    m4_caption_items,
    m4_forecast_items,
    mase,
)


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    monkeypatch.delenv("JAXTS_DATA_DIR", raising=False)


@pytest.fixture(scope="module")
def har():
    return har_items(n=12, seed=0)


def test_har_items_from_the_eval_half_balanced_and_label_free(har):
    items, verifier = har
    assert len(items) == 12 and all(isinstance(it, TaskItem) for it in items)
    assert [it.label for it in items] == list(HAR_LABEL_NAMES) * 2  # round-robin over classes
    ver_half, eval_half = split_har(load_har(), seed=0)
    assert {it.extra["index"] for it in items} <= set(eval_half.index.tolist())
    assert not {it.extra["index"] for it in items} & set(ver_half.index.tolist())
    data = load_har()
    for it in items:
        np.testing.assert_array_equal(it.extra["window"], data.windows[it.extra["index"]])
        assert it.label == HAR_LABEL_NAMES[data.labels[it.extra["index"]]]
        # The reward is a function of the window and the verifier only.
        ref = har_reward(it.extra["window"], verifier)
        for text in (f"Answer: {it.label}", "Answer: laying", "nothing"):
            assert it.reward(text) == ref(text)
    # Same seed -> same items.
    again, _ = har_items(n=12, seed=0)
    assert [it.name for it in again] == [it.name for it in items]


def test_har_prompt_content(har):
    it = har[0][0]
    assert [m["role"] for m in it.messages] == ["system", "user"]
    user = it.messages[1]["content"]
    assert "Answer: <activity>" in user and ", ".join(HAR_LABEL_NAMES) in user
    assert it.label not in user.split("Possible activities")[0]  # the label is not leaked
    w = it.extra["window"].astype(np.float64)
    for k, axis in enumerate("xyz"):
        line = next(ln for ln in user.splitlines() if ln.startswith(f"{axis}-axis"))
        assert f"mean {w[:, k].mean():.3f} g, std {w[:, k].std():.3f} g" in line
        values = [float(v) for v in line.split("values: ")[1].split(", ")]
        z = (w[:, k] - w[:, k].mean()) / w[:, k].std()
        np.testing.assert_allclose(values, z.reshape(32, 4).mean(1), atol=0.005 + 1e-9)


def test_har_items_errors():
    with pytest.raises(ValueError, match="n must be in 1.."):
        har_items(n=0)


def test_m4_caption_items():
    items = m4_caption_items(n=5, seed=3)
    train, _, ids = load_m4_hourly(with_ids=True)
    assert len({it.name for it in items}) == 5
    for it in items:
        i = ids.index(it.extra["series_id"])
        np.testing.assert_array_equal(it.extra["series"], train[i][-96:])
        assert it.label is None and it.truth is None
        assert "daily cycle" in it.messages[1]["content"]
        x = it.extra["series"]
        assert it.reward(f"The minimum is {x.min():.2f} and the maximum {x.max():.2f}.") == 1.0
        assert it.reward("A time series.") == 0.0
    assert [it.name for it in m4_caption_items(n=5, seed=3)] == [it.name for it in items]


@pytest.mark.parametrize(
    ("x", "scale", "text"),
    [
        (np.array([700.0, 712.4, 689.0]), 1.0, "700, 712, 689"),
        (np.array([45123.0, 46001.0, -120.0]), 100.0, "451, 460, -1"),
        (np.array([0.5, 0.123, 0.0]), 0.001, "500, 123, 0"),
    ],
)
def test_llmtime_serialize(x, scale, text):
    out, s = llmtime_serialize(x)
    assert (out, s) == (text, pytest.approx(scale))
    back = llmtime_deserialize(out, s)
    np.testing.assert_allclose(back, x, atol=s / 2 + 1e-12)  # round trip within half a unit
    assert llmtime_deserialize(out + ", 1, 2", s, horizon=3).shape == (3,)


def test_llmtime_errors():
    with pytest.raises(ValueError, match="finite non-empty 1-D"):
        llmtime_serialize(np.array([]))
    with pytest.raises(ValueError, match="scale must be > 0"):
        llmtime_serialize(np.ones(3), scale=0.0)


def _item(history, truth, scale=1.0):
    return TaskItem(
        name="toy",
        messages=[],
        reward=lambda text: 0.0,
        truth=np.asarray(truth, float),
        extra={"scale": scale, "history": np.asarray(history, float)},
    )


def test_mase_hand_computation():
    # season 2: in-sample errors |h[t] - h[t-2]| = |3-1|, |4-2|, |9-3| -> mean 10/3.
    it = _item([1, 2, 3, 4, 9], [10, 11, 12, 13], scale=10.0)
    assert mase("1, 1, 1, 1", it, season=2) == pytest.approx(np.mean([0, 1, 2, 3]) / (10 / 3))
    # Short forecast: padded with its last value (10 -> [10, 20, 20, 20]).
    assert mase("1, 2", it, season=2) == pytest.approx(np.mean([0, 9, 8, 7]) / (10 / 3))
    # No number: the naive forecast (last history value 9).
    assert mase("I cannot forecast.", it, season=2) == pytest.approx(
        np.mean([1, 2, 3, 4]) / (10 / 3)
    )
    # Extra numbers after the horizon are ignored.
    assert mase("1, 1, 1, 1, 500", it, season=2) == mase("1, 1, 1, 1", it, season=2)
    with pytest.raises(ValueError, match="MASE undefined"):
        mase("1", _item(np.ones(10), [1, 1]), season=2)
    with pytest.raises(ValueError, match="forecasting item"):
        mase("1", TaskItem("x", [], lambda t: 0.0))


def test_m4_forecast_items():
    items = m4_forecast_items(n=4, seed=1, context=96, horizon=24)
    train, test, ids = load_m4_hourly(with_ids=True)
    for it in items:
        i = ids.index(it.extra["series_id"])
        np.testing.assert_array_equal(it.extra["history"], train[i])
        np.testing.assert_array_equal(it.truth, test[i][:24])
        text, scale = llmtime_serialize(train[i][-96:].astype(np.float64))
        assert it.extra["scale"] == scale and it.messages[1]["content"].endswith(text)
        # Reward vs the context (serialised units): the seasonal-naive continuation beats a
        # constant one; the truth is not needed (and not used) for it.
        last_day = ", ".join(text.split(", ")[-24:])
        assert it.reward(last_day) > it.reward(", ".join([text.split(", ")[-1]] * 24))
        # Forecasting the truth exactly (in serialised units) gives MASE ~ 0.
        exact, _ = llmtime_serialize(it.truth, scale=scale)
        h = train[i].astype(np.float64)
        assert mase(exact, it) <= 0.5 * scale / np.mean(np.abs(h[24:] - h[:-24])) + 1e-12
    with pytest.raises(ValueError, match="horizon must be in 1..48"):
        m4_forecast_items(n=1, horizon=49)
