"""A PyTorch reference of STRIDE's speculative decoding loop (``utils/speculative_decoder.py`` in
PranavSubbaraman/STRIDE, ``SpeculativeDecoder.generate``), for benchmarks and cross-checks of the
JAX implementation. Our own code; names and semantics are STRIDE's.

The loop is the early-exit ``while True`` version (commit 085a336): rounds run until every sample
holds at least ``steps`` patches. One round, for the whole batch:

1. the draft proposes ``k`` patches autoregressively on the sliding window: a deterministic draft
   samples ``x_i = mu_q + spec_sigma * randn``; a stochastic draft (``(mean, logvar)`` output,
   ``draft_stochastic``) samples ``x_i = mu_q + exp(0.5 * logvar_q) * randn``, with ``logvar_q``
   in the de-normalised scale the draft returns;
2. the target verifies the ``k`` proposals in ONE call by stacking the ``k`` fixed-length sliding
   contexts ``x, x<<x_1, ..., x<<x_1..x_{k-1}`` into ``[k*B, L, C]`` (STRIDE's "fallback" path);
3. per sample, proposals are taken in order until the first rejection. The test runs in the
   normalised space of the *initial* context (``_normalize_patch`` with the ``x_init`` mean and
   stdev when ``use_norm``)::

       log_ratio = -||x - p||^2 / (2 sigma^2) + ||x - mu_q||^2 / (2 v_q)
       accept  if  u <= min(1, exp(min(log_ratio, 20)) * max(spec_accept_bias, 1))
               or  (spec_accept_mse_tol > 0 and mean((p - x)^2) <= spec_accept_mse_tol)

   with ``v_q = sigma^2`` for a deterministic draft and, for a stochastic draft, the mean over
   the patch (P and C) of ``exp(logvar_q) / stdev0^2`` (the draft variance in the same space);
4. a rejected sample emits ``p + spec_sigma * randn`` (raw scale) and ends its round; samples
   that accepted all ``k`` get one more target call (only over them, the "target sample" call)
   and emit a bonus patch ``p_next + spec_sigma * randn``;
5. adaptive ``k`` (``spec_adaptive``): after each round, from the running acceptance rate of this
   ``generate`` call, ``k += 1`` above 0.7 and ``k -= 1`` below 0.3, kept in ``[1, 8]``.
   ``self.k`` persists across calls, as the decoder STRIDE builds once per test run.

Upstream ambiguities and how they are resolved here:

- The stored upstream revisions disagree. Commit 085a336 compares patches in the normalised space
  of ``x_init`` but cannot consume a stochastic draft; the later revision that reads
  ``(mean, logvar)`` dropped that normalisation and compares in the raw scale. Here the
  085a336 normalised comparison is kept for both drafts, and the stochastic draft's variance is
  carried into the same space (``/ stdev0^2``). Without ``use_norm`` this is exactly the later
  revision's rule.
- ``STOCHASTIC_DRAFT_GUIDE.md`` writes an extra ``+ 0.5 log sigma_q^2`` term in the log ratio; no
  upstream code has it, and it is left out.
- The single-pass "extended input" verification (one target call on ``x || x_1 || ... || x_k``)
  is NOT implemented: Timer-XL with ``use_norm`` normalises by the statistics of its whole
  input, so the extended sequence (longer than ``L`` and including the proposals) does not give
  the predictions of the fixed-length sliding windows the draft and the plain rolling forecast
  use. The later upstream revision disabled it for a related reason.
- The ``sigma^2`` floor ``1e-12`` of the deterministic path is applied to both paths.
- Samples that already hold ``steps`` patches keep taking part in later rounds (their surplus is
  truncated) and keep counting in ``accepted`` / ``attempted``, as upstream.
- Random draws follow upstream's order and shapes: per draft step ``randn [B, P, C]``; per
  proposal index ``rand [B]`` (all samples), then ``randn [B, P, C]`` only if a sample rejects;
  the bonus ``randn [n, P, C]``; each normal draw is ``randn_like`` of the model-output slice it
  is added to (filled in that slice's memory order). With ``args.generator`` unset the global
  torch RNG is used and the draws are upstream's, draw for draw.
- ``spec_sigma_mode='adaptive'`` (upstream, optional) is kept for the deterministic draft:
  per sample ``sigma^2 = clip(spec_sigma_adapt_c * mean((p - mu_q)^2), 1e-6, 1e6)`` in the
  normalised space. The debug CSV, AMP autocast and ``x_mark``/``y_mark`` (Timer-XL ignores
  them) are left out. ``input_token_len`` must equal ``output_token_len``: the stacked
  sliding contexts of step 2 only have one length then.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import torch

from bridges.reference.timer_xl_torch import rolling_forecast


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def randn_like(like: torch.Tensor, generator=None) -> torch.Tensor:
    """``torch.randn_like`` with a generator (``None``: the global RNG, the same draws)."""
    return torch.empty_like(like).normal_(generator=generator)


def _mean(out):
    """A Timer-XL forward's series (drops the attention list of ``output_attention``)."""
    return out[0] if isinstance(out, tuple) else out


