"""One KL scale for every KL-regularised method (docs: "Comparing methods fairly").

``beta`` = standardised reward units per nat of the exact path KL Σ_k ‖μ_θ,k − μ_ref,k‖²/(2 s_k²), so a
method run at ``beta`` targets p_ref(x)·exp(r̂⁺(x)/beta) / Z (up to each method's approximations). Each
method keeps its native knob for fidelity to its paper; ``beta`` is mapped onto it when the run is built:

| method | native knob | mapping (D = latent elements) |
|---|---|---|
| SQDF | ``alpha`` with ``kl_reduction=mean_no_half`` (KL̃ = (2/D)·KL) | alpha = beta·D/2 |
| SQDF | ``alpha`` with ``kl_reduction=exact`` | alpha = beta |
| SEIKO | ``kl_weight`` on Σ_k mean_d KL_k (= KL/D) | kl_weight = beta·D |
| Adjoint Matching | ``alpha`` = 1/λ (reward multiplier λ) | alpha = beta |

Both are recorded in the resolved config. Setting ``beta`` and the native knob to inconsistent values
is an error. D is the number of latent elements the KL is taken over (``TaskInfo.latent_elements``).
"""
from __future__ import annotations

import math
from typing import Callable

from sqdf_bbo.tasks.base import TaskInfo


def resolve_beta(cfg: dict, overrides: dict, native_key: str, beta_to_native: Callable[[float], float],
                 native_to_beta: Callable[[float], float]) -> dict:
    """Fill ``cfg['beta']`` and ``cfg[native_key]`` consistently (in place; returns cfg).

    ``beta`` given (not None) sets the native knob; otherwise beta is derived from the native knob.
    Raises ValueError naming both keys when the user set both to values that disagree."""
    beta = cfg.get("beta")
    if beta is None:
        cfg["beta"] = native_to_beta(float(cfg[native_key]))
        return cfg
    try:
        beta = float(beta)
    except (TypeError, ValueError):
        raise ValueError(f"beta must be a number >= 0 (reward units per nat of path KL), got {beta!r}") from None
    if not (beta >= 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be a finite number >= 0 (reward units per nat of path KL), got {beta!r}")
    native = beta_to_native(beta)
    if native_key in overrides and overrides[native_key] is not None:
        given = float(overrides[native_key])
        if not math.isclose(given, native, rel_tol=1e-9, abs_tol=0.0):
            raise ValueError(f"set beta or {native_key}, not both: beta={beta:g} means {native_key}={native:g}, "
                             f"but {native_key}={given:g} was given")
    cfg["beta"], cfg[native_key] = beta, native
    return cfg


def latent_elements(task: TaskInfo) -> int:
    """D: number of elements of one latent (the KL is a sum over them)."""
    return int(math.prod(task.latent_shape or task.design_shape))
