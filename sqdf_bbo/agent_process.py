"""An agent in a child process: the harness keeps the env, the oracle, the run state, the journal, the run
folder and the evaluation; the agent's code runs in a fresh interpreter that holds none of them.

The child is started as ``python -m sqdf_bbo.agent_process <fd>`` (a new interpreter, like
multiprocessing's "spawn": nothing of the harness's memory is inherited; fork would copy the env and the
oracle into it) in a new session, with its working directory in a fresh temporary folder, stdin closed,
stdout sent to the harness's stderr, no file descriptor of the harness but one socket, and an environment
from which every variable naming the run folder or ``--out`` is removed. It dies with the harness
(``PR_SET_PDEATHSIG``).

Messages: harness -> child are pickles (the child trusts the harness); child -> harness are never
unpickled: ``8-byte length | JSON header | safetensors blob`` (:func:`pack`, :func:`unpack`). The child
receives a copy of the TaskInfo, the run's seed and settings, the generator state of each proposal and the
observed values; it returns designs and statistics (numbers) and, for checkpoints, its state already
encoded by sqdf_bbo/checkpoint.py (JSON + tensors), which the harness writes itself.

Failures: an exception, ``sys.exit`` or KeyboardInterrupt in the agent is reported by the child; a crash
(``os._exit``, a signal such as SIGSEGV) is seen as the socket's end and the child's exit status; a call
that does not answer within its timeout kills the child's whole process group. Each ends the run with one
line naming the method and the call (:class:`AgentProcessError`).
"""
from __future__ import annotations

import copy
import json
import os
import pickle
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import types
from multiprocessing.connection import Connection
from typing import Any, Optional

import torch

#: the largest message a child may send (bytes): a bound on what a hostile child can make the harness read
MAX_MESSAGE_BYTES = 8 << 30
#: seconds a closing child gets to answer before it is killed
CLOSE_WAIT_S = 5.0
#: the least time a child gets to start and import the agent's module (a fresh interpreter imports torch)
START_TIMEOUT_S = 600.0


# ---- wire format (child -> harness): JSON + safetensors, no pickle ------------------------------------
def pack(header: dict, tensors: Optional[dict] = None) -> bytes:
    """``header`` (JSON-able) and ``tensors`` (name -> CPU tensor) as one message."""
    from sqdf_bbo.checkpoint import tensor_bytes

    head = json.dumps(header).encode()
    blob = tensor_bytes({k: _plain(t) for k, t in tensors.items()}) if tensors else b""
    return struct.pack("<Q", len(head)) + head + blob


def unpack(data: bytes) -> tuple[dict, dict]:
    """(header, tensors) of a :func:`pack` message; ValueError if it is malformed (nothing is executed)."""
    from safetensors.torch import load as st_load

    if len(data) < 8:
        raise ValueError("a truncated message")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError("a truncated message")
    header = json.loads(data[8:8 + n].decode())
    if not isinstance(header, dict):
        raise ValueError("a message whose header is not an object")
    blob = data[8 + n:]
    try:
        tensors = st_load(blob) if blob else {}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"unreadable tensors ({e})") from None
    tensors.pop("_empty", None)
    return header, tensors


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.detach().as_subclass(torch.Tensor).cpu().contiguous().clone()


class AgentProcessError(Exception):
    """The agent process failed: ``kind`` is 'exception' (``type_name`` names the agent's exception),
    'exit', 'interrupt', 'crash', 'timeout' or 'protocol'; ``status`` the run's exit status."""

    def __init__(self, message: str, kind: str, call: str, type_name: str = "", status: int = 2):
        super().__init__(message)
        self.kind, self.agent_call, self.type_name, self.status = kind, call, type_name, status


