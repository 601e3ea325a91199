"""Evaluation, harness side: never shown to the agent, never charged to the budget.

The agent is asked one declared question, ``agent.evaluation_sampler(settings)`` (sqdf_bbo/agents/base.py:
``Agent.evaluation_sampler``, None for agents that are not a diffusion policy the harness can sample): a
diffusion policy's noise predictor and its DDIM settings, with which the harness draws the evaluation
trajectories itself; anything else is evaluated through its ``propose``.
"""
from __future__ import annotations

import copy
from typing import Any, Optional

import numpy as np
import torch

from sqdf_bbo.harness.guard import agent_call, check_designs


def evaluate_policy(agent, task, n_eval: int, generator: torch.Generator,
                    reference: Optional[Any] = None, method: str = "the agent",
                    config: Optional[dict] = None) -> tuple[dict, torch.Tensor]:
    """Eval reward (noise-free oracle mean), path KL to the pretrained model, diversity (``vendi``, and
    ``vendi_valid`` / ``n_valid`` where the task defines validity), naturalness.

    For a diffusion policy (``agent.evaluation_sampler(config)`` is not None) the harness draws the evaluation
    trajectories itself (its own DDIM schedule and noise, the agent's noise predictor) and measures the path
    KL against ``reference``, the harness's own frozen pretrained backbone (``Task.harness_reference``; the
    agent's reference only where that is None): nothing the agent records or overrides enters the evaluation.
    ``config``: the run's own copy of the agent's settings, from which the sampler's schedule is read
    (default: the agent's); designs from ``propose`` are checked (:func:`check_designs`)."""
    from sqdf_bbo.agent_process import IsolatedAgent
    from sqdf_bbo.diffusion import DDIMSchedule, path_kl, sample_trajectory
    from sqdf_bbo.metrics import diversity

    extra: dict = {}
    conds = task.eval_conditions(n_eval)  # held-out prompts (None for unconditional tiers)
    declared = getattr(agent, "evaluation_sampler", None)  # a plain proposer has none
    with agent_call(method, "evaluation"):
        sampler = declared(config) if callable(declared) else None
    if sampler is not None:
        ref = reference if reference is not None else sampler.reference
        sched = DDIMSchedule.from_scheduler(ref.scheduler, int(sampler.num_steps), float(sampler.eta))
        designs, kls = [], []
        bs = int(sampler.batch)
        with agent_call(method, "evaluation"):  # the agent's noise predictor runs in the harness's sampling loop
            policy = sampler.policy
            for i in range(0, n_eval, bs):
                m = min(bs, n_eval - i)
                x0 = ref.initial_noise(m, generator, sched)
                with torch.no_grad():
                    traj = sample_trajectory(policy, sched, x0, cond=None if conds is None else conds[i:i + m],
                                             generator=generator, record_means=True)
                    designs.append(ref.decode(traj.final).detach())
                kls.append(path_kl(policy, ref, sched, traj))
        designs = torch.cat(designs)
        kl = float(torch.cat(kls).mean())
    else:
        with agent_call(method, "evaluation"), torch.no_grad():
            cond = None if conds is None else copy.deepcopy(conds)  # the agent gets its own copy
            if isinstance(agent, IsolatedAgent):
                designs = agent.propose_for_evaluation(n_eval, generator, cond)
            else:
                designs = agent.propose(n_eval, generator) if conds is None else agent.propose(n_eval, generator, cond=cond)
            analytic = getattr(agent, "analytic_path_kl", None)
            kl = float(analytic()) if callable(analytic) else float("nan")
        designs = check_designs(designs, n_eval, tuple(task.info.design_shape), method,
                                f"during evaluation (its propose({n_eval}) call)")
        if callable(analytic):
            extra["path_kl_analytic"] = 1.0  # a closed form of the sampling rule, not measured on trajectories
    values = task.evaluate_true(designs)
    out = {"eval_reward": float(values.mean()), "eval_reward_std": float(values.std()), "path_kl": kl, **extra}
    for name, v in task.extra_values(designs).items():
        out[f"eval_{name}"] = float(torch.as_tensor(v).double().mean())
    out.update({k: v for k, v in diversity(task, designs).items() if k != "vendi_kernel"})  # numbers only
    out.update(task.naturalness(designs))
    return out, designs


def curve_summary(true_values: np.ndarray, budget: int) -> dict:
    """Best-so-far and top-k means of the noise-free values of every queried design. A NaN value (an oracle
    that failed to score a design) counts as the worst possible outcome, -inf; ``nonfinite_values`` counts them."""
    from sqdf_bbo.metrics import auc_top_k

    true_values = np.asarray(true_values, dtype=np.float64)
    out = {"queries_used": int(len(true_values)), "nonfinite_values": int((~np.isfinite(true_values)).sum())}
    true_values = np.where(np.isnan(true_values), -np.inf, true_values)
    if len(true_values) == 0:
        return out
    srt = np.sort(true_values)[::-1]
    out["best_so_far"] = float(srt[0])
    for k in (1, 10, 100):
        out[f"top{k}"] = float(srt[:k].mean())
    out["auc_top10"] = float(auc_top_k(true_values, k=10, budget=budget))
    return out
