"""Faithful PyTorch reference of upstream's ``DistanceAwareOutputLayer``
(``Phoenix21/distance-aware-chronos-t``, ``distance_aware_chronos.py``).

Same module and parameter names as upstream, so a published ``distance_output.pt`` loads into
it with ``load_state_dict(strict=True)``; same forward, operation for operation. Upstream's
dropout is hard-coded to 0.1; ``dropout`` is a keyword here only so that the same class can
mirror a jaxts head configured otherwise.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class DistanceAwareOutputLayer(nn.Module):
    def __init__(self, hidden_size: int, num_bins: int = 4096, dropout: float = 0.1):
        super().__init__()
        self.num_bins = num_bins
        self.hidden_size = hidden_size
        self.gaussian_centers = nn.Parameter(torch.linspace(-15, 15, num_bins).unsqueeze(0))
        self.gaussian_widths = nn.Parameter(torch.ones(num_bins) * 0.5)
        self.ordinal_embed = nn.Embedding(num_bins, 64)
        self._init_ordinal_embeddings()
        self.value_projection = nn.Linear(hidden_size, 1)
        self.confidence_projection = nn.Linear(hidden_size, 1)
        self.mix_layer = nn.Sequential(
            nn.Linear(hidden_size + 65, hidden_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, num_bins),
        )

    def _init_ordinal_embeddings(self):
        """Upstream's loop: row i from float64 numpy sines/cosines, copied into float32."""
        with torch.no_grad():
            for i in range(self.num_bins):
                position = i / self.num_bins
                row = [np.sin(2 * np.pi * position * (j + 1)) for j in range(32)] + [
                    np.cos(2 * np.pi * position * (j + 1)) for j in range(32)
                ]
                self.ordinal_embed.weight[i] = torch.tensor(row)

    def forward(self, hidden_states, temperature=1.0):
        batch_size, seq_len, _ = hidden_states.size()
        predicted_value = self.value_projection(hidden_states)
        confidence = torch.sigmoid(self.confidence_projection(hidden_states))
        distances = (predicted_value - self.gaussian_centers) ** 2
        gaussian_logits = -distances / (2 * self.gaussian_widths**2 + 1e-8)
        ordinal_features = self.ordinal_embed.weight.mean(dim=0)
        ordinal_features = ordinal_features.unsqueeze(0).unsqueeze(0)
        ordinal_features = ordinal_features.expand(batch_size, seq_len, -1)
        combined = torch.cat([hidden_states, predicted_value, ordinal_features], dim=-1)
        logits = self.mix_layer(combined)
        final_logits = (1 - confidence) * gaussian_logits + confidence * logits
        return final_logits / temperature


def tokenize_time_series(time_series: np.ndarray, num_bins: int = 4096) -> np.ndarray:
    """Upstream's ``DistanceAwareChronos.tokenize_time_series`` (numpy ids, not a tensor)."""
    scale = np.abs(time_series).mean() + 1e-10
    scaled = np.clip(time_series / scale, -15, 15)
    bins = np.linspace(-15, 15, num_bins)
    return np.clip(np.digitize(scaled, bins) - 1, 0, num_bins - 1)


def detokenize(tokens: np.ndarray, scale: float, num_bins: int = 4096) -> np.ndarray:
    """Upstream's ``DistanceAwareChronos.detokenize``."""
    return np.linspace(-15, 15, num_bins)[tokens] * scale
