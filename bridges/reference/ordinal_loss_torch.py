"""A faithful PyTorch reference of the distance-aware Chronos losses
(``Phoenix21/distance-aware-chronos-t``): upstream's ``OrdinalLoss(num_bins, alpha, beta)`` class
(ordinal cross-entropy, smooth-label loss, earth mover's distance and their weighted sum, the loss
the published head was trained with) and the "v2" Gaussian soft-label ``distance_aware_loss``.

Semantics are upstream's, including its quirks, so that ``jaxts.losses`` can be checked against
them:

- every method flattens ``logits [..., N]`` / ``targets [...]`` to rows and averages over all of
  them (no ignore index: callers drop masked rows before calling, as the parity tests do);
- the smooth-label kernel is ``exp(-beta * |k - target|)`` (a Laplace kernel) read from an
  ``[N, N]`` distance matrix. Upstream fills that matrix with a Python double loop over (i, j)
  (47 s at N = 4096); here it is built vectorised, with the same values ``|i - j|``;
- the EMD is the L1 distance between the two CDFs, summed over bins (not divided by N);
- ``distance_aware_loss`` takes ONE scalar target and sums over everything it is given (a batch
  of rows is summed, all against that one target).

Written for the parity tests and the benchmark; no pip package ships it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class OrdinalLoss(nn.Module):
    """Upstream's distance-aware training loss over ``num_bins`` ordered classes."""

    def __init__(self, num_bins: int = 4096, alpha: float = 1.0, beta: float = 0.1):
        super().__init__()
        self.num_bins = num_bins
        self.alpha = alpha
        self.beta = beta
        # distance_matrix[i, j] = |i - j| (upstream: nested Python loops, same values).
        idx = torch.arange(num_bins, dtype=torch.float32)
        self.distance_matrix = (idx[:, None] - idx[None, :]).abs()  # [N, N]

    def _rows(self, logits, targets):
        return logits.reshape(-1, self.num_bins), targets.reshape(-1).long()  # [M, N], [M]

    def ordinal_cross_entropy(self, logits, targets):
        """CE + alpha * log(1 + |argmax - target| / N); the argmax term carries no gradient."""
        logits, targets = self._rows(logits, targets)
        ce = F.cross_entropy(logits, targets)
        predicted = logits.argmax(dim=-1)  # [M]
        distance = (predicted - targets).abs().float() / self.num_bins  # [M]
        return ce + self.alpha * torch.log(1 + distance).mean()

    def smooth_label_loss(self, logits, targets):
        """Cross-entropy against soft labels q(k) = exp(-beta |k - t|) / sum."""
        logits, targets = self._rows(logits, targets)
        soft_labels = torch.exp(-self.beta * self.distance_matrix[targets])  # [M, N]
        soft_labels = soft_labels / soft_labels.sum(dim=-1, keepdim=True)
        log_probs = F.log_softmax(logits, dim=-1)  # [M, N]
        return -(soft_labels * log_probs).sum(dim=-1).mean()

    def earth_movers_distance(self, logits, targets):
        """sum_k |CDF_pred(k) - CDF_target(k)|, averaged over rows."""
        logits, targets = self._rows(logits, targets)
        probs = F.softmax(logits, dim=-1)  # [M, N]
        one_hot = F.one_hot(targets, self.num_bins).float()  # [M, N]
        cdf_diff = probs.cumsum(dim=-1) - one_hot.cumsum(dim=-1)  # [M, N]
        return cdf_diff.abs().sum(dim=-1).mean()

    def combined_loss(self, logits, targets, weights=(0.5, 0.3, 0.2)):
        """weights[0] * ordinal CE + weights[1] * smooth label + weights[2] * EMD."""
        return (
            weights[0] * self.ordinal_cross_entropy(logits, targets)
            + weights[1] * self.smooth_label_loss(logits, targets)
            + weights[2] * self.earth_movers_distance(logits, targets)
        )

    def forward(self, logits, targets):
        return self.combined_loss(logits, targets)


def distance_aware_loss(logits, target_bin, vocab_size: int = 4096, sigma: float = 2.0):
    """The "v2" loss: cross-entropy against Gaussian soft labels
    q(k) = exp(-(k - target)^2 / (2 sigma^2)) / sum, summed over ALL of ``logits [..., N]``
    with one scalar ``target_bin`` (an int or a 0-d tensor)."""
    bins = torch.arange(vocab_size, device=logits.device, dtype=torch.float32)  # [N]
    if isinstance(target_bin, int):
        target_bin = torch.tensor(target_bin, device=logits.device, dtype=torch.float32)
    else:
        target_bin = target_bin.float()
    soft_labels = torch.exp(-((bins - target_bin) ** 2) / (2 * sigma**2))  # [N]
    soft_labels = soft_labels / soft_labels.sum()
    log_probs = F.log_softmax(logits, dim=-1)  # [..., N]
    return -torch.sum(soft_labels * log_probs)