# ---- the harness's side -------------------------------------------------------------------------------
class AgentProcess:
    """A child process holding one agent. ``call(op, call_name, **args)`` sends a request and returns the
    reply's (header, tensors); ``events`` (op -> function(header)) handles messages the child sends while
    it works (a mid-round checkpoint request) before its reply."""

    def __init__(self, method: str, hidden: list[str], timeout_s: Optional[float] = None):
        self.method = method
        self.timeout_s = timeout_s or None
        self.cwd = tempfile.mkdtemp(prefix="sqdf_bbo_agent_")
        parent_sock, child_sock = socket.socketpair()
        env = {k: v for k, v in os.environ.items() if not any(h and h in v for h in hidden)}
        env["PWD"] = self.cwd
        env.pop("OLDPWD", None)
        # the harness's intra-op thread count: another count changes float32 rounding of the same computation
        env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sqdf_bbo.agent_process", str(child_sock.fileno())],
                cwd=self.cwd, env=env, stdin=subprocess.DEVNULL, stdout=sys.__stderr__.fileno(),
                pass_fds=(child_sock.fileno(),), start_new_session=True)
        finally:
            child_sock.close()
        self.conn = Connection(parent_sock.detach())
        # the child imports nothing before it has the harness's import path
        path = [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
        self.conn.send_bytes(pickle.dumps(path))

    def call(self, op: str, call: str, events: Optional[dict] = None, timeout_s: Any = "default",
             **args) -> tuple[dict, dict]:
        """Request ``op`` (``call`` names it in errors); the reply's (header, tensors)."""
        self._send({"op": op, **args}, call)
        timeout = self.timeout_s if timeout_s == "default" else timeout_s
        while True:
            header, tensors = self._receive(call, timeout)
            if "event" in header:
                handler = (events or {}).get(header["event"])
                if handler is None:
                    raise self._protocol(call, f"an unexpected event {header['event']!r}")
                handler(header)
                self._send({"op": "continue"}, call)
                continue
            if "error" in header:
                raise self._failure(header, call)
            return header, tensors

    def _send(self, msg: dict, call: str) -> None:
        try:
            self.conn.send_bytes(pickle.dumps(msg))  # plain pickle: tensors by value, no shared memory
        except (OSError, EOFError):
            raise self._ended(call) from None

    def _receive(self, call: str, timeout: Optional[float]) -> tuple[dict, dict]:
        try:
            ready = self.conn.poll(timeout)
        except (OSError, EOFError):
            ready = True
        if not ready:
            self.kill()
            raise AgentProcessError(
                f"method {self.method!r} did not return from {call} within {timeout:g} s (run.agent_timeout_s); "
                "its process was stopped" + _RESUME, "timeout", call)
        try:
            data = self.conn.recv_bytes(MAX_MESSAGE_BYTES)
        except (OSError, EOFError):
            raise self._ended(call) from None
        try:
            return unpack(data)
        except ValueError as e:
            raise self._protocol(call, str(e)) from None

    def _ended(self, call: str) -> AgentProcessError:
        """The child's process ended (os._exit, a signal, the kernel's OOM killer) during ``call``."""
        try:
            code = self.proc.wait(CLOSE_WAIT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.returncode
        if code is not None and code < 0:
            try:
                how = f"was killed by signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with status {code}"
        return AgentProcessError(f"the process of method {self.method!r} {how} in {call}; the run stopped there"
                                 + _RESUME, "crash", call)

    def _protocol(self, call: str, what: str) -> AgentProcessError:
        self.kill()
        return AgentProcessError(f"the process of method {self.method!r} sent {what[:200]} in {call}; it was stopped"
                                 + _RESUME, "protocol", call)

    def _failure(self, h: dict, call: str) -> AgentProcessError:
        kind = str(h["error"])
        if kind == "exception":
            return AgentProcessError(str(h.get("message", ""))[:2000], "exception", call,
                                     type_name=_name(h.get("type")))
        if kind == "exit":
            what = f"called sys.exit({str(h.get('code'))[:100]})"
        else:
            what = f"raised {_name(h.get('type'))}"
        return AgentProcessError(f"method {self.method!r} {what} in {call}; the run stopped there" + _RESUME,
                                 kind, call, status=130 if kind == "interrupt" else 2)

    def kill(self) -> None:
        """Stop the child and everything it started (its process group)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
        else:  # the child is gone; its own children may not be
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def close(self) -> None:
        """Ask the child to end (it leaves at once, whatever threads it started), then stop its group."""
        if self.proc.poll() is None:
            try:
                self.conn.send_bytes(pickle.dumps({"op": "close"}))
                self.proc.wait(CLOSE_WAIT_S)
            except (OSError, EOFError, subprocess.TimeoutExpired):
                pass
        self.kill()
        self.conn.close()
        shutil.rmtree(self.cwd, ignore_errors=True)


_RESUME = " (every oracle answer so far is in journal.jsonl: --resume continues from the last checkpoint)"


def _name(v: Any) -> str:
    """A type name the child reported, if it looks like one."""
    v = str(v)
    return v if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]{0,80}", v) else "an error"


class _Placeholder:
    """Stands for a value the child returned that is not a tensor, so check_designs names its type."""


def placeholder(type_name: str) -> Any:
    return type(_name(type_name).rsplit(".", 1)[-1], (_Placeholder,), {})()


class IsolatedAgent:
    """The harness's handle on an agent in an :class:`AgentProcess`: the calls the runner makes
    (propose, proposal_chunk, observe, improve, state, load, evaluation_sampler) as requests.

    ``config`` is the harness's own copy of the agent's settings; ``describe`` the class facts the child
    reported (diffusion policy or not, steers_sampling, analytic_path_kl)."""

    def __init__(self, proc: AgentProcess, describe: dict, config: dict, reference=None):
        self.proc, self.describe, self.config = proc, describe, config
        self.steers_sampling = bool(describe.get("steers_sampling"))
        self.evaluates_policy = bool(describe.get("diffusion")) and not self.steers_sampling
        self.reference = reference  # the harness's own backbone (evaluation of a policy)
        self.step_callback = None  # set by the runner around improve(): its step_done(done) after each step
        self.round_progress: Optional[dict] = None
        self._eval_policy = None
        if describe.get("analytic_path_kl"):
            self.analytic_path_kl = lambda: self._number(self.proc.call("analytic_kl", "evaluation")[0].get("value"))

    @staticmethod
    def _number(v: Any) -> float:
        try:
            return float(v)
        except (TypeError, ValueError):
            return float("nan")

    def build(self, overrides: dict, seed: int, exec_options: Any = None) -> None:
        """Build the agent in its process (seeded as the in-process harness seeds it)."""
        self.proc.call("init", "__init__", overrides=overrides, seed=seed, exec_options=exec_options)

    def proposal_chunk(self) -> Optional[int]:
        v = self.proc.call("proposal_chunk", "propose")[0].get("value")
        return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None

    def propose(self, n: int, generator: torch.Generator) -> Any:
        """n designs (a tensor as the agent returned it, or a stand-in naming the type it returned)."""
        return self._propose(n, generator, None, "propose")

    def propose_for_evaluation(self, n: int, generator: torch.Generator, cond: Any = None) -> Any:
        """propose(n) for the harness's evaluation (held-out conditions ``cond`` where the task has them)."""
        return self._propose(n, generator, cond, "evaluation")

    def _propose(self, n: int, generator: torch.Generator, cond: Any, call: str) -> Any:
        h, t = self.proc.call("propose", call, n=int(n), generator=generator.get_state(), cond=cond,
                              evaluation=call == "evaluation")
        state = t.get("generator")
        try:
            generator.set_state(state)
        except (RuntimeError, TypeError):
            raise AgentProcessError(f"the process of method {self.proc.method!r} returned an invalid generator state "
                                    f"in {call}", "protocol", call) from None
        return t["designs"] if "designs" in t else placeholder(h.get("designs_type", "object"))

    def observe(self, designs: torch.Tensor, values: torch.Tensor) -> None:
        self.proc.call("observe", "observe", designs=designs, values=values)

    def improve(self) -> dict:
        cb = self.step_callback  # the child reports each optimizer step only when the runner listens
        events = {"step": lambda h: cb.step_done(int(h["done"]))} if cb is not None else {}
        h, _ = self.proc.call("improve", "improve", events=events, hook=cb is not None)
        stats = h.get("stats") or {}
        return {str(k)[:200]: v for k, v in stats.items() if isinstance(v, (int, float, str)) or v is None}

    def encoded_state(self) -> tuple[dict, dict]:
        """(desc, tensors) of ``{"agent": state_tree, "rng": the child's RNG states}``, encoded by the child."""
        h, t = self.proc.call("state", "state_tree (checkpoint)")
        if not isinstance(h.get("desc"), dict):
            raise self.proc._protocol("state_tree (checkpoint)", "a state without a description")
        return h["desc"], t

    def load_state(self, desc: dict, tensors: dict, rng: dict) -> None:
        h, _ = self.proc.call("load", "load_state_tree (resume)", desc=desc, tensors=tensors, rng=rng)
        progress = h.get("round_progress")
        self.round_progress = progress if isinstance(progress, dict) else None

    def evaluation_sampler(self, settings: Optional[dict] = None):
        """The agent's ``evaluation_sampler``, forwarded: the child names its noise predictor (None: the
        agent is evaluated through propose). The schedule is read harness side, from ``settings`` (the run's
        copy of the agent's settings; None: this handle's copy), by the rule of every DiffusionAgent
        (``EvaluationSampler.from_settings``): the agent's process is not trusted to say how it is evaluated.
        The predictor is the harness's own copy of its backbone holding the agent's current weights when they
        fit it (same names, shapes and dtypes: the evaluation then runs entirely here), else
        :class:`RemotePolicy` (each call checked)."""
        from sqdf_bbo.agents.base import EvaluationSampler

        if not self.evaluates_policy:
            return None
        settings = dict(self.config if settings is None else settings)
        h, t = self.proc.call("evaluation_sampler", "evaluation", settings=settings)
        if h.get("none"):
            return None
        return EvaluationSampler.from_settings(self._evaluation_policy(h, t), settings, self.reference)

    def _evaluation_policy(self, h: dict, t: dict):
        if self.reference is not None and h.get("fits", True):
            if self._eval_policy is None:
                self._eval_policy = copy.deepcopy(self.reference).eval().requires_grad_(False)
            own = self._eval_policy.state_dict()
            if set(own) == set(t) and all(own[k].shape == t[k].shape and own[k].dtype == t[k].dtype for k in own):
                self._eval_policy.load_state_dict(t, strict=True)
                return self._eval_policy
        return RemotePolicy(self.proc)


class RemotePolicy:
    """eps(x_t, t, cond) computed by the agent's process: (B, *latent) -> (B, *latent), checked."""

    def __init__(self, proc: AgentProcess):
        self.proc = proc

    def __call__(self, x: torch.Tensor, t: Any, cond: Any = None) -> torch.Tensor:
        _, out = self.proc.call("eps", "evaluation", x=x.detach().cpu(), t=t, cond=cond)
        eps = out.get("eps")
        if (not isinstance(eps, torch.Tensor) or eps.shape != x.shape or not eps.is_floating_point()
                or not bool(torch.isfinite(eps).all())):
            raise AgentProcessError(f"the policy of method {self.proc.method!r} returned a noise prediction that is not "
                                    f"a finite float tensor of shape {tuple(x.shape)} during evaluation",
                                    "protocol", "evaluation")
        return eps.to(x.dtype)


# ---- the child's side ---------------------------------------------------------------------------------
class _Child:
    """Serves requests for one agent until the harness closes the socket or says ``close``."""

    def __init__(self, conn: Connection, init: dict):
        from sqdf_bbo.agents import resolve_method

        self.conn = conn
        self.method = init["method"]
        self.info = init["info"]
        self.cls = resolve_method(self.method)
        self.agent = None

    def reply(self, header: Optional[dict] = None, tensors: Optional[dict] = None) -> None:
        self.conn.send_bytes(pack(header or {}, tensors))

    def serve(self, until: str = "close") -> None:
        """Answer requests until ``until`` arrives ('continue' inside an improve step's event)."""
        while True:
            try:
                msg = pickle.loads(self.conn.recv_bytes())
            except (EOFError, OSError):
                os._exit(0)
            op = msg.get("op")
            if op == until:
                return
            if op == "close":
                self.reply({})
                sys.stdout.flush()
                os._exit(0)  # no waiting for threads the agent left running
            try:
                header, tensors = getattr(self, f"op_{op}")(msg)
            except Exception as e:  # noqa: BLE001 - reported to the harness
                header, tensors = {"error": "exception", "type": type(e).__name__, "message": str(e)}, None
            except SystemExit as e:
                header, tensors = {"error": "exit", "code": repr(e.code)}, None
            except KeyboardInterrupt:
                header, tensors = {"error": "interrupt", "type": "KeyboardInterrupt"}, None
            except BaseException as e:  # noqa: B036
                header, tensors = {"error": "other", "type": type(e).__name__}, None
            try:
                self.reply(header, tensors)
            except (TypeError, ValueError) as e:  # e.g. statistics that are not JSON
                self.reply({"error": "exception", "type": type(e).__name__, "message": f"cannot send the result: {e}"})

    # -- requests --
    def op_describe(self, msg: dict):
        from sqdf_bbo.agents.base import DiffusionAgent

        return {"name": self.cls.__name__, "diffusion": issubclass(self.cls, DiffusionAgent),
                "steers_sampling": bool(getattr(self.cls, "steers_sampling", False)),
                "analytic_path_kl": callable(getattr(self.cls, "analytic_path_kl", None)),
                "protocol_version": getattr(self.cls, "protocol_version", 1)}, None

    def op_resolve_config(self, msg: dict):
        try:
            return {"config": self.cls.resolve_config(self.info, msg["overrides"])}, None
        except ValueError as e:
            return {"error": "exception", "type": "ValueError", "message": str(e)}, None

    def op_init(self, msg: dict):
        import random

        import numpy as np

        if msg.get("exec_options"):  # run.precision / run.channels_last, as the harness applies them
            from sqdf_bbo.backbones.base import with_execution_options

            dtype, channels_last = msg["exec_options"]
            self.info.make_backbone = with_execution_options(self.info.make_backbone, dtype, channels_last)
        seed = int(msg["seed"])  # as the in-process harness does before it builds the agent
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        self.agent = self.cls(self.info.agent_copy(), dict(msg["overrides"]), seed)
        return {}, None

    def op_proposal_chunk(self, msg: dict):
        v = self.agent.proposal_chunk()
        return {"value": v if isinstance(v, int) else None}, None

    def op_propose(self, msg: dict):
        import numpy as np

        gen = torch.Generator()
        gen.set_state(msg["generator"])
        with torch.no_grad() if msg["evaluation"] else _nullcontext():
            if msg["evaluation"]:
                x = _evaluation_propose(self.agent, msg["n"], gen, msg["cond"])
            else:
                x = self.agent.propose(msg["n"], gen)
        if isinstance(x, np.ndarray) and x.dtype.kind == "f":
            x = torch.from_numpy(np.ascontiguousarray(x))
        if not isinstance(x, torch.Tensor):
            return {"designs_type": type(x).__name__}, {"generator": gen.get_state()}
        return {}, {"designs": x, "generator": gen.get_state()}

    def op_observe(self, msg: dict):
        self.agent.observe(msg["designs"], msg["values"])
        return {}, None

    def op_improve(self, msg: dict):
        if msg["hook"]:  # the runner listens to the steps: each one is an event it answers with "continue"
            def step_done(done: int) -> None:
                self.reply({"event": "step", "done": int(done)})
                self.serve(until="continue")

            self.agent.step_callback = types.SimpleNamespace(step_done=step_done)
        try:
            stats = dict(self.agent.improve() or {})
        finally:
            self.agent.step_callback = None
        return {"stats": {str(k): _json_number(v) for k, v in stats.items()}}, None

    def op_state(self, msg: dict):
        import random

        import numpy as np

        from sqdf_bbo.checkpoint import encode

        tensors: dict = {}
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        desc = {name: encode(v, name, tensors) for name, v in (("agent", self.agent.state_tree()), ("rng", rng))}
        return {"desc": desc}, tensors

    def op_load(self, msg: dict):
        import random

        import numpy as np

        tensors = {k[len("agent."):] if k.startswith("agent.") else k: v for k, v in msg["tensors"].items()}
        self.agent.load_state_tree(msg["desc"], tensors)
        rng = msg["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        progress = getattr(self.agent, "round_progress", None)
        return {"round_progress": {"done": int(progress["done"])} if isinstance(progress, dict)
                and "done" in progress else None}, None

    def op_evaluation_sampler(self, msg: dict):
        """The agent's evaluation_sampler(settings): its noise predictor's weights (or that they are not a
        module's: the harness then asks for each noise prediction, ``eps``), nothing when it has none."""
        ask = getattr(self.agent, "evaluation_sampler", None)
        sampler = ask(msg["settings"]) if callable(ask) else None
        self._eval_policy = None if sampler is None else sampler.policy
        if sampler is None:
            return {"none": True}, None
        pol = sampler.policy
        if not isinstance(pol, torch.nn.Module):
            return {"fits": False}, None
        return {"fits": True}, {k: v for k, v in pol.state_dict().items() if isinstance(v, torch.Tensor)}

    def op_eps(self, msg: dict):
        policy = getattr(self, "_eval_policy", None)
        if policy is None:
            raise RuntimeError("a noise prediction was asked before the evaluation sampler")
        with torch.no_grad():
            return {}, {"eps": policy(msg["x"], msg["t"], msg["cond"])}

    def op_analytic_kl(self, msg: dict):
        return {"value": _json_number(self.agent.analytic_path_kl())}, None


def _evaluation_propose(agent, n: int, gen: torch.Generator, cond: Any):
    """The agent's propose() for the harness's evaluation (a frame name agents may look for)."""
    return agent.propose(n, gen) if cond is None else agent.propose(n, gen, cond=cond)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


#: longest text statistic an isolated agent may report (characters; longer ones are cut)
STAT_TEXT_MAX = 2000


def _json_number(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)[:STAT_TEXT_MAX]


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the harness ends (PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def child_main(fd: int) -> None:
    _die_with_parent()
    conn = Connection(fd)
    sys.path[:] = pickle.loads(conn.recv_bytes())
    init = pickle.loads(conn.recv_bytes())
    if os.getppid() == 1:
        os._exit(0)
    try:
        child = _Child(conn, init)
    except BaseException as e:  # noqa: B036 - an import that fails or exits
        kind = "exit" if isinstance(e, SystemExit) else "exception"
        conn.send_bytes(pack({"error": kind, "type": type(e).__name__, "message": f"cannot import the agent: {e}",
                              "code": repr(getattr(e, "code", None))}))
        os._exit(0)
    child.reply({"ready": True})
    child.serve()
    os._exit(0)


class IsolatedClass:
    """What the harness knows of an isolated agent's class, as its process reported it (the class itself is
    imported only there): its name, whether it is a diffusion policy, steers_sampling, protocol_version;
    :meth:`resolve_config` asks the process."""

    def __init__(self, proc: AgentProcess, describe: dict):
        self.proc, self.describe = proc, describe
        self.__name__ = _name(describe.get("name"))
        self.steers_sampling = bool(describe.get("steers_sampling"))
        self.evaluates_policy = bool(describe.get("diffusion")) and not self.steers_sampling
        v = describe.get("protocol_version", 1)
        self.protocol_version = v if isinstance(v, int) and not isinstance(v, bool) else 1

    def resolve_config(self, info: Any, overrides: dict) -> dict:
        """The agent's resolved settings (a JSON object); ValueError with the agent's message if refused."""
        try:
            h, _ = self.proc.call("resolve_config", "settings", overrides=dict(overrides))
        except AgentProcessError as e:
            if e.kind == "exception":
                raise ValueError(str(e)) from None
            raise
        cfg = h.get("config")
        if not isinstance(cfg, dict):
            raise ValueError(f"method {self.proc.method!r} reported settings that are not a mapping")
        return cfg


def start(method: str, info: Any, hidden: list[str], timeout_s: Optional[float]) -> IsolatedClass:
    """Start the process of ``method`` with a copy of ``info`` (the task's TaskInfo) and import the
    agent's class there; ``hidden``: strings (the run folder's path) no environment variable it gets holds."""
    proc = AgentProcess(method, hidden, timeout_s)
    try:
        proc._send({"method": method, "info": info.agent_copy()}, "import")
        wait = max(timeout_s, START_TIMEOUT_S) if timeout_s else None
        h, _ = proc._receive("import", wait)
        if "error" in h:
            raise proc._failure(h, "import")
        return IsolatedClass(proc, proc.call("describe", "import", timeout_s=wait)[0])
    except BaseException:
        proc.close()
        raise


if __name__ == "__main__":
    child_main(int(sys.argv[1]))
