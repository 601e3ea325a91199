"""Harness isolation: nothing an agent receives (the TaskInfo) leads back to the harness-side Task, its
oracle or its environment. A hostile walk follows every attribute, bound-method owner, closure cell,
functools.partial argument, module buffer and container reachable from the TaskInfo (not module
globals: any Python code can import the package and build its own task, but not reach the run's
oracle, its noise generator or its budget)."""
from __future__ import annotations

import functools
import types

import pytest
import torch

from sqdf_bbo.envs import BudgetedOracleEnv
from sqdf_bbo.tasks import Task, make_task
from sqdf_bbo.tasks.base import TaskInfo


def reachable(root, max_nodes: int = 200_000):
    """Every object reachable from ``root`` through the routes a hostile agent would try."""
    seen, stack, out = set(), [root], []
    while stack and len(seen) < max_nodes:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (types.ModuleType, type, str, bytes, int, float, bool, type(None))):
            continue
        seen.add(id(obj))
        out.append(obj)
        if isinstance(obj, torch.Tensor):
            continue
        nxt = []
        if isinstance(obj, (types.MethodType, types.BuiltinMethodType)):
            nxt.append(getattr(obj, "__self__", None))
            nxt.append(getattr(obj, "__func__", None))
        if isinstance(obj, types.FunctionType):
            nxt += [c.cell_contents for c in (obj.__closure__ or ()) if c.cell_contents is not None]
            nxt += list(obj.__defaults__ or ()) + list((obj.__kwdefaults__ or {}).values())
        if isinstance(obj, functools.partial):
            nxt += [obj.func, *obj.args, *obj.keywords.values()]
        if isinstance(obj, dict):
            nxt += list(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            nxt += list(obj)
        d = getattr(obj, "__dict__", None)
        if isinstance(d, dict):
            nxt += list(d.values())
        stack += [o for o in nxt if o is not None]
    return out


@pytest.mark.parametrize("name", ["levy", "ackley-manifold", "aesthetic", "compressibility"])
def test_task_info_reaches_no_task_oracle_or_env(name):
    task = make_task(name)
    env = BudgetedOracleEnv(task, budget=8, batch_size=8)
    info = task.info
    assert isinstance(info, TaskInfo)
    found = [type(o).__name__ for o in reachable(info) if isinstance(o, (Task, BudgetedOracleEnv)) or o is task]
    assert not found, f"{name}: TaskInfo reaches {found}"
    # the obvious attempts, one by one
    assert getattr(info.features, "__self__", None) is not task
    assert not isinstance(getattr(info.make_backbone, "__self__", None), Task)
    backbone = info.make_backbone()
    assert not any(isinstance(o, (Task, BudgetedOracleEnv)) for o in reachable(backbone))
    del env


def test_eval_kl_uses_the_harness_reference_not_the_agents():
    """An agent that shifts its policy but answers reference_eps with its own policy (and samples through an
    overridden sample()) would report KL 0 if the harness trusted it; the harness measures against its own
    frozen backbone and draws the evaluation trajectories itself."""
    import copy

    from sqdf_bbo.agents.pretrained import PretrainedAgent
    from sqdf_bbo.diffusion import DDIMSchedule, path_kl, sample_trajectory
    from sqdf_bbo.run import evaluate_policy
    from sqdf_bbo.tasks import make_task

    class Cheat(PretrainedAgent):
        def __init__(self, task, config=None, seed=0):
            super().__init__(task, config, seed)
            self.policy = copy.deepcopy(self.reference)
            with torch.no_grad():
                for p in self.policy.parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))

        def reference_eps(self, x, t, cond=None):
            return self.policy(x, t, cond)

        def sample(self, *a, **k):
            raise AssertionError("the harness must not sample through the agent")

    task = make_task("levy")
    agent = Cheat(task.info, {"num_steps": 5}, seed=0)
    ref = task.harness_reference()
    ev, designs = evaluate_policy(agent, task, 32, torch.Generator().manual_seed(3), ref)
    assert ev["path_kl"] > 0.01
    sched = DDIMSchedule.from_scheduler(ref.scheduler, 5, 1.0)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn((32, *ref.latent_shape), generator=g)
    traj = sample_trajectory(agent.policy, sched, x0, generator=g)
    assert ev["path_kl"] == pytest.approx(float(path_kl(agent.policy, ref, sched, traj).mean()), rel=1e-6)
