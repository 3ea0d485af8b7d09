"""The distance-aware head against the PyTorch reference of upstream's layer (float32), its
wiring into Chronos-T5 sampling (greedy forecasts == argmax of teacher-forced head logits, in
both token spaces) and the pipeline."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from bridges._mapping import load_torch_state
from bridges.distance_head import RULES
from bridges.reference import distance_head_torch as ref
from bridges.reference.chronos_t5_hf import chronos_config, tiny_hf_chronos
from jaxts.checkpoint import dotted, flatten, load_model, save_model
from jaxts.models.chronos_t5 import ChronosT5, ChronosT5Config, sample_tokens
from jaxts.models.chronos_tokenizer import ChronosConfig
from jaxts.models.distance_head import (
    DistanceAwareChronos,
    DistanceAwareOutputLayer,
    DistanceHead,
    DistanceHeadConfig,
)
from jaxts.models.t5 import T5Config
from jaxts.pipelines.chronos_t5 import ChronosT5Pipeline
from jaxts.pipelines.distance_aware_chronos import (
    DistanceAwareChronosPipeline,
    upstream_detokenize,
    upstream_tokenize,
)
from tests.helpers import LAYER_TOL


def torch_layer(hidden: int, bins: int, seed: int = 0) -> ref.DistanceAwareOutputLayer:
    """The reference with every parameter random (widths kept away from 0)."""
    torch.manual_seed(seed)
    layer = ref.DistanceAwareOutputLayer(hidden, bins).eval()
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(0.5 + torch.rand_like(p) if name == "gaussian_widths" else torch.randn_like(p))
    return layer


def flax_twin(layer: ref.DistanceAwareOutputLayer) -> DistanceAwareOutputLayer:
    ours = DistanceAwareOutputLayer(layer.hidden_size, layer.num_bins, rngs=nnx.Rngs(1))
    state = {k: v.numpy() for k, v in layer.state_dict().items()}
    return load_torch_state(ours, state, RULES)


# ---- the layer ----------------------------------------------------------------------------


def test_parameter_names_and_shapes_are_the_contracts():
    layer = DistanceAwareOutputLayer(16, 64, rngs=nnx.Rngs(0))
    shapes = {
        dotted(p): tuple(v.shape)
        for p, v in flatten(nnx.to_pure_dict(nnx.state(layer, nnx.Param))).items()
    }
    assert shapes == {
        "gaussian_centers": (1, 64),
        "gaussian_widths": (64,),
        "ordinal_embed.embedding": (64, 64),
        "value_projection.kernel": (16, 1),
        "value_projection.bias": (1,),
        "confidence_projection.kernel": (16, 1),
        "confidence_projection.bias": (1,),
        "mix_layer.0.kernel": (16 + 65, 16),
        "mix_layer.0.bias": (16,),
        "mix_layer.3.kernel": (16, 64),
        "mix_layer.3.bias": (64,),
    }


@pytest.mark.parametrize("bins", [64, 4096])
def test_fixed_initialisation_is_upstreams_bit_for_bit(bins):
    """linspace centers (torch's float32 bits), widths 0.5, the sin/cos ordinal table."""
    torch.manual_seed(0)
    want = ref.DistanceAwareOutputLayer(8, bins).state_dict()
    ours = DistanceAwareOutputLayer(8, bins, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(ours.gaussian_centers[...], want["gaussian_centers"].numpy())
    np.testing.assert_array_equal(ours.gaussian_widths[...], want["gaussian_widths"].numpy())
    np.testing.assert_array_equal(
        ours.ordinal_embed.embedding[...], want["ordinal_embed.weight"].numpy()
    )


@pytest.mark.parametrize(
    "hidden, bins, b, s",
    [(32, 64, 2, 5), (16, 4096, 2, 3), (8, 64, 1, 1), (16, 64, 3, 1)],
    ids=["H32-N64", "H16-N4096", "B1-S1", "S1"],
)
@pytest.mark.parametrize("temperature", [1.0, 0.37], ids=["T1", "T0.37"])
def test_layer_matches_reference(hidden, bins, b, s, temperature):
    tl = torch_layer(hidden, bins, seed=hidden + bins)
    ours = flax_twin(tl)
    h = np.random.default_rng(s).standard_normal((b, s, hidden)).astype(np.float32)
    t = torch.tensor([temperature])  # upstream's temperature is a [1] parameter
    with torch.no_grad():
        want = tl(torch.from_numpy(h), t).numpy()
    got = np.asarray(ours(jnp.asarray(h), jnp.float32(temperature)))
    assert got.shape == (b, s, bins)
    np.testing.assert_allclose(got, want, rtol=LAYER_TOL, atol=LAYER_TOL * np.abs(want).max())
    # any leading shape: the sampler calls it on [rows, H] (GEMM blocking differs: not bitwise)
    rows = np.asarray(ours(jnp.asarray(h[:, 0]), temperature))
    np.testing.assert_allclose(
        rows, want[:, 0], rtol=LAYER_TOL, atol=LAYER_TOL * np.abs(want).max()
    )


def test_a_zero_width_stays_finite_as_upstream():
    """Upstream divides by ``2 w^2 + 1e-8``: a width trained to 0 gives large, finite logits."""
    tl = torch_layer(16, 64, seed=3)
    with torch.no_grad():
        tl.gaussian_widths[:8] = 0.0
    ours = flax_twin(tl)
    h = np.random.default_rng(0).standard_normal((2, 3, 16)).astype(np.float32)
    with torch.no_grad():
        want = tl(torch.from_numpy(h)).numpy()
    got = np.asarray(ours(jnp.asarray(h)))
    assert np.isfinite(got).all() and np.isfinite(want).all()
    np.testing.assert_allclose(got, want, rtol=LAYER_TOL, atol=LAYER_TOL * np.abs(want).max())


def test_eval_is_deterministic_and_train_mode_drops_out():
    ours = flax_twin(torch_layer(16, 64))
    h = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 16)), jnp.float32)
    np.testing.assert_array_equal(ours(h), ours(h))
    ours.train()
    assert not np.array_equal(ours(h), ours(h))


