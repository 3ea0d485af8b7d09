"""Timer-XL: Flax vs the PyTorch reference of OpenLTM, layer by layer then whole model."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from bridges.reference import timer_xl_torch as ref
from bridges.timer_xl import from_openltm, to_openltm
from jaxts.layers import masks, rope
from jaxts.models.timer_xl import TimerXLConfig, rolling_forecast
from tests.helpers import LAYER_TOL, MODEL_TOL, etth1_config, series, torch_model

# small config shared by the tests below
BASE = dict(input_token_len=8, output_token_len=8, d_model=32, n_heads=4, d_ff=64)


def pair(cfg: TimerXLConfig, seed: int = 0):
    tm = torch_model(cfg, seed)
    jm = from_openltm(tm.state_dict(), cfg)
    jm.eval()
    return tm, jm


# ------------------------------------------------------------------ layers


@pytest.mark.parametrize("head_dim,n_pos", [(8, 12), (16, 1), (128, 49)])
def test_partial_rope_matches_reference(head_dim, n_pos):
    x = torch.randn(2, 3, n_pos, head_dim)
    qk = ref.QueryKeyProjection(
        dim=head_dim * 3,
        num_heads=3,
        proj_layer=ref.RotaryProjection,
        kwargs=dict(max_len=4),
        partial_factor=(0.0, 0.5),
    )
    seq_id = torch.arange(n_pos).expand(2, 3, -1)
    want, _ = qk(x, x, seq_id, seq_id)
    got = rope.partial_rope(jnp.asarray(x.numpy()), np.arange(n_pos))
    np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=LAYER_TOL, rtol=0)
    # the second half of each head passes through untouched
    np.testing.assert_array_equal(
        np.asarray(got)[..., head_dim // 2 :], x.numpy()[..., head_dim // 2 :]
    )


def test_rope_rotation_is_interleaved():
    x = jnp.arange(8.0)
    np.testing.assert_array_equal(rope.rotate_interleaved(x), [-1, 0, -3, 2, -5, 4, -7, 6])


def test_rope_rejects_odd_rotated_width():
    with pytest.raises(ValueError, match="divisible by 4"):
        TimerXLConfig(d_model=24, n_heads=4)  # head_dim 6 -> rotated width 3


@pytest.mark.parametrize("n_vars,n_tokens", [(1, 5), (3, 4), (7, 7)])
def test_masks_match_reference(n_vars, n_tokens):
    mv = ref.TimerMultivariateMask(1, n_vars, n_tokens).mask[0, 0].numpy()
    cv = ref.TimerCovariateMask(1, n_vars, n_tokens).mask[0, 0].numpy()
    np.testing.assert_array_equal(masks.timer_multivariate_mask(n_vars, n_tokens), mv)
    np.testing.assert_array_equal(masks.timer_covariate_mask(n_vars, n_tokens), cv)


def test_covariate_mask_semantics():
    m = masks.timer_covariate_mask(2, 3)  # variable 0 covariate, variable 1 target
    assert m[0, 1] and not m[1, 0]  # covariate token 1 sees token 0, not token 1 the future
    assert not m[0 + 0, 0] and m[0, 3]  # covariates never see the target
    assert not m[3, 2]  # the target's first token sees the covariate's last token


@pytest.mark.parametrize("n_vars,n_tokens,heads", [(1, 4, 2), (3, 5, 4)])
def test_attention_bias_matches_reference(n_vars, n_tokens, heads):
    tb = ref.BinaryAttentionBias(dim=heads * 4, num_heads=heads)
    var_id = torch.arange(n_vars).repeat_interleave(n_tokens).expand(1, 1, -1)
    want = tb(var_id, var_id)[0].detach().numpy()  # [H, L, S]
    jb = from_openltm_bias(tb.emb.weight.detach().numpy(), heads)
    got = jb(masks.same_variable(n_vars, n_tokens))
    np.testing.assert_array_equal(np.asarray(got), want)


def from_openltm_bias(weight, heads):
    from jaxts.layers.attention_bias import BinaryAttentionBias

    b = BinaryAttentionBias(heads, rngs=nnx.Rngs(0))
    b.emb.embedding[...] = jnp.asarray(weight)
    return b


@pytest.mark.parametrize("covariate", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_timer_layer_matches_reference(covariate, activation):
    cfg = TimerXLConfig(**{**BASE, "activation": activation, "covariate": covariate})
    tm, jm = pair(cfg, seed=3)
    n_vars, n_tokens = 3, 5
    h = torch.randn(2, n_vars * n_tokens, 32)
    with torch.no_grad():
        want, _ = tm.blocks.attn_layers[0](h, n_vars, n_tokens)
    got = jm.blocks.attn_layers[0](jnp.asarray(h.numpy()), n_vars=n_vars, n_tokens=n_tokens)
    np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=LAYER_TOL, rtol=0)


# ------------------------------------------------------------------ whole model

CONFIGS = {
    # name: (config kwargs, batch, context length, variables)
    "c1_norm_relu_1l": (dict(use_norm=True), 2, 48, 1),
    "c3_nonorm_gelu_3l": (dict(use_norm=False, activation="gelu", e_layers=3), 2, 40, 3),
    "c4_cov_norm_1l": (dict(use_norm=True, covariate=True), 3, 32, 4),
    "c2_cov_nonorm_gelu_3l": (dict(covariate=True, activation="gelu", e_layers=3), 1, 56, 2),
    "c5_pout16_norm_3l": (dict(use_norm=True, output_token_len=16, e_layers=3), 2, 32, 5),
    "c1_single_token": (dict(use_norm=True), 2, 8, 1),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_and_rolling_match_reference(name):
    kwargs, b, length, c = CONFIGS[name]
    cfg = TimerXLConfig(**{**BASE, **kwargs})
    tm, jm = pair(cfg, seed=hash(name) % 1000)
    x = series(b, length, c, seed=1)
    with torch.no_grad():
        want = tm(torch.from_numpy(x)).numpy()
    got = np.asarray(jm(x))
    assert got.shape == (b, length // cfg.input_token_len * cfg.output_token_len, c)
    np.testing.assert_allclose(got, want, atol=MODEL_TOL, rtol=0)
    for pred_len in (cfg.output_token_len, 20, 3 * cfg.output_token_len):
        want_r = ref.rolling_forecast(
            tm, torch.from_numpy(x), pred_len, cfg.input_token_len, cfg.output_token_len
        ).numpy()
        got_r = np.asarray(rolling_forecast(jm, x, pred_len))
        assert got_r.shape == (b, pred_len, c)
        np.testing.assert_allclose(got_r, want_r, atol=MODEL_TOL, rtol=0)


def test_etth1_sized_model_matches_reference():
    """OpenLTM's ETTh1 config (d_model 1024, 8 heads, d_ff 2048, 672 = 7 x 96, C = 7)."""
    cfg = etth1_config()
    tm, jm = pair(cfg, seed=7)
    x = series(2, 672, 7, seed=2)
    with torch.no_grad():
        want = tm(torch.from_numpy(x)).numpy()
        want_r = ref.rolling_forecast(tm, torch.from_numpy(x), 192, 96, 96).numpy()
    np.testing.assert_allclose(np.asarray(jm(x)), want, atol=MODEL_TOL, rtol=0)
    np.testing.assert_allclose(
        np.asarray(rolling_forecast(jm, x, 192)), want_r, atol=MODEL_TOL, rtol=0
    )


