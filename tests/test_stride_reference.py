"""The PyTorch reference of STRIDE's speculative decoding loop, on tiny random Timer-XL models."""

from types import SimpleNamespace

import pytest
import torch

from bridges.reference import timer_xl_draft_torch as dref
from bridges.reference import timer_xl_torch as tref
from bridges.reference.stride_speculative_torch import (
    SpeculativeDecoder,
    randn_like,
    target_only_rolling,
    target_only_sampling,
)

P = 8  # input_token_len == output_token_len
B, L, C = 3, 4 * P, 2


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models: intra-op threads only add stalls when the 2 cores are shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def model_cfg(use_norm=True, stochastic=False):
    return SimpleNamespace(
        input_token_len=P,
        output_token_len=P,
        d_model=32,
        n_heads=2,
        d_ff=64,
        e_layers=1,
        dropout=0.0,
        activation="gelu",
        covariate=False,
        use_norm=use_norm,
        draft_stochastic=stochastic,
    )


def target_model(use_norm=True, seed=0):
    torch.manual_seed(seed)
    return tref.Model(model_cfg(use_norm)).eval()


def same_draft(target, use_norm=True):
    """A deterministic draft holding the target's weights."""
    draft = dref.Model(model_cfg(use_norm)).eval()
    draft.load_state_dict(target.state_dict())
    return draft


def random_draft(use_norm=True):
    """A deterministic draft with its own random weights."""
    torch.manual_seed(1)
    return dref.Model(model_cfg(use_norm)).eval()


def terrible_draft(use_norm=True):
    draft = random_draft(use_norm)
    with torch.no_grad():
        draft.head.bias.fill_(50.0)
    return draft


def stochastic_draft(target, logvar_bias, use_norm=True):
    """Stochastic draft whose mean head is the target's head; logvar is ``logvar_bias``."""
    draft = dref.Model(model_cfg(use_norm, stochastic=True)).eval()
    state = {k: v for k, v in target.state_dict().items() if not k.startswith("head.")}
    state["head_mean.weight"] = target.head.weight
    state["head_mean.bias"] = target.head.bias
    state["head_logvar.weight"] = torch.zeros_like(draft.head_logvar.weight)
    state["head_logvar.bias"] = torch.full_like(draft.head_logvar.bias, logvar_bias)
    draft.load_state_dict(state)
    return draft


def spec_args(seed=0, **kw):
    args = dict(
        spec_k=3,
        spec_sigma=0.5,
        spec_accept_bias=1.0,
        spec_accept_mse_tol=0.0,
        spec_adaptive=False,
        input_token_len=P,
        output_token_len=P,
        use_norm=True,
        draft_stochastic=False,
        generator=torch.Generator().manual_seed(seed),
    )
    args.update(kw)
    return SimpleNamespace(**args)