def test_wrong_hidden_size_and_bad_config_are_clear_errors():
    layer = DistanceAwareOutputLayer(16, 64, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"end in hidden_size 16, got shape \(2, 3, 8\)"):
        layer(jnp.zeros((2, 3, 8)))
    with pytest.raises(ValueError, match="num_bins must be positive"):
        DistanceHeadConfig(num_bins=0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        DistanceHeadConfig(dropout=1.0)


# ---- the family model: temperature once, checkpoints --------------------------------------


def small_head(hidden=16, bins=64, seed=0) -> DistanceHead:
    head = DistanceHead(DistanceHeadConfig(hidden, bins), rngs=nnx.Rngs(seed))
    head.layer = flax_twin(torch_layer(hidden, bins, seed))
    head.temperature[...] = jnp.float32(0.6)
    head.eval()
    return head


def test_head_divides_by_its_temperature_once():
    head = small_head()
    h = jnp.asarray(np.random.default_rng(1).standard_normal((3, 16)), jnp.float32)
    np.testing.assert_array_equal(head(h), head.layer(h, jnp.float32(0.6)))
    np.testing.assert_allclose(head(h) * 0.6, head.layer(h), rtol=1e-6, atol=1e-5)


def test_save_load_round_trip(tmp_path):
    head = small_head()
    save_model(head, tmp_path / "head")
    loaded = load_model(tmp_path / "head", family="distance_head")
    assert isinstance(loaded, DistanceHead) and loaded.config == head.config
    h = jnp.asarray(np.random.default_rng(2).standard_normal((2, 5, 16)), jnp.float32)
    np.testing.assert_array_equal(loaded(h), head(h))
    assert float(loaded.temperature[...]) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="holds a distance_head checkpoint; expected chronos_t5"):
        load_model(tmp_path / "head", family="chronos_t5")


