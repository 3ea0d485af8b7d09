"""MeanScaleUniformBins: ids, masks and scales bit-identical to chronos-forecasting."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
chronos = pytest.importorskip("chronos")

from chronos.chronos import ChronosConfig as RefConfig  # noqa: E402
from chronos.chronos import MeanScaleUniformBins as RefTokenizer  # noqa: E402

from bridges.reference.chronos_t5_hf import chronos_config  # noqa: E402
from jaxts.models.chronos_tokenizer import (  # noqa: E402
    ChronosConfig,
    MeanScaleUniformBins,
    torch_linspace_f32,
    torch_nansum_f32,
)

BASE = chronos_config()


def pair(**over):
    kw = {**BASE, **over}
    ref_cfg = RefConfig(**kw)
    return RefTokenizer(**kw["tokenizer_kwargs"], config=ref_cfg), MeanScaleUniformBins(
        ChronosConfig(**kw)
    )


def contexts():
    rng = np.random.default_rng(0)
    out = {}
    for n in (1, 5, 7, 8, 9, 31, 100, 511, 512, 513, 600, 1000):
        x = (rng.standard_normal((3, n)) * rng.uniform(0.01, 500) + rng.normal(0, 50)).astype(
            np.float32
        )
        out[f"len{n}"] = x
    holes = rng.standard_normal((4, 300)).astype(np.float32)
    holes[0, :120] = np.nan  # left padding
    holes[1, rng.random(300) < 0.3] = np.nan  # missing values
    holes[2, :-1] = np.nan  # a single observation
    holes[3] = 0.0  # scale 0 -> 1
    out["nan_and_zero"] = holes
    big = np.array([[1e30, -1e30, 1.0, 0.0, 3e5, -2e-30]], np.float32)  # beyond the edge bins
    out["extremes"] = big
    spiky = np.zeros((1, 50), np.float32)
    spiky[0, 10] = 1e6
    out["spiky"] = spiky
    return out


@pytest.mark.parametrize("name", sorted(contexts()))
def test_context_tokens_identical(name):
    ref, ours = pair()
    x = contexts()[name]
    want = ref.context_input_transform(torch.from_numpy(x))
    got = ours.context_input_transform(x)
    for w, g, what in zip(want, got, ("ids", "mask", "scale"), strict=True):
        assert g.shape == tuple(w.shape), what
        np.testing.assert_array_equal(g, w.numpy(), err_msg=what)


def test_label_and_output_transform_identical():
    ref, ours = pair(prediction_length=24)
    rng = np.random.default_rng(3)
    ctx = rng.standard_normal((5, 200)).astype(np.float32) * 7
    label = rng.standard_normal((5, 24)).astype(np.float32) * 9
    label[1, 3:6] = np.nan
    _, _, scale_ref = ref.context_input_transform(torch.from_numpy(ctx))
    _, _, scale = ours.context_input_transform(ctx)
    want = ref.label_input_transform(torch.from_numpy(label), scale_ref)
    got = ours.label_input_transform(label, scale)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(g, w.numpy())
    samples = rng.integers(0, 4096, (5, 7, 24))
    np.testing.assert_array_equal(
        ours.output_transform(samples, scale),
        ref.output_transform(torch.from_numpy(samples), scale_ref).numpy(),
    )


@pytest.mark.parametrize(
    "over",
    [
        dict(n_tokens=4096),
        dict(n_tokens=1024, tokenizer_kwargs={"low_limit": -10.0, "high_limit": 12.5}),
        dict(n_tokens=37, use_eos_token=False, context_length=40),
    ],
)
def test_other_vocabularies(over):
    ref, ours = pair(**over)
    np.testing.assert_array_equal(ours.centers, ref.centers.numpy())
    np.testing.assert_array_equal(ours.boundaries, ref.boundaries.numpy())
    x = np.random.default_rng(1).standard_normal((2, 77)).astype(np.float32) * 4
    for w, g in zip(
        ref.context_input_transform(torch.from_numpy(x)),
        ours.context_input_transform(x),
        strict=True,
    ):
        np.testing.assert_array_equal(g, w.numpy())


@pytest.mark.parametrize("steps", [2, 3, 17, 100, 509, 1021, 4093, 4094])
@pytest.mark.parametrize("lo,hi", [(-15, 15), (-1, 1), (-15.5, 12.25), (0.1, 7.3)])
def test_linspace_bitwise(steps, lo, hi):
    np.testing.assert_array_equal(
        torch_linspace_f32(lo, hi, steps), torch.linspace(lo, hi, steps).numpy()
    )


def test_nansum_bitwise_on_many_lengths():
    """The cascade order matters: a plain float32 sum differs for about a third of these."""
    rng = np.random.default_rng(0)
    lengths = list(range(1, 70)) + [127, 128, 129, 255, 256, 511, 512, 513, 1024, 2048, 3001]
    for n in lengths:
        x = (rng.standard_normal((4, n)) * rng.uniform(0.1, 1000)).astype(np.float32)
        x[0, rng.random(n) < 0.3] = np.nan
        want = torch.nansum(torch.from_numpy(x), dim=-1).numpy()
        np.testing.assert_array_equal(torch_nansum_f32(x), want, err_msg=f"length {n}")


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(tokenizer_class="MeanScaleUniformBinsV2"), "tokenizer_class"),
        (dict(model_type="causal"), "model_type"),
        (dict(tokenizer_kwargs={"low_limit": -1.0}), "tokenizer_kwargs"),
        (dict(tokenizer_kwargs={"low_limit": 1.0, "high_limit": -1.0}), "low_limit"),
        (dict(eos_token_id=2), "special"),
        (dict(context_length=0), "context_length"),
    ],
)
def test_config_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        ChronosConfig(**{**BASE, **bad})
    with pytest.raises(ValueError, match="unknown"):
        ChronosConfig.from_dict({**BASE, "extra_field": 1})


def test_defaults_are_the_published_chronos_config():
    assert ChronosConfig().to_dict() == chronos_config()
