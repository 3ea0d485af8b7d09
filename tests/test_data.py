"""Tests of the data pipeline (jaxts.data) against the OpenLTM protocol.

Core tests use only the vendored ETTh1 and synthetic CSVs under tmp_path; only the weather test
needs ../shared/data and is skipped without it.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from jaxts.data import (
    DataError,
    NextPatchWindows,
    forecast_windows,
    load_split,
    read_table,
    resolve_path,
    scaler_stats,
    split_borders,
)
from jaxts.data._paths import SHARED_DIR, VENDOR_DIR

ETTH1 = VENDOR_DIR / "ETTh1.csv"
ETTH1_SHA256 = "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066"


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    # A developer's $JAXTS_DATA_DIR must not change which files the tests see.
    monkeypatch.delenv("JAXTS_DATA_DIR", raising=False)


@pytest.fixture(scope="module")
def etth1_raw() -> np.ndarray:
    """ETTh1 parsed independently of pandas (numpy text parser), float64 [17420, 7]."""
    return np.loadtxt(ETTH1, delimiter=",", skiprows=1, usecols=range(1, 8), dtype=np.float64)


def _write_csv(path: Path, values: np.ndarray, *, date: bool = True) -> Path:
    cols = [f"v{i}" for i in range(values.shape[1])]
    lines = [",".join((["date"] if date else []) + cols)]
    for t, row in enumerate(values):
        cells = [repr(float(v)) for v in row]
        lines.append(",".join(([f"2020-01-01 {t:05d}"] if date else []) + cells))
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- vendored file and reading


def test_vendored_etth1_is_byte_identical():
    assert hashlib.sha256(ETTH1.read_bytes()).hexdigest() == ETTH1_SHA256
    assert (VENDOR_DIR / "LICENSE").read_text().startswith("Creative Commons Attribution-NoDeriv")


def test_read_table_drops_date_and_matches_numpy(etth1_raw):
    values, cols = read_table(ETTH1)
    assert cols == ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    assert values.dtype == np.float64 and values.shape == (17420, 7)
    np.testing.assert_allclose(values, etth1_raw, rtol=1e-12, atol=0)


def test_read_table_keeps_numeric_first_column(tmp_path):
    vals = np.arange(12.0).reshape(4, 3)
    values, cols = read_table(_write_csv(tmp_path / "nodate.csv", vals, date=False))
    assert cols == ["v0", "v1", "v2"]
    np.testing.assert_array_equal(values, vals)


def test_gz_equals_plain(tmp_path):
    gz = tmp_path / "ETTh1.csv.gz"
    with open(ETTH1, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    a, ca = read_table(ETTH1)
    b, cb = read_table(gz)
    assert ca == cb
    np.testing.assert_array_equal(a, b)
    # The .gz stem is still "ETTh1", so the fixed ETT borders apply.
    np.testing.assert_array_equal(load_split(gz, "test", 96), load_split(ETTH1, "test", 96))


def test_crlf_and_bad_header_bytes(tmp_path):
    # weather.csv quirks: CRLF, a non-UTF-8 byte in the header, a repeated timestamp.
    raw = (
        b"date,SWDR (W/m\xb2),OT\r\n"
        b"2020-05-12 05:50:00,1.5,2.0\r\n"
        b"2020-05-12 06:00:00,2.5,3.0\r\n"
        b"2020-05-12 06:00:00,3.5,4.0\r\n"
    )
    p = tmp_path / "w.csv"
    p.write_bytes(raw)
    values, cols = read_table(p)
    assert cols == ["SWDR (W/m\ufffd)", "OT"]
    # The repeated row is kept, not dropped or merged.
    np.testing.assert_array_equal(values, [[1.5, 2.0], [2.5, 3.0], [3.5, 4.0]])


# ---------------------------------------------------------------- borders


@pytest.mark.parametrize("seq_len", [96, 672])
def test_borders_ett(seq_len):
    for name in ("ETTh1", "ETTh2"):
        b1, b2 = split_borders(name, 17420, seq_len)
        assert b1 == [0, 8640 - seq_len, 11520 - seq_len]
        assert b2 == [8640, 11520, 14400]
    for name in ("ETTm1", "ETTm2"):
        b1, b2 = split_borders(name, 69680, seq_len)
        assert b1 == [0, 34560 - seq_len, 46080 - seq_len]
        assert b2 == [34560, 46080, 57600]


def test_borders_other_70_10_20():
    n, L = 52696, 96  # weather
    b1, b2 = split_borders("weather", n, L)
    num_train, num_test = 36887, 10539  # int(0.7 n), int(0.2 n)
    assert b2 == [num_train, n - num_test, n]
    assert b1 == [0, num_train - L, n - num_test - L]
    # Names are case-sensitive as in OpenLTM: "etth1" is not an ETT file.
    assert split_borders("etth1", 1000, 10)[1] == [700, 800, 1000]


def test_borders_on_synthetic_csv(tmp_path):
    rng = np.random.default_rng(0)
    vals = rng.normal(size=(1003, 2))
    p = _write_csv(tmp_path / "synth.csv", vals)
    L = 20
    num_train, num_test = 702, 200
    num_vali = 1003 - num_train - num_test
    expect = {
        "train": vals[0:num_train],
        "val": vals[num_train - L : num_train + num_vali],
        "test": vals[1003 - num_test - L :],
    }
    for split, rows in expect.items():
        got = load_split(p, split, L, scale=False)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, rows.astype(np.float32))


def test_borders_errors():
    with pytest.raises(DataError, match="longer than the train split"):
        split_borders("ETTh1", 17420, 9000)
    with pytest.raises(DataError, match="longer than the train split"):
        split_borders("synth", 100, 71)
    with pytest.raises(DataError, match="14400 rows"):
        split_borders("ETTh1", 14000, 96)


# ---------------------------------------------------------------- scaler


def test_scaler_fitted_on_train_rows_only(etth1_raw):
    mean, std = scaler_stats(ETTH1, 96)
    train = etth1_raw[:8640]
    np.testing.assert_allclose(mean, train.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, train.std(0, ddof=0), rtol=1e-12)
    # Not the statistics of the whole file (that would leak test data).
    assert not np.allclose(mean, etth1_raw.mean(0), rtol=1e-3)
    scaled = (etth1_raw - train.mean(0)) / train.std(0)
    for split, (a, b) in {"train": (0, 8640), "test": (11520 - 96, 14400)}.items():
        got = load_split(ETTH1, split, 96)
        assert got.dtype == np.float32 and got.shape == (b - a, 7)
        np.testing.assert_allclose(got, scaled[a:b], rtol=1e-6, atol=1e-6)
    # The train split is standardised; seq_len does not change the scaler.
    np.testing.assert_allclose(load_split(ETTH1, "train", 96).mean(0), 0, atol=1e-5)
    np.testing.assert_array_equal(scaler_stats(ETTH1, 672)[0], mean)


def test_scaler_constant_column(tmp_path):
    vals = np.stack([np.full(100, 0.1), np.arange(100.0)], axis=1)
    p = _write_csv(tmp_path / "const.csv", vals)
    mean, std = scaler_stats(p, 5)
    assert std[0] == 1.0  # sklearn: constant column -> scale 1
    np.testing.assert_allclose(load_split(p, "test", 5)[:, 0], 0.0, atol=1e-12)


# ---------------------------------------------------------------- windows


def test_forecast_windows_etth1_test():
    x, y = forecast_windows(ETTH1, "test", 672, 96)
    assert x.shape == (2785, 672, 7) and y.shape == (2785, 96, 7)
    assert x.dtype == np.float32 and y.dtype == np.float32
    rows = load_split(ETTH1, "test", 672)  # [2880 + 672, 7]
    assert rows.shape == (14400 - 11520 + 672, 7)
    for s in (0, 1, 1234, 2784):
        np.testing.assert_array_equal(x[s], rows[s : s + 672])
        np.testing.assert_array_equal(y[s], rows[s + 672 : s + 768])
    # The last target ends exactly at the test border.
    np.testing.assert_array_equal(y[-1, -1], rows[-1])


def test_forecast_windows_by_name_and_data_dir(tmp_path):
    sub = tmp_path / "ETT-small"
    sub.mkdir()
    shutil.copy(ETTH1, sub / "ETTh1.csv")
    x1, y1 = forecast_windows("ETTh1", "val", 96, 24, data_dir=tmp_path)
    x2, _ = forecast_windows(ETTH1, "val", 96, 24)
    assert x1.shape == (2880 + 96 - 96 - 24 + 1, 96, 7)
    np.testing.assert_array_equal(x1, x2)


def _naive_next_patch(rows, s, L, P, P_out):
    ys = [rows[s + (n + 1) * P : s + (n + 1) * P + P_out] for n in range(L // P)]
    return rows[s : s + L], np.concatenate(ys, axis=0)


@pytest.mark.parametrize("P,P_out", [(4, 4), (4, 6), (6, 3)])
def test_next_patch_windows_layout(P, P_out):
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(60, 3)).astype(np.float32)
    L = 12
    ds = NextPatchWindows(rows, L, P, P_out)
    assert len(ds) == 60 - L - P_out + 1
    idx = np.array([0, 5, len(ds) - 1, 5])
    x, y = ds.batch(idx)
    assert x.shape == (4, L, 3) and y.shape == (4, (L // P) * P_out, 3)
    assert x.dtype == np.float32 and y.dtype == np.float32
    for b, s in enumerate(idx):
        xe, ye = _naive_next_patch(rows, s, L, P, P_out)
        np.testing.assert_array_equal(x[b], xe)
        np.testing.assert_array_equal(y[b], ye)
    xl, yl = ds.last_patch(idx)
    np.testing.assert_array_equal(xl, x)
    assert yl.shape == (4, P_out, 3)
    np.testing.assert_array_equal(yl, y[:, -P_out:])
    for b, s in enumerate(idx):
        np.testing.assert_array_equal(yl[b], rows[s + L : s + L + P_out])


def test_next_patch_windows_on_etth1_train():
    rows = load_split(ETTH1, "train", 672)
    ds = NextPatchWindows(rows, 672, 96, 96)
    assert len(ds) == 8640 - 672 - 96 + 1
    _, y = ds.batch(np.array([len(ds) - 1]))
    np.testing.assert_array_equal(y[0, -1], rows[-1])  # last target = last train row


def test_next_patch_windows_errors():
    rows = np.zeros((50, 2), np.float32)
    with pytest.raises(DataError, match="not a multiple"):
        NextPatchWindows(rows, 10, 4, 4)
    with pytest.raises(DataError, match="no window fits"):
        NextPatchWindows(rows, 48, 4, 4)
    ds = NextPatchWindows(rows, 8, 4, 4)
    with pytest.raises(DataError, match="out of range"):
        ds.batch(np.array([-1]))
    with pytest.raises(DataError, match="out of range"):
        ds.batch(np.array([len(ds)]))


def test_seq_len_larger_than_split(tmp_path):
    p = _write_csv(tmp_path / "small.csv", np.random.default_rng(2).normal(size=(200, 2)))
    # test split: 40 + L rows; window needs L + 50 -> none fits.
    with pytest.raises(ValueError, match=r"90 rows, seq_len=50 \+ output_len=50"):
        forecast_windows(p, "test", 50, 50)
    with pytest.raises(DataError, match="longer than the train split"):
        load_split(p, "train", 150)


# ---------------------------------------------------------------- errors


def test_missing_file_lists_searched_places(tmp_path, monkeypatch):
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    monkeypatch.setenv("JAXTS_DATA_DIR", str(env_dir))
    with pytest.raises(DataError) as e:
        resolve_path("no_such_set", data_dir=tmp_path / "dd")
    msg = str(e.value)
    for place in (tmp_path / "dd", tmp_path / "dd" / "ETT-small", env_dir / "weather", VENDOR_DIR):
        assert str(place) in msg
    assert str(SHARED_DIR) in msg and "no_such_set.csv.gz" in msg
    with pytest.raises(DataError, match="no such file"):
        forecast_windows(tmp_path / "missing" / "ETTh1.csv", "test", 96, 96)


def test_resolve_order(tmp_path, monkeypatch):
    assert resolve_path("ETTh1") == VENDOR_DIR / "ETTh1.csv"  # vendored before ../shared
    env_dir = tmp_path / "env"
    (env_dir / "weather").mkdir(parents=True)
    (env_dir / "weather" / "ETTh1.csv.gz").write_bytes(gzip.compress(ETTH1.read_bytes()))
    monkeypatch.setenv("JAXTS_DATA_DIR", str(env_dir))
    assert resolve_path("ETTh1") == env_dir / "weather" / "ETTh1.csv.gz"
    (tmp_path / "ETTh1.csv").write_bytes(ETTH1.read_bytes())
    assert resolve_path("ETTh1.csv", data_dir=tmp_path) == tmp_path / "ETTh1.csv"
    assert resolve_path(ETTH1) == ETTH1


def test_no_numeric_columns(tmp_path):
    p = tmp_path / "dates.csv"
    p.write_text("date\n2020-01-01\n2020-01-02\n")
    with pytest.raises(DataError, match="no numeric columns"):
        read_table(p)
    q = tmp_path / "text.csv"
    q.write_text("date,a\n2020-01-01,1.0\n2020-01-02,oops\n")
    with pytest.raises(DataError, match=r"'a' is not numeric.*'oops' at row 1"):
        read_table(q)


@pytest.mark.parametrize("bad,kind", [("", "NaN"), ("nan", "NaN"), ("inf", "inf"), ("-inf", "inf")])
def test_nan_inf_rejected(tmp_path, bad, kind):
    p = tmp_path / "bad.csv"
    p.write_text(f"date,a,b\nd0,1.0,2.0\nd1,3.0,4.0\nd2,5.0,{bad}\nd3,{bad},1.0\n")
    with pytest.raises(DataError, match=rf"column 'b' has a {kind}.* at row 2 \(file line 4\)"):
        read_table(p)


def test_split_name_error():
    with pytest.raises(DataError, match="split must be one of"):
        load_split(ETTH1, "valid", 96)


# ---------------------------------------------------------------- extra datasets (optional)

WEATHER = SHARED_DIR / "weather" / "weather.csv.gz"


@pytest.mark.skipif(not WEATHER.is_file(), reason="needs ../shared/data/weather")
def test_weather_quirks_kept():
    values, cols = read_table(WEATHER)
    # No rows dropped (repeated timestamp kept, gap not filled), date column dropped.
    assert values.shape == (52696, 21) and cols[-1] == "OT"
    assert any("\ufffd" in c for c in cols)
    x, y = forecast_windows(WEATHER, "test", 96, 96)
    assert x.shape == (10539 + 96 - 96 - 96 + 1, 96, 21)
