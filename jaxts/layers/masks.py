"""Boolean attention masks of OpenLTM's Timer family (True = masked out).

Tokens are flattened variable-major: token index ``c * n_tokens + n``.
Masks are static (numpy) so XLA folds them into constants.
"""

from __future__ import annotations

import numpy as np


def causal_mask(n_tokens: int) -> np.ndarray:
    """``[T, T]``: a query may not see later keys."""
    return np.triu(np.ones((n_tokens, n_tokens), dtype=bool), k=1)


def timer_multivariate_mask(n_vars: int, n_tokens: int) -> np.ndarray:
    """``[C*N, C*N]``: causal over time, open across variables (``TimerMultivariateMask``)."""
    return np.kron(np.ones((n_vars, n_vars), dtype=bool), causal_mask(n_tokens))


def timer_covariate_mask(n_vars: int, n_tokens: int) -> np.ndarray:
    """``[C*N, C*N]``: OpenLTM's ``TimerCovariateMask``.

    Each covariate (variables 0..C-2) sees only its own past; the target (last variable) sees
    its own past and every token of every covariate (covariates are treated as known).
    """
    allowed = np.kron(np.eye(n_vars, dtype=bool), np.tril(np.ones((n_tokens, n_tokens), bool)))
    mask = ~allowed
    mask[-n_tokens:, :-n_tokens] = False
    return mask


def same_variable(n_vars: int, n_tokens: int) -> np.ndarray:
    """``[C*N, C*N]``: True where query and key belong to the same variable."""
    var_id = np.repeat(np.arange(n_vars), n_tokens)
    return var_id[:, None] == var_id[None, :]
