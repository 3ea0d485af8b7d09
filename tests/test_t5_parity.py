"""T5 parity against HF transformers' PyTorch T5 (float32): layers first, then whole models."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from transformers.models.t5 import modeling_t5  # noqa: E402

from bridges._mapping import dotted, flatten, unflatten  # noqa: E402
from jaxts.layers.norms import RMSNorm  # noqa: E402
from jaxts.layers.relative_position import relative_position_bucket  # noqa: E402
from jaxts.models.t5 import T5Config, T5EncoderDecoder  # noqa: E402

LAYER_TOL = 1e-5
MODEL_TOL = 1e-4

CONFIGS = {
    # chronos-t5-mini-like: inner dim (heads * d_kv) != d_model
    "inner_ne_d_model": dict(d_model=24, d_kv=10, d_ff=40, num_layers=2, num_heads=3),
    "decoder_deeper": dict(
        d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=3, num_heads=2
    ),
    "gated_gelu": dict(
        d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu"
    ),
    "few_buckets": dict(
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=12,
    ),
}


def hf_model(seed: int = 0, **kw):
    torch.manual_seed(seed)
    cfg = transformers.T5Config(vocab_size=50, decoder_start_token_id=0, **kw)
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.4)
    return model


def jax_twin(tm, **overrides) -> T5EncoderDecoder:
    """The jaxts model with the HF model's weights (``overrides``: extra T5Config fields)."""
    hc = tm.config
    cfg = T5Config(
        vocab_size=hc.vocab_size,
        d_model=hc.d_model,
        d_kv=hc.d_kv,
        d_ff=hc.d_ff,
        num_layers=hc.num_layers,
        num_decoder_layers=hc.num_decoder_layers,
        num_heads=hc.num_heads,
        relative_attention_num_buckets=hc.relative_attention_num_buckets,
        relative_attention_max_distance=hc.relative_attention_max_distance,
        feed_forward_proj=hc.feed_forward_proj,
        **overrides,
    )
    model = T5EncoderDecoder(cfg, rngs=nnx.Rngs(0))
    model.eval()
    sd = {k: v.numpy() for k, v in tm.state_dict().items()}
    state = nnx.state(model, nnx.Param)
    flat = flatten(nnx.to_pure_dict(state))
    for path in flat:
        key = dotted(path).replace(".kernel", ".weight").replace(".embedding", ".weight")
        flat[path] = sd[key].T if dotted(path).endswith("kernel") else sd[key]
    nnx.replace_by_pure_dict(state, unflatten(flat))
    nnx.update(model, state)
    return model


def inputs(tm, b=3, t=37, n=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, tm.config.vocab_size, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, :11] = 0  # left padding
    mask[-1, 20:25] = 0  # holes (NaN in a Chronos context)
    dec = torch.randint(0, tm.config.vocab_size, (b, n), generator=g)
    return ids, mask, dec


def _j(x):
    return jnp.asarray(x.numpy())


@pytest.mark.parametrize(
    "bidirectional,num_buckets,max_distance",
    [(True, 32, 128), (False, 32, 128), (True, 8, 12), (False, 64, 256), (True, 16, 8)],
)
def test_relative_position_bucket_matches_hf(bidirectional, num_buckets, max_distance):
    rel = torch.arange(-1500, 1501)
    want = modeling_t5.T5Attention._relative_position_bucket(
        rel, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
    ).numpy()
    got = relative_position_bucket(
        rel.numpy(),
        bidirectional=bidirectional,
        num_buckets=num_buckets,
        max_distance=max_distance,
    )
    np.testing.assert_array_equal(got, want)


