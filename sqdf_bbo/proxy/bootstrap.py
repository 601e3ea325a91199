"""Bootstrap resampling for the ensemble proxy: head h trains on its own with-replacement resample
(same size as the training split) of the training indices (as in the official SQDF code)."""
from __future__ import annotations

import torch


def bootstrap_indices(n_train: int, heads: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(heads, n_train) long indices into the training split, drawn uniformly with replacement."""
    if n_train < 1:
        raise ValueError(f"bootstrap needs at least one training point, got n_train={n_train}")
    if heads < 1:
        raise ValueError(f"proxy_heads must be >= 1, got {heads}")
    return torch.randint(0, n_train, (heads, n_train), generator=generator)
