"""Calls into the agent, which is untrusted code: what leaves them is tagged with the call, a ``sys.exit`` or
KeyboardInterrupt becomes a one-line failure, and every design it returns is checked."""
from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from sqdf_bbo.harness.config import CLIError


class AgentEscape(CLIError):
    """An agent call ended with sys.exit or KeyboardInterrupt (not an Exception); ``status`` is the exit status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@contextlib.contextmanager
def agent_call(method: str, call: str):
    """Run agent code: an Exception leaving it is tagged ``agent_call = call`` (so the CLI can name the call);
    a SystemExit / KeyboardInterrupt becomes an :class:`AgentEscape` naming the method and the call."""
    try:
        yield
    except Exception as e:
        if not hasattr(e, "agent_call"):
            try:
                e.agent_call = call
            except AttributeError:
                pass
        raise
    except BaseException as e:  # noqa: B036 - SystemExit, KeyboardInterrupt, GeneratorExit from agent code
        what = f"called sys.exit({e.code!r})" if isinstance(e, SystemExit) else f"raised {type(e).__name__}"
        status = 130 if isinstance(e, KeyboardInterrupt) else 2
        raise AgentEscape(f"method {method!r} {what} in {call}; the run stopped there (every oracle answer so far "
                          "is in journal.jsonl: --resume continues from the last checkpoint)", status) from None


def check_designs(designs: Any, n: int, design_shape: tuple, method: str, call: str) -> torch.Tensor:
    """The designs an agent returned, as a plain CPU tensor (its float dtype kept), if they are a floating-point tensor or
    array of shape (n, *design_shape) with finite values; else a one-line CLIError naming the method and
    the call. Bounds are not enforced: the oracles project onto the box (the env's out_of_bounds='allow')."""
    where = f"method {method!r} returned designs {call}"
    if isinstance(designs, np.ndarray) and designs.dtype.kind == "f":
        designs = torch.from_numpy(np.ascontiguousarray(designs))
    if not isinstance(designs, torch.Tensor):
        raise CLIError(f"{where} as a {type(designs).__name__}; expected a tensor of shape {(n, *design_shape)}")
    x = designs.detach().as_subclass(torch.Tensor).cpu()
    if not x.is_floating_point():
        raise CLIError(f"{where} of dtype {x.dtype}; expected floating-point designs")
    if tuple(x.shape) != (n, *design_shape):
        raise CLIError(f"{where} of shape {tuple(x.shape)}; expected {(n, *design_shape)}")
    finite = torch.isfinite(x.reshape(n, -1)).all(dim=1) if n else torch.ones(0, dtype=torch.bool)
    if not bool(finite.all()):
        raise CLIError(f"{where} with non-finite values (NaN or inf) in {int((~finite).sum())} of {n} designs")
    return x.clone()