# ---- wiring into Chronos-T5 ----------------------------------------------------------------

VOCAB = 64
CHRONOS = ChronosConfig(n_tokens=VOCAB, context_length=64, prediction_length=6)
TINY = T5Config(vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4)


def tiny_chronos(seed=0) -> ChronosT5:
    """A random ChronosT5 with weights large enough that the forecasts are not constant."""
    model = ChronosT5(ChronosT5Config(t5=TINY, chronos=CHRONOS), rngs=nnx.Rngs(seed))
    state = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [0.5 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    nnx.update(model, jax.tree.unflatten(tree, leaves))
    model.eval()
    return model


@pytest.fixture(scope="module")
def model():
    return DistanceAwareChronos(tiny_chronos(), small_head(16, VOCAB))


def series_batch():
    rng = np.random.default_rng(0)
    t = np.arange(30)
    return np.stack(
        [5 + np.sin(t / 3 + k) * (k + 1) + 0.3 * rng.standard_normal(30) for k in range(3)]
    )


_forward = nnx.jit(lambda model, ids, mask, dec: model(ids, mask, dec))


def argmax_decode(model, ids, mask, prefix, steps, eos):
    """Greedy forecast without a cache: the teacher-forced model over the decoder input so far
    (a fixed-size buffer, one compiled program: later positions cannot reach earlier ones
    through causal attention), argmax at its last filled position."""
    p = prefix.shape[1]
    dec = np.concatenate([prefix, np.zeros((len(prefix), steps), np.int32)], 1)
    for i in range(steps):
        logits = np.array(_forward(model, ids, mask, jnp.asarray(dec)))[:, p - 1 + i]
        if eos is not None:
            logits[:, eos] = -np.inf
        dec[:, p + i] = logits.argmax(-1)
    return dec[:, p:]  # [B, steps]


def test_greedy_sampling_equals_teacher_forced_argmax(model):
    """Default token space: the cached sampler starts from PAD and never draws EOS."""
    ids, mask, _ = model.base.tokenizer.context_input_transform(series_batch())
    start = np.zeros((3, 1), np.int32)
    want = argmax_decode(model, ids, mask, start, CHRONOS.prediction_length, eos=1)
    got = sample_tokens(
        model, ids, mask, jax.random.key(0), prediction_length=6, num_samples=2,
        temperature=1.0, top_k=1, top_p=1.0,
    )  # fmt: skip
    assert len(np.unique(want)) > 2  # not a constant forecast
    np.testing.assert_array_equal(np.asarray(got), np.repeat(want[:, None], 2, 1))


def test_upstream_compat_greedy_equals_teacher_forced_argmax_and_masks_padding():
    """The context ids are the decoder prefix; the logits at its last position give the first
    token, no id is masked. A left-padded row forecasts as it does alone."""
    model = DistanceAwareChronos(tiny_chronos(), small_head(16, VOCAB), upstream_compat=True)
    x = series_batch()
    ids, mask, _ = upstream_tokenize(x, VOCAB)
    want = argmax_decode(model, ids, mask, ids, 6, eos=None)
    kw = dict(prediction_length=6, num_samples=1, temperature=1.0, top_k=1, top_p=1.0)
    got = sample_tokens(model, ids, mask, jax.random.key(0), decoder_prefix=ids, **kw)
    assert len(np.unique(want)) > 2
    np.testing.assert_array_equal(np.asarray(got)[:, 0], want)
    padded, pad_mask = np.pad(ids, ((0, 0), (7, 0))), np.pad(mask, ((0, 0), (7, 0)))
    got = sample_tokens(
        model, padded, pad_mask, jax.random.key(0), decoder_prefix=padded, prefix_mask=pad_mask,
        **kw,
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(got)[:, 0], want)


def test_head_reads_the_normed_unscaled_hidden_state_and_the_base_is_frozen(model):
    """Chronos' logits are the LM head on the same hidden state; no gradient reaches the T5."""
    ids, mask, _ = model.base.tokenizer.context_input_transform(series_batch())
    dec = jnp.asarray(ids[:, :5])
    t5 = model.t5
    h = t5.decode_hidden(dec, t5.encode(ids, mask), mask)  # [B, 5, D]
    np.testing.assert_array_equal(model(ids, mask, dec), model.head(h))
    np.testing.assert_allclose(
        model.base(ids, mask, dec), h * TINY.d_model**-0.5 @ t5.shared.embedding[...].T,
        rtol=1e-6, atol=1e-6,
    )  # fmt: skip

    def loss(m):
        return jnp.mean(m(ids, mask, dec) ** 2)

    grads = nnx.grad(loss)(model)
    base = jax.tree.leaves(nnx.state(grads.base if hasattr(grads, "base") else grads["base"]))
    assert all(not np.asarray(g).any() for g in base)
    head = jax.tree.leaves(nnx.state(grads.head if hasattr(grads, "head") else grads["head"]))
    assert any(np.asarray(g).any() for g in head)


def test_decode_hidden_is_hf_last_decoder_hidden_state(tmp_path):
    """The hidden state the head reads is HF's ``decoder_hidden_states[-1]``."""
    from bridges.chronos_t5 import from_hf

    tm = tiny_hf_chronos(chronos_config(n_tokens=VOCAB, context_length=64))
    tm.save_pretrained(tmp_path)
    t5 = from_hf(tmp_path).model
    rng = np.random.default_rng(0)
    ids, dec = rng.integers(2, VOCAB, (2, 9)), rng.integers(2, VOCAB, (2, 4))
    with torch.no_grad():
        want = tm(
            input_ids=torch.from_numpy(ids), decoder_input_ids=torch.from_numpy(dec),
            output_hidden_states=True,
        ).decoder_hidden_states[-1].numpy()  # fmt: skip
    mask = np.ones(ids.shape, bool)
    got = t5.decode_hidden(jnp.asarray(dec), t5.encode(jnp.asarray(ids), mask), mask)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_mismatched_head_is_a_clear_error():
    with pytest.raises(ValueError, match="head hidden_size 8 != Chronos d_model 16"):
        DistanceAwareChronos(
            tiny_chronos(), DistanceHead(DistanceHeadConfig(8, VOCAB), rngs=nnx.Rngs(0))
        )
    with pytest.raises(ValueError, match="num_bins 32 != Chronos vocab_size 64"):
        DistanceAwareChronos(
            tiny_chronos(), DistanceHead(DistanceHeadConfig(16, 32), rngs=nnx.Rngs(0))
        )
    with pytest.raises(ValueError, match="must be <= vocab_size 64"):
        DistanceAwareChronos(
            tiny_chronos(), DistanceHead(DistanceHeadConfig(16, 128), rngs=nnx.Rngs(0)),
            upstream_compat=True,
        )  # fmt: skip


# ---- the pipeline --------------------------------------------------------------------------


def test_upstream_tokenizer_is_upstreams():
    x = series_batch().astype(np.float32)
    x[1, 3] = 400.0  # clipped at +15
    ids, mask, scale = upstream_tokenize(x, 4096)
    for row, got in zip(x, ids, strict=True):
        np.testing.assert_array_equal(got, ref.tokenize_time_series(row))
    np.testing.assert_array_equal(scale, [np.abs(r).mean() + np.float32(1e-10) for r in x])
    assert mask.all() and ids[1, 3] == 4095
    values = upstream_detokenize(ids[:, None], scale, 4096)[:, 0]
    for k in range(3):
        np.testing.assert_allclose(values[k], ref.detokenize(ids[k], scale[k]), rtol=1e-6)
    x[0, :4] = np.nan  # missing values: masked, the scale over the observed ones
    ids, mask, scale = upstream_tokenize(x, 4096)
    assert not mask[0, :4].any() and (ids[0, :4] == 0).all()
    np.testing.assert_array_equal(ids[0, 4:], ref.tokenize_time_series(x[0, 4:]))


@pytest.mark.parametrize("name", ["predict", "predict_quantiles"])
def test_pipeline_parameters_are_chronos_pipelines(name):
    ours = inspect.signature(getattr(DistanceAwareChronosPipeline, name)).parameters
    assert list(ours) == list(inspect.signature(getattr(ChronosT5Pipeline, name)).parameters)


@pytest.mark.parametrize("upstream_compat", [False, True], ids=["chronos-ids", "upstream"])
def test_pipeline_greedy_forecast(model, upstream_compat):
    """Greedy values are the argmax tokens' values; a list of unequal series (bucket padding)
    forecasts each series as it is forecast alone; predict_quantiles follows predict."""
    m = DistanceAwareChronos(model.base, model.head, upstream_compat=upstream_compat)
    pipe = DistanceAwareChronosPipeline(m)
    x = series_batch()
    kw = dict(prediction_length=6, num_samples=2, top_k=1)
    got = pipe.predict(x, **kw)
    if upstream_compat:
        ids, mask, scale = upstream_tokenize(x, VOCAB)
        tokens = argmax_decode(m, ids, mask, ids, 6, eos=None)
        want = upstream_detokenize(tokens[:, None], scale, VOCAB)
    else:
        ids, mask, scale = m.base.tokenizer.context_input_transform(x)
        tokens = argmax_decode(m, ids, mask, np.zeros((3, 1), np.int32), 6, eos=1)
        want = m.base.tokenizer.output_transform(tokens[:, None], scale)
    np.testing.assert_array_equal(got, np.repeat(want, 2, 1))
    ragged = [x[0, 10:], x[1], x[2, 25:]]
    batch = pipe.predict(ragged, **kw)
    for k, row in enumerate(ragged):  # same tokens; Chronos' scale of a padded row may differ
        np.testing.assert_allclose(batch[k], pipe.predict(row, **kw)[0], rtol=1e-6)  # by an ulp
    q, mean = pipe.predict_quantiles(x, 6, quantile_levels=[0.5], num_samples=2, top_k=1)
    np.testing.assert_array_equal(q[..., 0], want[:, 0])
    np.testing.assert_array_equal(mean, want[:, 0])


def test_sampled_forecasts_use_the_key(model):
    pipe = DistanceAwareChronosPipeline(model)
    x = series_batch()
    a = pipe.predict(x, 6, num_samples=8, key=jax.random.key(1))
    np.testing.assert_array_equal(a, pipe.predict(x, 6, num_samples=8, key=jax.random.key(1)))
    assert not np.array_equal(a, pipe.predict(x, 6, num_samples=8, key=jax.random.key(2)))
    assert len(np.unique(a[0, :, 0])) > 1


def test_from_pretrained_hf_base_and_jaxts_head(tmp_path):
    tm = tiny_hf_chronos(chronos_config(n_tokens=VOCAB, context_length=64, prediction_length=6))
    tm.save_pretrained(tmp_path / "base")
    head = small_head(tm.config.d_model, VOCAB)
    save_model(head, tmp_path / "head")
    pipe = DistanceAwareChronosPipeline.from_pretrained(tmp_path / "base", tmp_path / "head")
    assert not pipe.model.upstream_compat
    h = jnp.ones((2, tm.config.d_model))
    np.testing.assert_array_equal(pipe.model.head(h), head(h))
    assert pipe.predict(series_batch(), top_k=1).shape == (3, 20, 6)
    with pytest.raises(TypeError, match="expected a DistanceAwareChronos, got ChronosT5"):
        DistanceAwareChronosPipeline(pipe.model.base)
    # upstream's distance_output.pt (no temperature in it: 1.0) through the bridge
    from bridges.distance_head import save_distance_head

    pt = save_distance_head(head.layer, tmp_path / "distance_output.pt")
    pipe = DistanceAwareChronosPipeline.from_pretrained(tmp_path / "base", pt, upstream_compat=True)
    assert pipe.model.upstream_compat and float(pipe.model.head.temperature[...]) == 1.0
    np.testing.assert_array_equal(pipe.model.head(h), head.layer(h))
