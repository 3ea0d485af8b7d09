"""``eval.paired`` on hand-made differences and ``python -m eval.distance_head``: its datasets, its
arms (same keys per series, other keys for the noise floor), its scores and a run end to end on
tiny random models."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

import eval.distance_head as evd
from eval.forecast import NonFiniteForecast
from eval.paired import paired_stats
from jaxts.checkpoint import save_model
from jaxts.models.chronos_t5 import ChronosT5, ChronosT5Config
from jaxts.models.chronos_tokenizer import ChronosConfig
from jaxts.models.t5 import T5Config
from tests.helpers import write_csv

# ---- paired statistics -----------------------------------------------------------------------


def shifted(n, shift, seed):
    """(a, b): skewed per-series scores and b = a + shift + symmetric noise."""
    rng = np.random.default_rng(seed)
    a = rng.lognormal(0.0, 0.5, n)
    return a, a + shift + rng.normal(0.0, 0.5, n)


def test_the_bootstrap_interval_covers_the_true_shift_about_95_percent_of_the_time():
    covered = []
    for rep in range(100):
        r = paired_stats(*shifted(60, 0.3, rep), n_boot=1000, seed=rep)
        assert r["ci_low"] < r["mean_diff"] < r["ci_high"]
        covered.append(r["ci_low"] <= 0.3 <= r["ci_high"])
    # a 95% interval: neither a too narrow one (~0.8) nor a too wide one (~1.0) passes
    assert 0.88 <= np.mean(covered) <= 0.99, np.mean(covered)


def test_a_clear_shift_is_significant_and_no_shift_is_not():
    clear = paired_stats(*shifted(100, 0.5, 0))
    assert clear["p_wilcoxon"] < 1e-6 and clear["ci_low"] > 0 and clear["win_rate"] < 0.2
    none = paired_stats(*shifted(100, 0.0, 0))
    assert none["p_wilcoxon"] > 0.05 and none["ci_low"] < 0 < none["ci_high"]
    assert 0.35 < none["win_rate"] < 0.65


def test_identical_arms_differ_by_exactly_nothing():
    a = np.random.default_rng(0).lognormal(size=50)
    r = paired_stats(a, a.copy())
    assert (r["mean_diff"], r["ci_low"], r["ci_high"]) == (0.0, 0.0, 0.0)
    assert (r["rel_change"], r["rel_ci_low"], r["rel_ci_high"]) == (0.0, 0.0, 0.0)
    assert (r["p_wilcoxon"], r["win_rate"], r["ties"]) == (1.0, 0.5, 50)


def test_wins_ties_relative_change_and_undefined_pairs():
    r = paired_stats([1.0, 2.0, 3.0, 4.0, np.nan], [0.0, 2.0, 5.0, 3.0, 1.0])
    assert (r["n"], r["wins"], r["ties"], r["losses"]) == (4, 2, 1, 1)
    assert r["win_rate"] == 0.625 and r["mean_diff"] == 0.0
    doubled = paired_stats([1.0, 1.0, 2.0], [2.0, 2.0, 4.0])
    assert doubled["rel_change"] == doubled["rel_ci_low"] == doubled["rel_ci_high"] == 1.0
    assert paired_stats([0.0, 0.0], [1.0, 2.0])["rel_change"] is None  # a zero reference mean


def test_the_same_seed_gives_the_same_interval():
    a, b = shifted(40, 0.1, 3)
    assert paired_stats(a, b, seed=7) == paired_stats(a, b, seed=7)
    assert paired_stats(a, b, seed=7)["ci_low"] != paired_stats(a, b, seed=8)["ci_low"]


@pytest.mark.parametrize(
    "a, b, match",
    [([1.0, 2.0], [1.0], "one length"), ([[1.0]], [[1.0]], "1-D"), ([np.nan], [1.0], "finite")],
)
def test_bad_paired_inputs_are_refused(a, b, match):
    with pytest.raises(ValueError, match=match):
        paired_stats(a, b)


# ---- datasets -----------------------------------------------------------------------------------


def test_a_long_table_splits_off_the_last_horizon_of_each_series(tmp_path):
    (tmp_path / "toy.csv").write_text(
        "id,timestamp,target\n" + "".join(f"s{k},t{i},{10 * k + i}\n" for k in (1, 2)
                                          for i in range(9))
    )  # fmt: skip
    d = evd.load_dataset("toy:3:2", tmp_path)
    assert d.ids == ["s1", "s2"] and d.seasonality == 2
    np.testing.assert_array_equal(d.test, [[16, 17, 18], [26, 27, 28]])
    np.testing.assert_array_equal(d.train[1], np.arange(20, 26))
    with pytest.raises(ValueError, match="needs more than 5"):
        evd.load_dataset("toy:5:4", tmp_path)  # 9 values: history shorter than a season


def test_a_wide_table_is_one_series_per_column_and_found_by_auto(tmp_path):
    write_csv(tmp_path / "ETTh1.csv", n=200)
    d = evd.load_dataset("etth1", tmp_path)
    assert d.name == "ETTh1" and d.ids == ["a", "b", "c"] and d.test.shape == (3, 24)
    assert [len(s) for s in d.train] == [176] * 3 and d.seasonality == 24
    assert evd.auto_datasets(tmp_path) == ["m4_hourly", "ETTh1"]
    assert evd.auto_datasets(None) == ["m4_hourly"]  # the vendored ETTh1 is not picked up


@pytest.mark.parametrize("item, match", [("nope", "unknown dataset"), ("x:3", "HORIZON"),
                                         ("x:0:1", "positive")])  # fmt: skip
def test_bad_dataset_names_say_what_is_expected(item, match):
    with pytest.raises(ValueError, match=match):
        evd.load_dataset(item)


# ---- arms and scores ----------------------------------------------------------------------------


class FakePipe:
    """``predict`` = last value + key noise (``keyed``) or the last value (not keyed); records
    the keys it was called with."""

    model_context_length = 64

    def __init__(self, keyed=True, scale=1.0):
        self.keyed, self.scale, self.keys = keyed, scale, []

    def predict(self, ctx, h, num_samples, key):
        self.keys.append(jax.random.key_data(key).tolist())
        noise = (
            jax.random.normal(key, (1, num_samples, h))
            if self.keyed
            else np.zeros((1, num_samples, h))
        )
        return np.asarray(ctx[-1] + self.scale * noise, np.float32)  # [1, S, H]


def tiny_dataset(n=5):
    rng = np.random.default_rng(0)
    series = {
        f"s{i}": (10 + np.sin(np.arange(100) / 3) + rng.normal(0, 0.2, 100)) for i in range(n)
    }
    return evd._split_last("tiny", series, 8, 4, "memory")


def test_arms_share_keys_per_series_and_the_noise_floor_uses_others():
    data = tiny_dataset()
    base, head = FakePipe(), FakePipe()
    res = evd.evaluate({"base": base, "head": head}, [data], num_samples=8, progress=False)
    assert head.keys == base.keys[:5] and base.keys[5:] != base.keys[:5]
    assert len({str(k) for k in base.keys}) == 10  # every series and arm a key of its own
    rows = {(r["arm"], r["metric"]): r for r in res["summary"]}
    for metric in evd.METRICS:
        assert rows[("head", metric)]["mean_diff"] == 0.0  # same model, same keys
        assert rows[("noise", metric)]["mean_diff"] != 0.0  # same model, other keys
    # a series' forecast does not depend on which other series are evaluated
    few = evd.evaluate({"base": FakePipe(), "head": FakePipe()}, [data.head(2)], num_samples=8,
                       progress=False)  # fmt: skip
    for m in evd.METRICS:
        np.testing.assert_array_equal(few["per_series"]["tiny"]["noise"][m],
                                      res["per_series"]["tiny"]["noise"][m][:2])  # fmt: skip


def test_a_noise_floor_of_identical_forecasts_is_zero_and_a_worse_head_loses():
    res = evd.evaluate({"base": FakePipe(keyed=False), "head": FakePipe(scale=20.0)},
                       [tiny_dataset()], num_samples=8, progress=False)  # fmt: skip
    rows = {(r["arm"], r["metric"]): r for r in res["summary"]}
    noise = rows[("noise", "WQL")]
    assert (noise["mean_diff"], noise["ci_low"], noise["ci_high"], noise["p_wilcoxon"]) == (
        0.0, 0.0, 0.0, 1.0)  # fmt: skip
    assert rows[("head", "WQL")]["win_rate"] == 0.0 and rows[("head", "WQL")]["ci_low"] > 0


def test_scores_on_a_hand_made_forecast():
    data = evd._split_last("h", {"x": np.array([0, 1, 0, 3, 1, 2], np.float32)}, 2, 1, "memory")
    q = np.full((1, 2, len(evd.QUANTILES)), 2.0, np.float32)  # every quantile 2; truth [1, 2]
    s = {k: float(v[0]) for k, v in evd.score(data, q).items()}
    assert s["MAE"] == 0.5 and s["RMSE"] == pytest.approx(np.sqrt(0.5)) and s["MAPE"] == 50.0
    assert s["MASE"] == pytest.approx(0.5 / (5 / 3))  # lag-1 naive MAE of [0, 1, 0, 3]: 5/3
    # WQL: 2 * pinball of 2 vs 1 at each level, / sum |y| = 3, averaged over the levels
    assert s["WQL"] == pytest.approx(np.mean([2 * (1 - q) for q in evd.QUANTILES]) / 3)


def test_non_finite_forecasts_name_their_arm():
    class NaNPipe(FakePipe):
        def predict(self, *a, **k):
            return np.full_like(super().predict(*a, **k), np.nan)

    with pytest.raises(NonFiniteForecast, match="tiny 's0'") as e:
        evd.evaluate({"base": FakePipe(), "head": NaNPipe()}, [tiny_dataset()], progress=False)
    assert e.value.role == "head"


# ---- the command line on tiny random models -----------------------------------------------------

TINY_CHRONOS = ChronosT5Config(
    t5=T5Config(vocab_size=64, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_decoder_layers=1,
                num_heads=2),
    chronos=ChronosConfig(n_tokens=64, context_length=32, prediction_length=48),
)  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from jaxts.models.distance_head import DistanceHead, DistanceHeadConfig

    root = tmp_path_factory.mktemp("distance_head")
    head_cfg = DistanceHeadConfig(hidden_size=8, num_bins=64)
    (root / "data").mkdir()
    write_csv(root / "data" / "ETTh1.csv", n=120)
    return {
        "root": root,
        "base": save_model(ChronosT5(TINY_CHRONOS, rngs=nnx.Rngs(0)), root / "base"),
        "head": save_model(DistanceHead(head_cfg, rngs=nnx.Rngs(1)), root / "head"),
        "control": save_model(DistanceHead(head_cfg, rngs=nnx.Rngs(2)), root / "control"),
        "other": save_model(DistanceHead(DistanceHeadConfig(16, 64), rngs=nnx.Rngs(3)), root / "o"),
    }


def cli_args(models, out, *extra):
    return ["--base", str(models["base"]), "--head", str(models["head"]), "--control",
            str(models["control"]), "--data-dir", str(models["root"] / "data"), "--max-series",
            "4", "--num-samples", "4", "--n-bootstrap", "200", "--no-progress", "--out",
            str(out), *extra]  # fmt: skip


def test_the_command_line_end_to_end(models, tmp_path, capsys):
    out = tmp_path / "out"
    assert evd.main(cli_args(models, out)) == 0
    printed = capsys.readouterr().out
    assert "noise floor" in printed and "head vs control" in printed
    res = json.loads((out / "results.json").read_text())
    assert list(res["datasets"]) == ["m4_hourly", "ETTh1"]  # auto: ETTh1 is in --data-dir
    assert len(res["per_series"]) == 4 + 3 and set(res["per_series"][0]) >= {
        "base", "head", "control", "noise"}  # fmt: skip
    groups = {(r["dataset"], r["arm"], r["reference"]) for r in res["summary"]}
    assert ("all", "head", "control") in groups and ("ETTh1", "noise", "base") in groups
    assert (out / "differences.png").stat().st_size > 10_000
    assert len((out / "per_series.csv").read_text().splitlines()) == 1 + 4 + 3
    # a rerun keeps the results unless forced
    assert evd.main(cli_args(models, out)) == 2
    assert "already holds results" in capsys.readouterr().err
    assert evd.main(cli_args(models, out, "--force", "--datasets", "m4_hourly")) == 0


def test_non_finite_head_forecasts_are_one_line_naming_the_head(models, tmp_path, capsys,
                                                                monkeypatch):  # fmt: skip
    from jaxts.pipelines.distance_aware_chronos import DistanceAwareChronosPipeline

    real = DistanceAwareChronosPipeline.predict
    monkeypatch.setattr(DistanceAwareChronosPipeline, "predict",
                        lambda *a, **k: real(*a, **k) * np.nan)  # fmt: skip
    assert evd.main(cli_args(models, tmp_path / "out", "--datasets", "m4_hourly")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {models['head']} (head arm)"), err


def test_a_head_made_for_another_base_is_one_line_naming_it(models, tmp_path, capsys):
    args = cli_args(models, tmp_path / "out")
    args[args.index("--control") + 1] = str(models["other"])  # hidden_size 16, the base has 8
    assert evd.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --control {models['other']}: head hidden_size 16 != Chronos d_model 8"]
