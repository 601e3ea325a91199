"""Budgeted Gymnasium environment over a :class:`~sqdf_bbo.tasks.base.Task` (one episode = one run).

The oracle is reachable only through :meth:`BudgetedOracleEnv.step`; every design sent costs one query of
the budget, duplicates included. A batch that would exceed what is left raises
:class:`BudgetExceededError` *before* the oracle is called and charges nothing.

* action: a batch of designs, shape ``(m, *design_shape)`` with ``m >= 1``. ``action_space`` declares the
  default batch ``(batch_size, *design_shape)`` (float32, the task's bounds); any ``m`` up to the budget left
  is accepted, and numpy arrays or torch tensors of any float dtype are passed to the oracle unchanged.
* observation: ``{"budget_left": (1,) float32, "queries_used": (1,) float32}``, both in ``[0, budget]``.
* reward: float mean of the batch's observed (noisy) values.
* info: ``{"values": (m,) float64 observed values, "queries_used": int, "budget_left": int}``. Noise-free
  values never appear here; the harness reads them from the task itself.
* observation noise: ``N(0, task.noise_std**2)`` drawn from the env's seeded ``self.np_random``.

Every task of :func:`sqdf_bbo.tasks.list_tasks` is registered as ``"sqdf_bbo/<name>-v0"`` when this module
is imported (and again, for tasks added later, by :func:`register_envs` / :func:`make_env`)::

    env = gymnasium.make("sqdf_bbo/ackley-v0", budget=1000, batch_size=16)
"""
from __future__ import annotations

import os

from typing import Any, Optional, Union

import gymnasium
import numpy as np
import torch
from gymnasium import spaces

from sqdf_bbo.tasks import Task, list_tasks, make_task

NAMESPACE = "sqdf_bbo"
ENTRY_POINT = "sqdf_bbo.envs:BudgetedOracleEnv"
OUT_OF_BOUNDS_MODES = ("allow", "clip", "error")


class BudgetExceededError(RuntimeError):
    """A batch asked for more oracle queries than the budget has left (nothing was charged)."""


class OracleError(RuntimeError):
    """The task's oracle raised while scoring a batch (nothing was charged; the call may be retried)."""


def env_id(task_name: str) -> str:
    """Gymnasium id of a task's environment, e.g. ``"sqdf_bbo/ackley-v0"``."""
    return f"{NAMESPACE}/{task_name}-v0"


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