def series(seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(L, dtype=torch.float32)[None, :, None]
    return 3.0 + torch.sin(0.3 * t) * torch.ones(B, 1, C) + 0.3 * torch.randn(B, L, C, generator=g)


def test_shape_truncation_and_counts_when_all_accepted():
    target = target_model()
    draft = random_draft()
    x = series()
    x0 = x.clone()
    # tolerance accepts everything: 2 rounds of k + 1 = 4 patches (8 >= 5), truncated to 5.
    dec = SpeculativeDecoder(target, draft, spec_args(spec_accept_mse_tol=1e9))
    preds, acc, att, bd = dec.generate(x, steps=5)
    assert preds.shape == (B, 5 * P, C) and torch.isfinite(preds).all()
    assert torch.equal(x, x0)
    assert acc == att == B * 2 * 3
    assert bd["n_rounds"] == 2 and bd["n_draft_calls"] == 6
    assert bd["n_target_verify_calls"] == 2 and bd["n_target_sample_calls"] == 2
    # same draws for steps=8 (also two rounds): steps=5 is its prefix
    dec8 = SpeculativeDecoder(target, draft, spec_args(spec_accept_mse_tol=1e9))
    preds8, *_ = dec8.generate(x, steps=8)
    assert preds8.shape == (B, 8 * P, C)
    torch.testing.assert_close(preds, preds8[:, : 5 * P])


def test_deterministic_first_proposal_is_draft_mean_plus_sigma_noise():
    target = target_model()
    draft = random_draft()
    x = series()
    dec = SpeculativeDecoder(target, draft, spec_args(seed=7, spec_accept_mse_tol=1e9))
    preds, *_ = dec.generate(x, steps=1)
    with torch.no_grad():
        mu = draft(x)[:, -P:, :]
    want = mu + 0.5 * randn_like(mu, torch.Generator().manual_seed(7))
    torch.testing.assert_close(preds, want)


def test_same_weights_small_sigma_accepts_and_saves_target_calls():
    target = target_model()
    x = series()
    steps = 12
    dec = SpeculativeDecoder(target, same_draft(target), spec_args(spec_k=4, spec_sigma=1e-3))
    preds, acc, att, bd = dec.generate(x, steps=steps)
    assert acc / att > 0.95
    n_target = bd["n_target_verify_calls"] + bd["n_target_sample_calls"]
    assert n_target < steps
    assert bd["n_target_verify_calls"] == bd["n_rounds"] < steps
    # the accepted draft samples are target means + tiny noise: the plain rolling forecast
    torch.testing.assert_close(preds, target_only_rolling(target, x, steps), atol=2e-2, rtol=0)


def test_terrible_draft_rejects_everything_one_patch_per_round():
    target = target_model()
    x = series()
    steps = 6
    dec = SpeculativeDecoder(target, terrible_draft(), spec_args(spec_sigma=1e-4))
    preds, acc, att, bd = dec.generate(x, steps=steps)
    assert acc == 0 and att == B * steps
    assert bd["n_target_verify_calls"] == bd["n_rounds"] == steps
    assert bd["n_target_sample_calls"] == 0 and bd["n_draft_calls"] == 3 * steps
    # every emitted patch is a target draw p + sigma * randn: with tiny sigma, the rolling mean
    torch.testing.assert_close(preds, target_only_rolling(target, x, steps), atol=1e-2, rtol=0)


@pytest.mark.parametrize("use_norm", [True, False])
def test_mse_tol_accepts_all_and_zero_tol_is_off(use_norm):
    target = target_model(use_norm)
    x = series()
    args = spec_args(spec_accept_mse_tol=1e9, use_norm=use_norm)
    _, acc, att, bd = SpeculativeDecoder(target, random_draft(use_norm), args).generate(x, 4)
    assert acc == att > 0 and bd["n_target_sample_calls"] == bd["n_rounds"]
    args = spec_args(spec_accept_mse_tol=0.0, use_norm=use_norm)
    _, acc, att, _ = SpeculativeDecoder(target, terrible_draft(use_norm), args).generate(x, 4)
    assert acc == 0 and att == B * 4


def test_stochastic_draft_uses_its_variance():
    target = target_model()
    x = series()

    def rate(logvar_bias):
        draft = stochastic_draft(target, logvar_bias)
        args = spec_args(spec_sigma=0.1, draft_stochastic=True)
        _, acc, att, _ = SpeculativeDecoder(target, draft, args).generate(x, steps=8)
        return acc / att

    # draft variance below sigma^2: log ratio >= 0, all accepted; far above: almost all rejected
    assert rate(-10.0) > 0.95
    assert rate(4.0) < 0.05


def test_stochastic_first_proposal_uses_exp_half_logvar_noise():
    target = target_model()
    x = series()
    draft = stochastic_draft(target, logvar_bias=0.5)
    args = spec_args(seed=3, spec_accept_mse_tol=1e9, draft_stochastic=True)
    preds, *_ = SpeculativeDecoder(target, draft, args).generate(x, steps=1)
    with torch.no_grad():
        mean, logvar = draft(x)
    z = randn_like(mean[:, -P:, :], torch.Generator().manual_seed(3))
    want = mean[:, -P:, :] + torch.exp(0.5 * logvar[:, -P:, :]) * z
    torch.testing.assert_close(preds, want)


def test_log_ratio_formula():
    dec = SpeculativeDecoder(None, None, spec_args(spec_sigma=0.5, use_norm=True))
    dec.norm_means = torch.zeros(1, 1, 2)
    dec.norm_stdev = torch.tensor([[[2.0, 4.0]]])
    x_n = torch.ones(1, P, 2)
    p_n = torch.zeros(1, P, 2)
    q_n = 0.5 * torch.ones(1, P, 2)
    # deterministic: (-16 + 4) / (2 * 0.25)
    torch.testing.assert_close(dec.log_ratio(x_n, p_n, q_n), torch.tensor([-24.0]))
    # stochastic: v_q = mean(exp(logvar) / stdev^2) = mean(4/4, 4/16) = 0.625
    logvar = torch.full((1, P, 2), float(torch.log(torch.tensor(4.0))))
    want = -16 / 0.5 + 4 / (2 * 0.625)
    torch.testing.assert_close(dec.log_ratio(x_n, p_n, q_n, logvar), torch.tensor([want]))


def test_seeds_reproducible():
    target = target_model()
    draft = stochastic_draft(target, logvar_bias=-3.0)
    x = series()

    def run(seed):
        args = spec_args(seed=seed, spec_sigma=0.2, draft_stochastic=True)
        return SpeculativeDecoder(target, draft, args).generate(x, steps=7)

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a[0], b[0]) and a[1:3] == b[1:3]
    assert {k: v for k, v in a[3].items() if k.startswith("n_")} == {
        k: v for k, v in b[3].items() if k.startswith("n_")
    }
    assert not torch.equal(a[0], c[0])
    # no generator: the global RNG, the same stream as a generator with that seed
    torch.manual_seed(0)
    args = spec_args(spec_sigma=0.2, draft_stochastic=True, generator=None)
    g = SpeculativeDecoder(target, draft, args).generate(x, steps=7)
    assert torch.equal(a[0], g[0]) and a[1:3] == g[1:3]
    s1 = target_only_sampling(target, x, 3, 0.2, torch.Generator().manual_seed(5))
    s2 = target_only_sampling(target, x, 3, 0.2, torch.Generator().manual_seed(5))
    assert s1.shape == (B, 3 * P, C) and torch.equal(s1, s2)
    torch.testing.assert_close(
        target_only_sampling(target, x, 3, 0.0), target_only_rolling(target, x, 3)
    )


def test_adaptive_k_stays_in_range():
    target = target_model()
    x = series()
    up = SpeculativeDecoder(
        target, same_draft(target), spec_args(spec_k=1, spec_sigma=1e-3, spec_adaptive=True)
    )
    up.generate(x, steps=50)
    assert up.k_history[:3] == [1, 2, 3] and max(up.k_history) == 8 and up.k == 8
    down = SpeculativeDecoder(
        target, terrible_draft(), spec_args(spec_k=8, spec_sigma=1e-2, spec_adaptive=True)
    )
    down.generate(x, steps=10)
    assert down.k_history[:3] == [8, 7, 6] and min(down.k_history) == 1 and down.k == 1
    for dec in (up, down):
        assert all(1 <= k <= 8 for k in dec.k_history)
