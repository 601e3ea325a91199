"""TuRBO-1 (Eriksson et al. 2019): trust-region Bayesian optimisation with a local GP and Thompson sampling,
on the vector tier only. It ignores the diffusion prior (on the ``-manifold`` tasks that is the question)
and has no path KL (reported as NaN). Follows the BoTorch tutorial ``turbo_1``.

Designs live in the task's box, mapped to the unit cube u = (x - lo) / (hi - lo). One TuRBO iteration per
harness round, with q = the round's query count (no feedback inside a round):

    round 0 (and after a restart): a scrambled Sobol design of n points in [0, 1]^d
    improve():  fit a SingleTaskGP (Matérn-5/2 ARD in a ScaleKernel, lengthscale in [0.005, 4], inferred
                noise: our oracles are noisy) on the points since the last restart, Y standardised by hand;
                after a TuRBO batch, update the state with the batch's best posterior mean (the noise-aware
                form of "max Y_next") against the best posterior mean of the earlier points:
                    success if y_next > best + 1e-3 |best|  (success += 1, failure = 0) else (failure += 1,
                    success = 0); success = success_tol -> L = min(2L, L_max); failure = failure_tol -> L /= 2
                    (counter reset); L < L_min -> restart (fresh Sobol design, old points leave the local GP)
    propose(n): centre = the observed point with the best posterior mean; trust region = centre ± w L / 2
                clamped to [0, 1]^d with w = lengthscales / mean, divided by their geometric mean;
                n_cand = min(5000, max(2000, 200 d)) Sobol points in the box, each coordinate perturbed with
                probability min(20/d, 1) (else kept at the centre; at least one); Thompson sampling picks n
                without replacement (BoTorch ``MaxPosteriorSampling``).

State defaults: L = 0.8, L_min = 0.5^7, L_max = 1.6, success_tol = 10, failure_tol = ceil(max(4/q, d/q)).
With q >= d the failure tolerance is 1 and the success tolerance is never reached within a few rounds:
TuRBO is then Thompson sampling in a shrinking trust region.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import torch

from baselines._bo import UnitCubeAgent, sobol
from sqdf_bbo.checkpoint import checkpointable
from sqdf_bbo.settings import setting
from sqdf_bbo.tasks.base import TaskInfo

Tensor = torch.Tensor


@checkpointable
@dataclass(frozen=True)
class TurboState:
    """The trust-region state of TuRBO-1 (names as in the BoTorch tutorial)."""

    dim: int
    batch_size: int
    length: float = 0.8
    length_min: float = 0.5 ** 7
    length_max: float = 1.6
    failure_counter: int = 0
    success_counter: int = 0
    success_tolerance: int = 10
    best_value: float = -math.inf
    restart_triggered: bool = False

    @property
    def failure_tolerance(self) -> int:
        return math.ceil(max(4.0 / self.batch_size, float(self.dim) / self.batch_size))


def update_turbo_state(state: TurboState, y_next_best: float) -> TurboState:
    """The published update for one batch whose best value is ``y_next_best`` (the TuRBO paper's rule)."""
    s = state
    if y_next_best > s.best_value + 1e-3 * abs(s.best_value):
        s = replace(s, success_counter=s.success_counter + 1, failure_counter=0)
    else:
        s = replace(s, success_counter=0, failure_counter=s.failure_counter + 1)
    if s.success_counter == s.success_tolerance:
        s = replace(s, length=min(2.0 * s.length, s.length_max), success_counter=0)
    elif s.failure_counter == s.failure_tolerance:
        s = replace(s, length=s.length / 2.0, failure_counter=0)
    s = replace(s, best_value=max(s.best_value, y_next_best))
    if s.length < s.length_min:
        s = replace(s, restart_triggered=True)
    return s


def trust_region(centre: Tensor, lengthscales: Tensor, length: float) -> tuple[Tensor, Tensor]:
    """(lower, upper) corners (d,) of the box centre ± w·L/2 in [0, 1]^d, w = ARD lengthscales normalised to
    mean 1 and then to geometric mean 1 (so the box volume is L^d before clamping)."""
    w = lengthscales / lengthscales.mean()
    w = w / torch.prod(w.pow(1.0 / len(w)))
    return (centre - w * length / 2).clamp(0.0, 1.0), (centre + w * length / 2).clamp(0.0, 1.0)


def fit_gp(X: Tensor, Y: Tensor, turbo_kernel: bool = True):
    """A SingleTaskGP on unit-cube inputs X (n, d) and hand-standardised Y (n,); TuRBO's Matérn-5/2 ARD kernel
    (lengthscale in [0.005, 4]) when ``turbo_kernel``, BoTorch's defaults otherwise. Fitted by marginal
    likelihood (fit_gpytorch_mll). Returns the model in eval mode."""
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from gpytorch.constraints import Interval
    from gpytorch.kernels import MaternKernel, ScaleKernel
    from gpytorch.mlls import ExactMarginalLogLikelihood

    y = ((Y - Y.mean()) / (Y.std() if len(Y) > 1 and Y.std() > 0 else 1.0)).unsqueeze(-1)
    covar = None
    if turbo_kernel:
        covar = ScaleKernel(MaternKernel(nu=2.5, ard_num_dims=X.shape[-1], lengthscale_constraint=Interval(0.005, 4.0)))
    model = SingleTaskGP(X, y, covar_module=covar, outcome_transform=None)
    fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    return model.eval()


class TuRBOAgent(UnitCubeAgent):
    """TuRBO-1 with Thompson sampling; see the module docstring."""

    METHOD = "turbo"

    @dataclass
    class Settings:
        length_init: float = setting(0.8, "initial trust-region side L (unit cube)", gt=0)
        length_min: float = setting(0.5 ** 7, "restart when L falls below this", gt=0)
        length_max: float = setting(1.6, "largest L", gt=0)
        success_tolerance: int = setting(10, "successes in a row that double L (paper 3, tutorial 10)", ge=1)
        n_candidates: int = setting(0, "Thompson-sampling candidates (0 = min(5000, max(2000, 200 d)))", ge=0)

    @classmethod
    def resolve_config(cls, task: TaskInfo, overrides: dict) -> dict:
        c = super().resolve_config(task, overrides)
        if not c["length_min"] < c["length_init"] <= c["length_max"]:
            raise ValueError(f"need length_min < length_init <= length_max, got {c['length_min']}, "
                             f"{c['length_init']}, {c['length_max']}")
        return c

    def __init__(self, task: TaskInfo, config: Optional[dict] = None, seed: int = 0):
        super().__init__(task, config, seed)
        self.local_start = 0  # first index of the points since the last restart
        self.batch_start = 0  # first index of the latest batch
        self.state: Optional[TurboState] = None
        self.restarts = 0

    def after_load(self) -> None:
        if self.state is not None:
            with torch.enable_grad():
                self.model = fit_gp(self.X[self.local_start:], self.Y[self.local_start:])

    def _new_state(self, q: int) -> TurboState:
        c = self.cfg
        return TurboState(dim=self.dim, batch_size=max(1, q), length=c.length_init,
                          length_min=c.length_min, length_max=c.length_max,
                          success_tolerance=c.success_tolerance)

    def observe(self, designs: Tensor, values: Tensor) -> None:
        self.batch_start = len(self.Y)
        super().observe(designs, values)

    def posterior_mean(self, X: Tensor) -> Tensor:
        with torch.no_grad():
            return self.model.posterior(X).mean.reshape(-1)

    def improve(self) -> dict[str, float]:
        X, Y = self.X[self.local_start:], self.Y[self.local_start:]
        if len(Y) < 2:
            return {}
        with torch.enable_grad():
            self.model = fit_gp(X, Y)
        mu = self.posterior_mean(X)
        k = self.batch_start - self.local_start  # local index of the latest batch
        q = len(Y) - k
        if self.state is None or k <= 0:  # the batch was the (re)start design: it sets the best value
            self.state = replace(self._new_state(q), best_value=float(mu.max()))
        else:
            self.state = replace(self.state, best_value=float(mu[:k].max()))
            if self.state.batch_size != q:
                self.state = replace(self.state, batch_size=q)
            self.state = update_turbo_state(self.state, float(mu[k:].max()))
        stats = {"tr_length": self.state.length, "tr_success": float(self.state.success_counter),
                 "tr_failure": float(self.state.failure_counter), "gp_points": float(len(Y))}
        if self.state.restart_triggered:
            self.restarts += 1
            self.local_start, self.state, self.model = len(self.Y), None, None
        stats["restarts"] = float(self.restarts)
        return stats

    def propose(self, n: int, generator: torch.Generator) -> Tensor:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        if self.model is None or n == 0:
            u = sobol(n, self.dim, seed)
        else:
            u = self.thompson_batch(n, seed)
        return self.to_box(u)

    def thompson_batch(self, n: int, seed: int) -> Tensor:
        """n points (n, d) in the unit cube by Thompson sampling in the trust region."""
        from botorch.generation import MaxPosteriorSampling

        X = self.X[self.local_start:]
        centre = X[self.posterior_mean(X).argmax()]
        ls = self.model.covar_module.base_kernel.lengthscale.detach().reshape(-1).double()
        lower, upper = trust_region(centre, ls, self.state.length)
        n_cand = self.cfg.n_candidates or min(5000, max(2000, 200 * self.dim))
        n_cand = max(n_cand, n)
        g = torch.Generator().manual_seed(seed)
        pert = lower + (upper - lower) * sobol(n_cand, self.dim, seed)
        mask = torch.rand(n_cand, self.dim, generator=g, dtype=torch.float64) <= min(20.0 / self.dim, 1.0)
        none = torch.where(mask.sum(1) == 0)[0]
        mask[none, torch.randint(0, self.dim, (len(none),), generator=g)] = True
        cand = centre.expand(n_cand, self.dim).clone()
        cand[mask] = pert[mask]
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(seed)
            return MaxPosteriorSampling(model=self.model, replacement=False)(cand, num_samples=n).detach()