class BudgetedOracleEnv(gymnasium.Env):
    """Online black-box optimisation of one task under a query budget.

    Args:
        task: a registered task name or a :class:`Task` instance.
        budget: total number of oracle queries in one episode (>= 1).
        batch_size: the declared batch of ``action_space`` (default: the task's ``run_defaults.batch_size``
            or 1, shrunk to the budget when that is smaller); must be <= budget. Batches of any other size ``m >= 1`` are accepted by :meth:`step`.
        task_kwargs: overrides passed to ``make_task(task, **task_kwargs)`` (only with a task name).
        out_of_bounds: what to do with designs outside ``task.info.bounds``: ``"allow"`` (default; the oracle
            sees them as sent, so the harness's noise-free values match), ``"clip"`` (project onto the box
            first), ``"error"`` (raise ValueError, charging nothing).
        report_true: also return the noise-free values in ``info["true_values"]`` (harness only: the runner
            logs them, so each query is scored once; off for anything an optimiser sees).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        task: Union[str, Task],
        budget: int,
        batch_size: Optional[int] = None,
        task_kwargs: Optional[dict] = None,
        out_of_bounds: str = "allow",
        render_mode: Optional[str] = None,
        report_true: bool = False,
    ):
        super().__init__()
        if isinstance(task, str):
            task = make_task(task, **(task_kwargs or {}))
        elif isinstance(task, Task):
            if task_kwargs:
                raise ValueError(
                    f"task_kwargs {sorted(task_kwargs)} are only allowed with a task name, not a Task instance"
                )
        else:
            raise TypeError(f"task must be a task name (str) or a Task instance, got {type(task).__name__}")
        if out_of_bounds not in OUT_OF_BOUNDS_MODES:
            raise ValueError(f"out_of_bounds must be one of {OUT_OF_BOUNDS_MODES}, got {out_of_bounds!r}")
        if render_mode is not None:
            raise ValueError(f"render_mode must be None (no render modes), got {render_mode!r}")
        self._task = task
        self.budget = _check_int("budget", budget, 1)
        if batch_size is None:  # the task's default batch, shrunk to a smaller budget (as the runner does)
            declared = task.info.run_defaults.batch_size
            batch_size = min(int(1 if declared is None else declared), self.budget)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        if self.batch_size > self.budget:
            raise ValueError(f"batch_size must be <= budget={self.budget}, got {self.batch_size}")
        self.out_of_bounds = out_of_bounds
        self.report_true = bool(report_true)
        self.render_mode = render_mode
        self.design_shape = tuple(int(s) for s in task.info.design_shape)
        self.noise_std = float(task.noise_std)
        if not (np.isfinite(self.noise_std) and self.noise_std >= 0):
            raise ValueError(f"task {task.name!r} has noise_std={self.noise_std}; must be finite and >= 0")

        shape = (self.batch_size, *self.design_shape)
        if task.info.bounds is None:
            lo = np.full(shape, -np.inf, np.float32)
            hi = np.full(shape, np.inf, np.float32)
            self._lo = self._hi = None
        else:
            lo_t, hi_t = (torch.as_tensor(b, dtype=torch.float64) for b in task.info.bounds)
            self._lo = np.broadcast_to(lo_t.numpy(), self.design_shape).astype(np.float64)
            self._hi = np.broadcast_to(hi_t.numpy(), self.design_shape).astype(np.float64)
            lo = np.broadcast_to(self._lo, shape).astype(np.float32)
            hi = np.broadcast_to(self._hi, shape).astype(np.float32)
        self.action_space = spaces.Box(lo, hi, shape=shape, dtype=np.float32)
        self.observation_space = spaces.Dict(
            {
                "budget_left": spaces.Box(0.0, float(self.budget), (1,), np.float32),
                "queries_used": spaces.Box(0.0, float(self.budget), (1,), np.float32),
            }
        )
        self.queries_used = 0

    # ---- bookkeeping ----------------------------------------------------------------------------
    @property
    def budget_left(self) -> int:
        return self.budget - self.queries_used

    @property
    def task_name(self) -> str:
        return self._task.name

    def _obs(self) -> dict:
        return {
            "budget_left": np.array([self.budget_left], dtype=np.float32),
            "queries_used": np.array([self.queries_used], dtype=np.float32),
        }

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        """Start a run: full budget, noise RNG reseeded when ``seed`` is given."""
        super().reset(seed=seed)
        if options:
            raise ValueError(f"reset takes no options, got {sorted(options)}")
        self.queries_used = 0
        return self._obs(), {"queries_used": 0, "budget_left": self.budget}

    # ---- the oracle -----------------------------------------------------------------------------
    def _as_designs(self, action: Any) -> torch.Tensor:
        if isinstance(action, torch.Tensor):
            x = action.detach().cpu()
        else:
            try:
                arr = np.asarray(action)
            except Exception as e:  # ragged lists etc.
                raise ValueError(f"action must be an array of shape (m, *{self.design_shape}); {e}") from None
            if arr.dtype.kind not in "fiu":
                raise TypeError(f"action must be a real numeric array, got dtype {arr.dtype}")
            x = torch.from_numpy(np.ascontiguousarray(arr))
        if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64,
                                                     torch.uint8)):
            raise TypeError(f"action must be a real numeric array, got dtype {x.dtype}")
        if not x.is_floating_point():
            x = x.double()
        if x.ndim != 1 + len(self.design_shape) or tuple(x.shape[1:]) != self.design_shape or x.shape[0] < 1:
            raise ValueError(
                f"action must have shape (m, {', '.join(map(str, self.design_shape))}) with m >= 1 "
                f"(declared default batch {tuple(self.action_space.shape)}); got shape {tuple(x.shape)}"
            )
        if not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).reshape(x.shape[0], -1).any(dim=1).sum())
            raise ValueError(f"action contains non-finite values (NaN or inf) in {bad} of {x.shape[0]} designs")
        if self._lo is not None and self.out_of_bounds != "allow":
            lo = torch.as_tensor(self._lo, dtype=x.dtype)
            hi = torch.as_tensor(self._hi, dtype=x.dtype)
            if self.out_of_bounds == "clip":
                x = torch.minimum(torch.maximum(x, lo), hi)
            else:
                outside = ((x < lo) | (x > hi)).reshape(x.shape[0], -1).any(dim=1)
                if bool(outside.any()):
                    raise ValueError(
                        f"{int(outside.sum())} of {x.shape[0]} designs lie outside the task bounds "
                        f"[{self._lo.min():g}, {self._hi.max():g}] (out_of_bounds='error'); nothing was charged"
                    )
        return x

    def step(self, action: Any):
        """Query the oracle on a batch (m, *design_shape); returns (obs, reward, terminated, False, info).

        Raises BudgetExceededError if m > budget_left (nothing charged, oracle not called), ValueError /
        TypeError for a malformed action.
        """
        x = self._as_designs(action)
        m = int(x.shape[0])
        if m > self.budget_left:
            raise BudgetExceededError(
                f"batch of {m} designs exceeds the budget left ({self.budget_left} of {self.budget}; "
                f"{self.queries_used} used); nothing was charged. Send at most {self.budget_left} designs"
                + (" or reset()" if self.budget_left == 0 else "")
            )
        try:
            true = self._task.evaluate_true(x)
        except Exception as e:  # noqa: BLE001 - any oracle failure: nothing charged, the caller may retry
            raise OracleError(f"task {self.task_name!r} oracle raised {type(e).__name__}: {e}") from e
        true = np.asarray(torch.as_tensor(true).detach().cpu().double().numpy(), dtype=np.float64)
        log = os.environ.get("SQDF_BBO_ORACLE_LOG")  # benchmark hook (benchmarks/fault_injection.py)
        if log:
            with open(log, "a") as f:
                f.write(f"{m}\n")
        if true.shape != (m,):
            raise RuntimeError(
                f"task {self.task_name!r} evaluate_true returned shape {true.shape} for {m} designs; expected ({m},)"
            )
        self.queries_used += m  # charged once the oracle has been called
        noise = self.np_random.normal(0.0, 1.0, size=m) * self.noise_std
        values = true + noise
        reward = float(values.mean())
        terminated = self.budget_left == 0
        info = {"values": values, "queries_used": self.queries_used, "budget_left": self.budget_left}
        if self.report_true:
            info["true_values"] = true
        return self._obs(), reward, terminated, False, info

    # ---- checkpointing --------------------------------------------------------------------------
    def get_state(self) -> dict:
        """JSON-serialisable state: budget used and the noise RNG's bit-generator state."""
        bg = self.np_random.bit_generator
        return {
            "task": self.task_name,
            "budget": self.budget,
            "queries_used": self.queries_used,
            "bit_generator": type(bg).__name__,
            "rng_state": bg.state,
        }

    def set_state(self, state: dict) -> None:
        """Restore :meth:`get_state` output exactly (same task and budget required)."""
        for key in ("task", "budget", "queries_used", "bit_generator", "rng_state"):
            if key not in state:
                raise KeyError(f"env state lacks {key!r}; expected keys from get_state()")
        if state["task"] != self.task_name or int(state["budget"]) != self.budget:
            raise ValueError(
                f"state is for task {state['task']!r} with budget {state['budget']}; this env is "
                f"{self.task_name!r} with budget {self.budget}"
            )
        used = _check_int("queries_used", state["queries_used"], 0)
        if used > self.budget:
            raise ValueError(f"queries_used={used} exceeds budget {self.budget}")
        bg_cls = getattr(np.random, str(state["bit_generator"]), None)
        if bg_cls is None or not isinstance(bg_cls, type) or not issubclass(bg_cls, np.random.BitGenerator):
            raise ValueError(f"unknown bit generator {state['bit_generator']!r}")
        bg = bg_cls()
        bg.state = state["rng_state"]
        self.np_random = np.random.Generator(bg)
        self.queries_used = used


# ---- registration -----------------------------------------------------------------------------------
def register_envs() -> list[str]:
    """Register ``sqdf_bbo/<name>-v0`` for every task in ``list_tasks()`` not yet registered; returns all ids."""
    ids = []
    for name in list_tasks():
        eid = env_id(name)
        if eid not in gymnasium.registry:
            gymnasium.register(id=eid, entry_point=ENTRY_POINT, kwargs={"task": name})
        ids.append(eid)
    return ids


def make_env(task: str, budget: int, batch_size: Optional[int] = None, **kwargs) -> gymnasium.Env:
    """``gymnasium.make`` for a task name (registering late tasks first); unknown names list what exists."""
    ids = register_envs()
    eid = env_id(task)
    if eid not in ids:
        raise ValueError(f"unknown task {task!r}; allowed: {', '.join(list_tasks())}")
    return gymnasium.make(eid, budget=budget, batch_size=batch_size, **kwargs)


register_envs()

__all__ = ["BudgetedOracleEnv", "BudgetExceededError", "OracleError", "register_envs", "make_env", "env_id"]
