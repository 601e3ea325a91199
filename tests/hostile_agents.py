"""Hostile plug-in agents for tests/test_hostile.py (``--method hostile_agents:ClassName``).

Each one breaks one rule of the agent interface on purpose; the harness must notice, refuse in one line or
stay unaffected."""
from __future__ import annotations

import functools
import os
import sys
import types

import torch

from sqdf_bbo.agents.base import Agent
from sqdf_bbo.agents.pretrained import PretrainedAgent


def _tensors(obj, seen=None):
    """Every tensor reachable from obj through containers, dataclass fields, partial arguments, closure
    cells and module buffers/parameters (the routes a hostile agent would take)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or obj is None or isinstance(obj, (str, int, float, bool, type, types.ModuleType)):
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
        return
    if isinstance(obj, torch.nn.Module):
        yield from obj.parameters()
        yield from obj.buffers()
    if isinstance(obj, functools.partial):
        for x in (obj.func, *obj.args, *obj.keywords.values()):
            yield from _tensors(x, seen)
    if isinstance(obj, types.FunctionType):
        for c in obj.__closure__ or ():
            try:
                yield from _tensors(c.cell_contents, seen)
            except ValueError:  # an empty cell
                pass
    if isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors(x, seen)
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _tensors(x, seen)
    elif hasattr(obj, "__dataclass_fields__"):
        for name in obj.__dataclass_fields__:
            yield from _tensors(getattr(obj, name), seen)


def vandalise(info) -> int:
    """Overwrite every tensor reachable from a TaskInfo (the box shrunk onto levy's optimum x = 1, features
    zeroed) and its defaults (agent and run); returns how many tensors were hit."""
    n = 0
    with torch.no_grad():
        for t in _tensors(info):
            if t.is_floating_point():
                t.fill_(1 + 1e-3 if n % 2 else 1 - 1e-3)
                n += 1
    info.agent_defaults["num_steps"] = 1  # in place: the harness's dict must be another one
    info.run_defaults = type(info.run_defaults)(n_eval=1, batch_size=1)
    return n


class Vandal(PretrainedAgent):
    """The pretrained model, but it overwrites every tensor it is handed: the TaskInfo (before and after
    building its own backbone), the designs and values of observe, and the generator of propose."""

    def __init__(self, task, config=None, seed=0):
        self.hits = vandalise(task)
        super().__init__(task, config, seed)
        vandalise(task)

    def propose(self, n, generator):
        out = super().propose(n, generator)
        generator.manual_seed(0)
        return out

    def observe(self, designs, values):
        with torch.no_grad():
            designs.fill_(1.0)
            values.fill_(0.0)


class BadOutput(Agent):
    """Uniform designs in the box, except when ``when`` ('eval' or 'query') matches the call: then the
    output broken as ``mode`` says."""

    default_config = {"mode": "none", "when": "eval"}

    def propose(self, n, generator):
        lo, hi = (torch.as_tensor(b, dtype=torch.float32) for b in self.task.bounds)
        x = lo + (hi - lo) * torch.rand((n, *self.task.design_shape), generator=generator)
        in_eval = _in_evaluation()
        if (self.config["when"] == "eval") != in_eval:
            return x
        mode = self.config["mode"]
        if mode == "too_many":
            return x.repeat(11, 1)
        if mode == "too_few":
            return x[:-1]
        if mode == "shape":
            return x.reshape(n, -1, 2)
        if mode == "int":
            return x.round().long()
        if mode == "nan":
            x[0, 0] = float("nan")
            return x
        if mode == "list":
            return x.tolist()
        return x


def _frames():
    import inspect

    return inspect.stack(0)


def _in_evaluation() -> bool:
    """Whether the harness's evaluation called propose (in this process, or in an agent process)."""
    return any(f.function in ("evaluate_policy", "_evaluation_propose") for f in _frames())


class Exits(Agent):
    """Uniform designs; calls ``sys.exit(0)`` (or raises KeyboardInterrupt) in the call that the environment
    variable HOSTILE_EXIT names: init, propose, observe, improve or evaluation (HOSTILE_EXIT_HOW=interrupt)."""

    def __init__(self, task, config=None, seed=0):
        super().__init__(task, config, seed)
        self._maybe_exit("init")

    @staticmethod
    def _maybe_exit(call):
        if os.environ.get("HOSTILE_EXIT") == call:
            if os.environ.get("HOSTILE_EXIT_HOW") == "interrupt":
                raise KeyboardInterrupt
            sys.exit(0)

    def propose(self, n, generator):
        in_eval = _in_evaluation()
        self._maybe_exit("evaluation" if in_eval else "propose")
        lo, hi = (torch.as_tensor(b, dtype=torch.float32) for b in self.task.bounds)
        return lo + (hi - lo) * torch.rand((n, *self.task.design_shape), generator=generator)

    def observe(self, designs, values):
        self._maybe_exit("observe")

    def improve(self):
        self._maybe_exit("improve")
        return {}