@pytest.mark.parametrize("e_layers,covariate", [(1, False), (3, True)])
def test_forecast_next_equals_last_patch_of_forward(e_layers, covariate):
    cfg = TimerXLConfig(**{**BASE, "e_layers": e_layers, "covariate": covariate, "use_norm": True})
    _, jm = pair(cfg)
    x = series(3, 40, 4)
    full = np.asarray(jm(x))[:, -cfg.output_token_len :]
    np.testing.assert_allclose(np.asarray(jm.forecast_next(x)), full, atol=LAYER_TOL, rtol=0)


def test_train_mode_dropout_is_random_and_eval_is_deterministic():
    cfg = TimerXLConfig(**{**BASE, "dropout": 0.5})
    _, jm = pair(cfg)
    x = series(2, 32, 2)
    jm.train()
    a, b = np.asarray(jm(x)), np.asarray(jm(x))
    assert not np.allclose(a, b)
    jm.eval()
    np.testing.assert_array_equal(np.asarray(jm(x)), np.asarray(jm(x)))


def test_rolling_forecast_is_one_compiled_program():
    cfg = TimerXLConfig(**BASE)
    _, jm = pair(cfg)
    x = series(2, 32, 2)
    graphdef, state = nnx.split(jm)
    from jaxts.models import timer_xl

    def program(pred_len):
        return timer_xl._rolling_jit.lower(graphdef, state, jnp.asarray(x), pred_len).as_text()

    short, long = program(40), program(400)  # 5 and 50 steps
    assert "while" in short  # lax.scan, not an unrolled Python loop
    assert short.count("dot_general") > 0
    assert long.count("dot_general") == short.count("dot_general")  # one body, any horizon


# ------------------------------------------------------------------ input validation


def test_bad_inputs_raise_clear_errors():
    cfg = TimerXLConfig(**BASE)
    _, jm = pair(cfg)
    with pytest.raises(ValueError, match="not a multiple"):
        jm(series(1, 30, 2))
    with pytest.raises(ValueError, match="too short"):
        jm(series(1, 5, 2))
    with pytest.raises(ValueError, match=r"\[batch, length, variables\]"):
        jm(series(1, 32, 2)[0])
    bad = series(1, 32, 2)
    bad[0, 3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        jm(bad)
    with pytest.raises(ValueError, match="pred_len"):
        rolling_forecast(jm, series(1, 32, 2), 0)


def test_truncate_drops_the_oldest_points():
    cfg = TimerXLConfig(**BASE)
    _, jm = pair(cfg)
    x = series(2, 35, 2)
    np.testing.assert_array_equal(np.asarray(jm(x, truncate=True)), np.asarray(jm(x[:, 3:])))
    np.testing.assert_array_equal(
        np.asarray(rolling_forecast(jm, x, 10, truncate=True)),
        np.asarray(rolling_forecast(jm, x[:, 3:], 10)),
    )


def test_reference_state_dict_roundtrip_is_exact():
    cfg = TimerXLConfig(**{**BASE, "e_layers": 3, "covariate": True})
    tm, jm = pair(cfg)
    back = to_openltm(jm)
    sd = tm.state_dict()
    assert set(back) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k].numpy(), err_msg=k)
    tm2 = ref.Model(cfg)
    tm2.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
