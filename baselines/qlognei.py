"""qLogNEI (Ament et al. 2023): batch Bayesian optimisation with a SingleTaskGP and the log noisy expected
improvement, on the vector tier only (BoTorch ``closed_loop_botorch_only``).
Like TuRBO it ignores the diffusion prior and has no path KL.

    round 0: a scrambled Sobol design in the unit cube u = (x - lo) / (hi - lo)
    improve(): SingleTaskGP with BoTorch's defaults (RBF ARD with the dimension-scaled lengthscale prior,
               inferred noise, Standardize outcome) on every observation, inputs in the unit cube
    propose(n): qLogNoisyExpectedImprovement(X_baseline = observed points, prune_baseline, Sobol QMC
               sampler of ``mc_samples``), maximised by ``optimize_acqf`` over [0, 1]^d in chunks of ``q_chunk``
               points (joint within a chunk); earlier chunks are pending points of the later ones
               (sequential greedy), so a round of hundreds of queries stays tractable.

Cost grows with the round size (n / q_chunk acquisition optimisations, each over a baseline of every point
seen): it is the slowest method here on large rounds; ``num_restarts``, ``raw_samples`` and ``maxiter`` are
its budget knobs (the tutorial's 10, 512, 200 by default).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from baselines._bo import UnitCubeAgent, sobol
from sqdf_bbo.settings import setting

Tensor = torch.Tensor


class QLogNEIAgent(UnitCubeAgent):
    """GP + qLogNEI batch BO; see the module docstring."""

    METHOD = "qlognei"

    @dataclass
    class Settings:
        q_chunk: int = setting(8, "points optimised jointly per optimize_acqf call", ge=1)
        mc_samples: int = setting(256, "Sobol QMC posterior samples of the acquisition", ge=1)
        num_restarts: int = setting(10, "optimize_acqf restarts", ge=1)
        raw_samples: int = setting(512, "optimize_acqf raw samples for the initial conditions", ge=1)
        maxiter: int = setting(200, "L-BFGS-B iterations per restart", ge=1)

    def after_load(self) -> None:  # the GP is refitted from the saved data on resume
        if len(self.Y) >= 2:
            self.improve()

    def improve(self) -> dict[str, float]:
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from gpytorch.mlls import ExactMarginalLogLikelihood

        if len(self.Y) < 2:
            return {}
        model = SingleTaskGP(self.X, self.Y.unsqueeze(-1))  # defaults: Standardize outcome, inferred noise
        with torch.enable_grad():
            fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        self.model = model.eval()
        return {"gp_points": float(len(self.Y)),
                "gp_noise_std": float(model.likelihood.noise.detach().sqrt().mean()) * float(self.Y.std())}

    def propose(self, n: int, generator: torch.Generator) -> Tensor:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        u = sobol(n, self.dim, seed) if self.model is None or n == 0 else self.acquire(n, seed)
        return self.to_box(u)

    def acquire(self, n: int, seed: int) -> Tensor:
        """n points (n, d) in the unit cube by sequential-greedy chunks of joint qLogNEI optimisation."""
        from botorch.acquisition.logei import qLogNoisyExpectedImprovement
        from botorch.optim import optimize_acqf
        from botorch.sampling import SobolQMCNormalSampler

        c = self.cfg
        bounds = torch.stack([torch.zeros(self.dim), torch.ones(self.dim)]).double()
        picked: list[Tensor] = []
        with torch.random.fork_rng(), torch.enable_grad():  # the harness may call propose under no_grad
            torch.manual_seed(seed)
            acq = qLogNoisyExpectedImprovement(
                self.model, X_baseline=self.X, prune_baseline=True,
                sampler=SobolQMCNormalSampler(torch.Size([c.mc_samples]), seed=seed))
            for i in range(0, n, c.q_chunk):
                q = min(c.q_chunk, n - i)
                acq.set_X_pending(torch.cat(picked) if picked else None)
                x, _ = optimize_acqf(acq, bounds=bounds, q=q, num_restarts=c.num_restarts,
                                     raw_samples=c.raw_samples,
                                     options={"batch_limit": 5, "maxiter": c.maxiter})
                picked.append(x.detach())
        return torch.cat(picked)