class Slow(Agent):
    """Uniform designs; sleeps HOSTILE_SLOW_S seconds in every improve (a run that holds its folder a while)."""

    def propose(self, n, generator):
        lo, hi = (torch.as_tensor(b, dtype=torch.float32) for b in self.task.bounds)
        return lo + (hi - lo) * torch.rand((n, *self.task.design_shape), generator=generator)

    def improve(self):
        import time

        time.sleep(float(os.environ.get("HOSTILE_SLOW_S", "0")))
        return {}


# ---- agents that attack the harness's process (tests/test_agent_process.py) ----------------------------
def _report(data: dict) -> None:
    """Write what the agent found to HOSTILE_REPORT (a path the test gives, outside the run folder)."""
    import json

    path = os.environ.get("HOSTILE_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(data, f)


def _uniform(task, n, generator):
    lo, hi = (torch.as_tensor(b, dtype=torch.float32) for b in task.bounds)
    return lo + (hi - lo) * torch.rand((n, *task.design_shape), generator=generator)


class GcHunter(Agent):
    """Walks gc.get_objects() and every frame above it for the env, its oracle, the Task, the run and its
    state and journal; resets the budget it finds, asks the oracle for free noise-free values and rewinds
    the run's query records. Reports what it found (class names)."""

    TARGETS = ("BudgetedOracleEnv", "Run", "RunState", "QueryJournal", "Task", "SyntheticTask")

    def __init__(self, task, config=None, seed=0):
        super().__init__(task, config, seed)
        self.found: list = []
        self._attack()

    def _attack(self) -> None:
        import gc

        found = []
        objs = list(gc.get_objects())
        f = sys._getframe()
        while f is not None:
            objs += list(f.f_locals.values())
            f = f.f_back
        for o in objs:
            name = type(o).__name__
            if name not in self.TARGETS and not any(c.__name__ in self.TARGETS for c in type(o).__mro__[1:]):
                continue
            found.append(name)
            for attr, v in (("queries_used", 0), ("budget", 10**9)):  # the env: a fresh budget
                try:
                    setattr(o, attr, v)
                except Exception:
                    pass
            for oracle in ("evaluate_true", "oracle"):  # the task: free noise-free values
                try:
                    getattr(o, oracle)(torch.zeros(4, *self.task.design_shape))
                except Exception:
                    pass
            try:
                o.queries.clear()  # the run state: forget what was bought
            except Exception:
                pass
        self.found = sorted(set(self.found) | set(found))
        _report({"found": self.found})

    def propose(self, n, generator):
        self._attack()
        return _uniform(self.task, n, generator)

    def improve(self):
        self._attack()
        return {}


class Snoop(Agent):
    """Looks for the run folder in its own command line, environment, working directory and open files;
    reports every string that names a path."""

    def __init__(self, task, config=None, seed=0):
        super().__init__(task, config, seed)
        seen = {"cmdline": open("/proc/self/cmdline", "rb").read().decode(errors="replace"),
                "environ": "\n".join(f"{k}={v}" for k, v in os.environ.items()),
                "cwd": os.getcwd(), "argv": " ".join(sys.argv)}
        fds = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                fds.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass
        seen["fds"] = "\n".join(fds)
        _report(seen)

    def propose(self, n, generator):
        return _uniform(self.task, n, generator)


class Faulty(Agent):
    """Uniform designs, with the fault HOSTILE_FAULT names: 'exit3' (os._exit(3) in a round's propose),
    'segv' (a segfault in improve), 'sleep' (sleeps an hour in a round's propose), 'thread' (leaves a non-daemon thread running
    forever, from __init__), 'raise' (ValueError in observe)."""

    def __init__(self, task, config=None, seed=0):
        super().__init__(task, config, seed)
        if os.environ.get("HOSTILE_FAULT") == "thread":
            import threading
            import time

            threading.Thread(target=lambda: time.sleep(10**6), daemon=False).start()

    def propose(self, n, generator):
        fault = os.environ.get("HOSTILE_FAULT") if not _in_evaluation() else None
        if fault == "exit3":
            os._exit(3)
        if fault == "sleep":
            import time

            time.sleep(3600)
        return _uniform(self.task, n, generator)

    def observe(self, designs, values):
        if os.environ.get("HOSTILE_FAULT") == "raise":
            raise ValueError("observe is broken")

    def improve(self):
        if os.environ.get("HOSTILE_FAULT") == "segv":
            import ctypes

            ctypes.string_at(0)
        return {}


from sqdf_bbo.agents.sqdf import SQDFAgent  # noqa: E402


class PlainSQDF(SQDFAgent):
    """SQDF unchanged, as a plug-in: an honest agent with a policy, fine-tuning and mid-round checkpoints."""


class _Wrapped(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, t, cond=None):
        return self.inner(x, t, cond)


class WrappedPolicy(PretrainedAgent):
    """The pretrained model behind a wrapper module whose weights do not fit the task's backbone (other
    names): an isolated run evaluates it through per-step noise predictions from the agent's process."""

    def sampling_policy(self):
        return _Wrapped(self.policy)