class SpeculativeDecoder:
    """STRIDE's speculative decoder; ``args`` carries STRIDE's ``spec_*`` names (see module doc)."""

    def __init__(self, target_model, draft_model, args: SimpleNamespace):
        self.target_model = target_model
        self.draft_model = draft_model
        self.args = args
        self.k = int(args.spec_k)
        self.adaptive = bool(getattr(args, "spec_adaptive", False))
        self.use_norm = bool(getattr(args, "use_norm", False))
        self.draft_stochastic = bool(getattr(args, "draft_stochastic", False))
        self.generator = getattr(args, "generator", None)
        self.sigma_mode = getattr(args, "spec_sigma_mode", "fixed")
        self.sigma_adapt_c = float(getattr(args, "spec_sigma_adapt_c", 1.5))
        self.in_len = int(args.input_token_len)
        self.out_len = int(args.output_token_len)
        if self.in_len != self.out_len:
            raise ValueError("input_token_len must equal output_token_len (stacked verification)")
        self.norm_means = None
        self.norm_stdev = None
        self.k_history: list[int] = []  # k used by each round, across calls

    # ------------------------------------------------------------------ helpers

    def _randn(self, like: torch.Tensor) -> torch.Tensor:
        """``torch.randn_like(like)`` from ``self.generator``: same strides, so the normals fill
        the memory order of ``like`` (a slice of a permuted model output), as upstream's."""
        return randn_like(like, self.generator)

    def _rand(self, like: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(like).uniform_(generator=self.generator)

    def _compute_norm_stats(self, x):
        if not self.use_norm:
            return None, None
        means = x.mean(1, keepdim=True)
        stdev = torch.sqrt(torch.var(x, dim=1, keepdim=True, unbiased=False) + 1e-5)
        return means, stdev

    def _normalize_patch(self, patch):
        if self.use_norm and self.norm_means is not None:
            return (patch - self.norm_means) / self.norm_stdev
        return patch

    def _normalize_var(self, var):
        if self.use_norm and self.norm_stdev is not None:
            return var / self.norm_stdev**2
        return var

    def _draft(self, context):
        """(mu_q, logvar_q or None) of the next patch."""
        out = self.draft_model(context, None, None)
        if isinstance(out, tuple) and self.draft_stochastic and len(out) == 2:
            mean, logvar = out
            return mean[:, -self.out_len :, :], logvar[:, -self.out_len :, :]
        if isinstance(out, tuple):
            raise TypeError("draft returned a tuple; set args.draft_stochastic for (mean, logvar)")
        return out[:, -self.out_len :, :], None

    def _target(self, context):
        return _mean(self.target_model(context, None, None))[:, -self.out_len :, :]

    def log_ratio(self, x_n, p_n, q_n, logvar_q=None):
        """Per-sample acceptance log ratio; patches already normalised, ``logvar_q`` raw."""
        sse_p = (x_n - p_n).pow(2).sum(dim=(1, 2))
        sse_q = (x_n - q_n).pow(2).sum(dim=(1, 2))
        sigma2 = max(float(self.args.spec_sigma) ** 2, 1e-12)
        if logvar_q is not None:
            v_q = self._normalize_var(torch.exp(logvar_q)).mean(dim=(1, 2))
            return -sse_p / (2.0 * sigma2) + sse_q / (2.0 * v_q)
        if self.sigma_mode == "adaptive":
            mean_sq = torch.mean((p_n - q_n) ** 2, dim=(1, 2))
            sigma2 = torch.clamp(self.sigma_adapt_c * mean_sq, min=1e-6, max=1e6)
        return (-sse_p + sse_q) / (2.0 * sigma2)

    # ------------------------------------------------------------------ generate

    @torch.no_grad()
    def generate(self, x_init: torch.Tensor, steps: int):
        """``(preds [B, steps*P_out, C], accepted, attempted, breakdown)`` as STRIDE."""
        a = self.args
        sigma = float(a.spec_sigma)
        bias = max(float(a.spec_accept_bias), 1.0)
        mse_tol = float(getattr(a, "spec_accept_mse_tol", 0.0))
        x = x_init.clone()
        B = x.shape[0]
        self.norm_means, self.norm_stdev = self._compute_norm_stats(x_init)
        preds = [[] for _ in range(B)]
        max_return_len = steps * self.out_len
        accepted = attempted = 0
        n_draft = n_verify = n_sample = n_rounds = 0
        t_draft = t_prep = t_verify = t_sample = t_accept = 0.0

        def emit(b, patch):
            x[b] = torch.cat([x[b, self.in_len :, :], patch], dim=0)
            preds[b].append(patch)

        while any(len(p) * self.out_len < max_return_len for p in preds):
            k = self.k
            self.k_history.append(k)
            n_rounds += 1
            # 1. draft proposals
            proposals, mus, logvars = [], [], []
            context = x
            for _ in range(k):
                _sync()
                t0 = time.perf_counter()
                mu_q, logvar_q = self._draft(context)
                _sync()
                t_draft += time.perf_counter() - t0
                n_draft += 1
                scale = sigma if logvar_q is None else torch.exp(0.5 * logvar_q)
                sampled = mu_q + scale * self._randn(mu_q)
                proposals.append(sampled)
                mus.append(mu_q)
                logvars.append(logvar_q)
                context = torch.cat([context[:, self.in_len :, :], sampled], dim=1)
            # 2. one target call over the k stacked sliding contexts
            t0 = time.perf_counter()
            contexts, current = [], x
            for prop in proposals:
                contexts.append(current)
                current = torch.cat([current[:, self.in_len :, :], prop], dim=1)
            verify_in = torch.cat(contexts, dim=0)  # [k*B, L, C]
            t_prep += time.perf_counter() - t0
            _sync()
            t0 = time.perf_counter()
            target_out = self._target(verify_in)
            _sync()
            t_verify += time.perf_counter() - t0
            n_verify += 1
            # 3. sequential acceptance per sample
            done = torch.zeros(B, dtype=torch.bool, device=x.device)
            acc_round = att_round = 0
            for i in range(k):
                att_round += int((~done).sum())
                p_next = target_out[i * B : (i + 1) * B]
                x_i = proposals[i]
                t0 = time.perf_counter()
                x_n, p_n, q_n = (self._normalize_patch(t) for t in (x_i, p_next, mus[i]))
                lr = self.log_ratio(x_n, p_n, q_n, logvars[i])
                ratio = torch.exp(torch.clamp(lr, max=20.0)) * bias
                alpha = torch.minimum(torch.ones_like(ratio), ratio)
                u = self._rand(alpha)
                if mse_tol > 0:
                    tol_ok = torch.mean((p_n - x_n) ** 2, dim=(1, 2)) <= mse_tol
                else:
                    tol_ok = torch.zeros_like(done)
                accept = ((u <= alpha) | tol_ok) & ~done
                t_accept += time.perf_counter() - t0
                for b in torch.where(accept)[0].tolist():
                    emit(b, x_i[b])
                    acc_round += 1
                reject = ~accept & ~done
                if reject.any():
                    t_full = p_next + sigma * self._randn(p_next)
                    for b in torch.where(reject)[0].tolist():
                        emit(b, t_full[b])
                        done[b] = True
                if done.all():
                    break
            # 4. bonus target draw for the samples that accepted all k
            if (~done).any():
                idx = torch.where(~done)[0]
                _sync()
                t0 = time.perf_counter()
                mu_next = self._target(x.index_select(0, idx))
                _sync()
                t_sample += time.perf_counter() - t0
                n_sample += 1
                t_all = mu_next + sigma * self._randn(mu_next)
                for j, b in enumerate(idx.tolist()):
                    emit(b, t_all[j])
            accepted += acc_round
            attempted += att_round
            # 5. adaptive k from this call's running acceptance rate
            if self.adaptive and attempted > 0:
                rate = accepted / attempted
                if rate > 0.7:
                    self.k = min(self.k + 1, 8)
                elif rate < 0.3:
                    self.k = max(self.k - 1, 1)

        out = torch.stack([torch.cat(p, dim=0)[:max_return_len] for p in preds], dim=0)
        breakdown = {
            "t_draft": t_draft,
            "t_prep_verify": t_prep,
            "t_target_verify": t_verify,
            "t_target_sample": t_sample,
            "t_accept_cpu": t_accept,
            "n_draft_calls": n_draft,
            "n_target_verify_calls": n_verify,
            "n_target_sample_calls": n_sample,
            "n_rounds": n_rounds,
        }
        return out, int(accepted), int(attempted), breakdown


def _token_lens(target_model) -> tuple[int, int]:
    return int(target_model.input_token_len), int(target_model.head.out_features)


@torch.no_grad()
def target_only_rolling(target_model, x: torch.Tensor, steps: int) -> torch.Tensor:
    """OpenLTM's deterministic rolling forecast of the target mean: ``[B, steps*P_out, C]``."""
    in_len, out_len = _token_lens(target_model)
    return rolling_forecast(target_model, x, steps * out_len, in_len, out_len)


@torch.no_grad()
def target_only_sampling(
    target_model, x: torch.Tensor, steps: int, sigma: float, generator=None
) -> torch.Tensor:
    """Ancestral sampling from the target: each step ``mean + sigma * randn`` joins the window."""
    in_len, out_len = _token_lens(target_model)
    context, out = x, []
    for _ in range(steps):
        mean = _mean(target_model(context, None, None))[:, -out_len:, :]
        nxt = mean + sigma * randn_like(mean, generator)
        out.append(nxt)
        context = torch.cat([context[:, in_len:, :], nxt], dim=1)
    return torch.cat(out, dim=1)