def test_rms_norm_matches_t5_layer_norm():
    torch.manual_seed(0)
    ref = modeling_t5.T5LayerNorm(24, eps=1e-6)
    with torch.no_grad():
        ref.weight.normal_()
    x = torch.randn(4, 7, 24) * 5
    ours = RMSNorm(24, 1e-6)
    ours.weight[...] = jnp.asarray(ref.weight.detach().numpy())
    got = np.asarray(ours(_j(x)))
    np.testing.assert_allclose(got, ref(x).detach().numpy(), atol=LAYER_TOL, rtol=0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_layers_match_hf(name):
    """Block-0 self-attention (with the bias table) and the feed-forward layer, one by one."""
    tm = hf_model(**CONFIGS[name])
    jm = jax_twin(tm)
    x = torch.randn(2, 13, tm.config.d_model)
    # feed-forward sub-layer (pre-norm, residual)
    ref_ff = tm.encoder.block[0].layer[1]
    got = jm.encoder.block[0].layer[1](_j(x))
    np.testing.assert_allclose(np.asarray(got), ref_ff(x).detach().numpy(), atol=LAYER_TOL)
    # self-attention sub-layer with the position bias computed by that same layer
    ref_sa = tm.encoder.block[0].layer[0]
    with torch.no_grad():
        want = ref_sa(x, attention_mask=None)[0].numpy()
    pos = jnp.arange(13)
    bias = jm.encoder.position_bias(pos, pos)
    got, _ = jm.encoder.block[0].layer[0](_j(x), bias)
    np.testing.assert_allclose(np.asarray(got), want, atol=LAYER_TOL)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_encoder_and_logits_match_hf(name):
    tm = hf_model(**CONFIGS[name])
    jm = jax_twin(tm)
    ids, mask, dec = inputs(tm)
    with torch.no_grad():
        out = tm(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
        enc_ref = tm.encoder(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
    enc = jm.encode(_j(ids), _j(mask).astype(bool))
    keep = mask.numpy().astype(bool)  # padded query rows are never read downstream
    np.testing.assert_allclose(np.asarray(enc)[keep], enc_ref[keep], atol=MODEL_TOL)
    logits = jm.decode(_j(dec), enc, _j(mask).astype(bool))
    np.testing.assert_allclose(np.asarray(logits), out.logits.numpy(), atol=MODEL_TOL)


def test_long_sequence_beyond_max_distance():
    """Distances past relative_attention_max_distance share the last bucket."""
    tm = hf_model(**CONFIGS["few_buckets"])  # max_distance 12
    jm = jax_twin(tm)
    ids, mask, dec = inputs(tm, b=1, t=80, n=30)
    with torch.no_grad():
        want = tm(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits.numpy()
    got = jm(_j(ids), _j(mask).astype(bool), _j(dec))
    np.testing.assert_allclose(np.asarray(got), want, atol=MODEL_TOL)


@pytest.mark.parametrize("name", ["inner_ne_d_model", "decoder_deeper", "gated_gelu"])
def test_cached_decode_equals_teacher_forcing(name):
    """decode_step over the fixed-size cache == the full causal decoder, position by position,
    with S decoder rows per encoded series (the sampler's layout)."""
    tm = hf_model(**CONFIGS[name])
    jm = jax_twin(tm)
    ids, mask, _ = inputs(tm, b=2)
    s, n = 3, 7
    dec = np.random.default_rng(0).integers(0, 50, (2 * s, n))
    enc = jm.encode(_j(ids), _j(mask).astype(bool))
    enc_rep = jnp.repeat(enc, s, axis=0)
    mask_rep = jnp.repeat(_j(mask).astype(bool), s, axis=0)
    full = np.asarray(jm.decode(jnp.asarray(dec), enc_rep, mask_rep))  # [B*S, n, V]
    folded = np.asarray(jm.decode(jnp.asarray(dec), enc, _j(mask).astype(bool)))
    np.testing.assert_allclose(folded, full, atol=LAYER_TOL)
    for kernels in (None, jm.decode_kernels()):  # module kernels, or the [out, in] copies
        cache = jm.init_cache(enc, _j(mask).astype(bool), 2 * s, n + 4)
        steps = []
        for t in range(n):
            logits, cache = jm.decode_step(jnp.asarray(dec[:, t]), cache, kernels)
            steps.append(np.asarray(logits))
        assert int(cache.next_index) == n
        np.testing.assert_allclose(np.stack(steps, 1), full, atol=LAYER_TOL)


def test_untied_head_and_unscaled_output():
    """T5 v1.1 style: separate lm_head, no d_model**-0.5 on the decoder output."""
    tm = hf_model(tie_word_embeddings=False, **CONFIGS["inner_ne_d_model"])
    assert tm.config.scale_decoder_outputs is False
    with torch.no_grad():
        tm.lm_head.weight = torch.nn.Parameter(torch.randn_like(tm.shared.weight))
    jm = jax_twin(tm, tie_word_embeddings=False, scale_decoder_outputs=False)
    ids, mask, dec = inputs(tm)
    with torch.no_grad():
        want = tm(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits.numpy()
    got = jm(_j(ids), _j(mask).astype(bool), _j(dec))
    np.testing.assert_allclose(np.asarray(got), want, atol=MODEL_TOL)


@pytest.mark.parametrize(
    "bad",
    [
        dict(feed_forward_proj="gated-silu"),
        dict(d_model=0),
        dict(num_decoder_layers=0),
        dict(relative_attention_num_buckets=32, relative_attention_max_distance=4),
    ],
)
def test_config_errors(bad):
    with pytest.raises(ValueError):
        T5Config(**bad)
    with pytest.raises(ValueError, match="unknown"):
        T5Config.from_dict({"d_model": 8, "bogus": 1})
