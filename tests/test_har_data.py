"""UCI-HAR loader (jaxts.data.load_har) and its run-level stratified split (split_har)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import jaxts.data._har as har_mod
from jaxts.data import HAR_LABEL_NAMES, DataError, har_paths, load_har, split_har
from jaxts.data._paths import VENDOR_DIR

HAR_SHA256 = {
    "HAR-activity_labels.txt": "fc696f55f4f13b146f2469f6f3d6af41e197103530dcbe10d808dc419ff338ad",
    "HAR-total_acc_x_test.csv.gz": "64eb8e3f7e8dd495800c779cee58e0d15492a13de29d7ce42761a3e6f53d3e13",
    "HAR-total_acc_y_test.csv.gz": "f5948df94e16b78b5483d501ad99e1746a84d5db3cbaa6d1f4ba1ab6f2d8fb11",
    "HAR-total_acc_z_test.csv.gz": "d2aba2adaacd8c3bdf34953476fce7d25a7a6585147256d76328810c7ddbf3e1",
    "HAR-y_test.csv": "58c913d119e52b7a00cac81a89dc8e1d96a6ad8a8fd22ae546d31d6074091bdf",
}
# Per-class window counts of the UCI HAR test split (labels 1..6).
HAR_COUNTS = [496, 471, 420, 491, 532, 537]


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    # A developer's $JAXTS_DATA_DIR must not change which files the tests see.
    monkeypatch.delenv("JAXTS_DATA_DIR", raising=False)


def test_vendored_har_files_are_byte_identical():
    for name, sha in HAR_SHA256.items():
        assert hashlib.sha256((VENDOR_DIR / name).read_bytes()).hexdigest() == sha


def test_load_har_shapes_labels_and_units():
    d = load_har()
    assert d.windows.shape == (2947, 128, 3) and d.windows.dtype == np.float32
    assert d.labels.shape == (2947,) and d.labels.min() == 0 and d.labels.max() == 5
    assert np.bincount(d.labels).tolist() == HAR_COUNTS
    assert d.label_names == HAR_LABEL_NAMES and d.label_names[5] == "laying"
    assert np.array_equal(d.index, np.arange(2947))
    # Total acceleration in g: the gravity vector's norm averages about 1 g per window.
    norm = np.linalg.norm(d.windows.astype(np.float64), axis=-1).mean(axis=1)
    assert 0.9 < np.median(norm) < 1.1
    # First value of the x file, as written there.
    assert d.windows[0, 0, 0] == np.float32(1.0412)
    assert not d.windows.flags.writeable  # the cached parse cannot be corrupted by a caller


def test_vendored_used_when_shared_is_absent(monkeypatch, tmp_path):
    monkeypatch.setattr(har_mod, "SHARED_DIR", tmp_path / "no-shared")
    paths = har_paths(None)
    assert all(p.parent == VENDOR_DIR and p.name.startswith("HAR-") for p in paths.values())
    assert len(load_har(None)) == 2947


def test_missing_data_dir_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="nope.*not a folder"):
        load_har(missing)


def test_nothing_found_names_the_folders(monkeypatch, tmp_path):
    monkeypatch.setattr(har_mod, "VENDOR_DIR", tmp_path / "no-vendor")
    monkeypatch.setattr(har_mod, "SHARED_DIR", tmp_path / "no-shared")
    with pytest.raises(DataError, match=r"(?s)UCI HAR not found.*\[data_dir\].*--data-dir"):
        har_paths(tmp_path)


def _write_tiny_har(folder, *, rows=4, prefix="", bad=None):
    """A synthetic HAR folder: ``rows`` windows of N(0, 1) values, labels cycling 1..6, the
    labels file in the UCI "ID NAME" form; ``bad`` plants one defect."""
    import gzip

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    axes = rng.normal(size=(3, rows, 128)).round(4)
    if bad == "nan":
        axes[1, 2, 5] = np.nan
    for a, name in zip(axes, "xyz", strict=True):
        text = "\n".join(",".join(repr(float(v)) for v in row) for row in a) + "\n"
        if bad == "width" and name == "z":
            text = "1,2,3\n" * rows
        with gzip.open(folder / f"{prefix}total_acc_{name}_test.csv.gz", "wt") as f:
            f.write(text.replace("nan", ""))
    y = [str(i % 6 + 1) for i in range(rows)]
    if bad == "label":
        y[0] = "7"
    (folder / f"{prefix}y_test.csv").write_text("\n".join(y) + "\n")
    names = [f"{i + 1} {n.upper()}" for i, n in enumerate(HAR_LABEL_NAMES)]  # UCI "ID NAME" form
    (folder / f"{prefix}activity_labels.txt").write_text("\n".join(names) + "\n")
    return axes


@pytest.mark.parametrize("layout", ["flat", "HAR", "prefixed"])
def test_data_dir_layouts(tmp_path, layout):
    folder = tmp_path / "HAR" if layout == "HAR" else tmp_path
    axes = _write_tiny_har(folder, prefix="HAR-" if layout == "prefixed" else "")
    d = load_har(tmp_path)
    assert d.windows.shape == (4, 128, 3) and d.labels.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(d.windows, np.moveaxis(axes, 0, -1).astype(np.float32))
    assert d.label_names == HAR_LABEL_NAMES


@pytest.mark.parametrize(
    ("bad", "match"),
    [("nan", "NaN/inf/empty value in row 2"), ("width", "128 columns"), ("label", "1..6")],
)
def test_malformed_files(tmp_path, bad, match):
    _write_tiny_har(tmp_path, bad=bad)
    with pytest.raises(DataError, match=match):
        load_har(tmp_path)


def test_split_disjoint_stratified_and_run_level():
    d = load_har()
    ver, ev = split_har(d, seed=0)
    assert len(ver) + len(ev) == len(d)
    assert set(ver.index.tolist()).isdisjoint(ev.index.tolist())
    np.testing.assert_array_equal(ver.windows, d.windows[ver.index])
    np.testing.assert_array_equal(ev.labels, d.labels[ev.index])
    for c, total in enumerate(HAR_COUNTS):
        a, b = int((ver.labels == c).sum()), int((ev.labels == c).sum())
        assert a + b == total and abs(a - b) <= 31, (c, a, b)  # 31 = the longest run
    # Adjacent windows with the same label overlap by 50%: never on different halves.
    half = np.zeros(len(d), int)
    half[ev.index] = 1
    same = d.labels[1:] == d.labels[:-1]
    assert np.all(half[1:][same] == half[:-1][same])
    # Fixed seed: reproducible; another seed: another split.
    ver2, _ = split_har(d, seed=0)
    assert np.array_equal(ver.index, ver2.index)
    assert not np.array_equal(ver.index, split_har(d, seed=1)[0].index)
