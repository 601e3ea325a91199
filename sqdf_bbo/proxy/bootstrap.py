"""Bootstrap resampling for the ensemble proxy: head h trains on its own with-replacement resample
(same size as the training split) of the training indices (as in the official SQDF code)."""
from __future__ import annotations

import torch


def bootstrap_indices(n_train: int, heads: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(heads, n_train) long indices into the training split, drawn uniformly with replacement (``heads``:
    the ``proxy_heads`` setting, range-checked when the settings were built)."""
    if n_train < 1:
        raise ValueError(f"bootstrap needs at least one training point, got n_train={n_train}")
    return torch.randint(0, n_train, (heads, n_train), generator=generator)
