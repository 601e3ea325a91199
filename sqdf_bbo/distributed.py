"""Data parallelism for a single run over several processes/GPUs, on top of ``accelerate``.

Launch any script with ``accelerate launch --num_processes P script.py ...`` (``--cpu`` for CPU/gloo).
Every process holds the full model (policy LoRA + frozen networks); work is split, not the model:

- **sampling**: :meth:`DataParallel.sample_sharded` runs ``fn(n_local)`` on each process for its share
  of n (sizes differ by at most one) and returns the union, in rank order, on every process;
- **training**: each process back-propagates the loss of its own share of the batch, then
  :meth:`DataParallel.all_reduce_grads` makes every process hold the gradient of the *union* batch
  (weighted by shard sizes, so uneven shards still give the exact mean), before clipping and the
  optimizer step, which are then identical on every process;
- :meth:`DataParallel.broadcast_parameters` syncs initial weights (e.g. LoRA init) from rank 0.

Gradients are reduced explicitly (one flattened all-reduce) rather than by wrapping the model in DDP:
the SD policy and reference share one UNet whose adapters are toggled per call, which DDP's hooks do
not expect. With one process every method is a no-op, so single-GPU/CPU runs are unchanged.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch

Tensor = torch.Tensor


def supports(agent) -> bool:
    """Whether an agent can join a data-parallel run: it declares ``PER_PROCESS_KEYS`` and the
    ``setup_data_parallel`` hook (every ``DiffusionAgent`` does)."""
    return hasattr(agent, "PER_PROCESS_KEYS") and callable(getattr(agent, "setup_data_parallel", None))


def join(agent, dp) -> None:
    """Make ``agent`` one process of a data-parallel run of ``dp.world_size`` processes.

    Divides every ``agent.PER_PROCESS_KEYS`` setting by P (it must divide evenly), so the processes' samples
    together form the configured batch, gives the agent its own generator (seed * P + rank) and calls its
    ``setup_data_parallel(dp)`` hook. Called again on an agent restored from a checkpoint, it only re-links
    ``agent.dp`` (and refuses another rank or world size)."""
    agent.dp = dp
    done = getattr(agent, "dp_world_size", None)
    if done is not None:
        if (done, agent.dp_rank) != (dp.world_size, dp.rank):
            raise ValueError(f"this agent was set up as rank {agent.dp_rank} of {done} processes; it cannot "
                             f"continue as rank {dp.rank} of {dp.world_size} (relaunch with {done} processes)")
        return
    P = dp.world_size
    for key in agent.PER_PROCESS_KEYS:
        v = getattr(agent.cfg, key)
        if v % P:
            raise ValueError(f"{key}={v} must be divisible by the number of processes {P} "
                             "(each process takes an equal share)")
        agent.config.update({key: v // P})  # both views of the settings: the plain dict and the typed one
        setattr(agent.cfg, key, v // P)
    agent.generator = dp.local_generator(agent.seed)
    agent.dp_world_size, agent.dp_rank = P, dp.rank
    agent.setup_data_parallel(dp)


class SingleProcess:
    """The one-process case of :class:`DataParallel` (same interface; every collective is the identity),
    so agent code calls ``self.dp.<collective>`` without branching on whether it runs data-parallel."""

    rank, world_size, is_main, distributed = 0, 1, True, False

    def shard(self, x):
        return x

    def local_generator(self, seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(int(seed))

    def all_reduce_grads(self, params, n_local: Optional[int] = None, n_total: Optional[int] = None) -> None:
        pass

    def broadcast_parameters(self, params, src: int = 0) -> None:
        pass

    def broadcast_object(self, obj, src: int = 0):
        return obj

    def gather(self, x: Tensor) -> Tensor:
        return x

    def gather_object(self, obj: list) -> list:
        return list(obj)

    def sample_sharded(self, fn: Callable[[int], Tensor], n: int) -> Tensor:
        return fn(n)

    def mean(self, value: float) -> float:
        return float(value)

    def barrier(self) -> None:
        pass


class DataParallel:
    """Rank/world information and the collectives a data-parallel run needs (see module docstring).

    Args:
        cpu: force CPU (gloo) even when CUDA is available.
        state: an existing ``accelerate.PartialState`` (default: created here from the launcher's env vars).
    """

    def __init__(self, cpu: bool = False, state=None):
        from accelerate import PartialState

        self.state = state if state is not None else PartialState(cpu=cpu)
        self.rank = int(self.state.process_index)
        self.world_size = int(self.state.num_processes)
        self.device = self.state.device
        self.is_main = self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # ---- splitting -----------------------------------------------------------------------------------
    def shard_sizes(self, n: int) -> list[int]:
        """Sizes of each process's share of n items: n // P, the first n % P processes get one more."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        q, r = divmod(int(n), self.world_size)
        return [q + (1 if i < r else 0) for i in range(self.world_size)]

    def shard_slice(self, n: int) -> slice:
        sizes = self.shard_sizes(n)
        start = sum(sizes[: self.rank])
        return slice(start, start + sizes[self.rank])

    def shard(self, x):
        """This process's contiguous share of a tensor/list along its first dimension."""
        return x[self.shard_slice(len(x))]

    def local_generator(self, seed: int) -> torch.Generator:
        """A per-process generator (seed * P + rank), so processes draw different noise reproducibly."""
        return torch.Generator().manual_seed(int(seed) * self.world_size + self.rank)

    # ---- collectives -----------------------------------------------------------------------------------
    def _dist(self):
        import torch.distributed as dist

        return dist

    def all_reduce_grads(self, params: Iterable[torch.nn.Parameter], n_local: Optional[int] = None,
                         n_total: Optional[int] = None) -> None:
        """Replace each ``p.grad`` by the union-batch gradient.

        Without sizes: the plain mean over processes (equal shards). With ``n_local`` (this process's
        number of samples, its loss being a mean over them) and ``n_total``: sum_r (n_r / n_total) grad_r,
        which equals the gradient of the mean loss over the union batch for uneven shards too.
        Parameters without a gradient count as zero. One flattened all-reduce.
        """
        params = [p for p in params if p.requires_grad]
        if not self.distributed or not params:
            return
        if (n_local is None) != (n_total is None):
            raise ValueError("pass both n_local and n_total, or neither")
        w = 1.0 / self.world_size if n_local is None else float(n_local) / float(n_total)
        dev = params[0].device
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dev, torch.float32)
                          for p in params]) * w
        self._dist().all_reduce(flat)
        i = 0
        for p in params:
            n = p.numel()
            g = flat[i:i + n].view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
            i += n

    def broadcast_parameters(self, params: Iterable[torch.nn.Parameter], src: int = 0) -> None:
        """Copy the values of ``params`` from process ``src`` to every process."""
        if not self.distributed:
            return
        with torch.no_grad():
            for p in params:
                data = p.data
                buf = data.to(self.device)  # NCCL needs device tensors; gloo takes CPU ones
                self._dist().broadcast(buf, src=src)
                if buf.data_ptr() != data.data_ptr():
                    data.copy_(buf)

    def broadcast_object(self, obj, src: int = 0):
        """Process ``src``'s picklable ``obj`` on every process (e.g. the oracle's answers)."""
        if not self.distributed:
            return obj
        box = [obj]
        self._dist().broadcast_object_list(box, src=src)
        return box[0]

    def gather(self, x: Tensor) -> Tensor:
        """Concatenate each process's ``x`` (first dims may differ by process) in rank order, on every process."""
        if not self.distributed:
            return x
        dist = self._dist()
        n = torch.tensor([x.shape[0]], device=self.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        dist.all_gather(sizes, n)
        sizes = [int(s) for s in sizes]
        m = max(sizes)
        pad = torch.zeros((m - x.shape[0], *x.shape[1:]), dtype=x.dtype, device=self.device)
        buf = torch.cat([x.to(self.device), pad])
        out = [torch.empty_like(buf) for _ in range(self.world_size)]
        dist.all_gather(out, buf)
        return torch.cat([o[:s] for o, s in zip(out, sizes)]).to(x.device)

    def gather_object(self, obj: list) -> list:
        """Concatenate per-process Python lists (e.g. prompts) in rank order, on every process."""
        if not self.distributed:
            return list(obj)
        out = [None] * self.world_size
        self._dist().all_gather_object(out, list(obj))
        return [o for part in out for o in part]

    def sample_sharded(self, fn: Callable[[int], Tensor], n: int) -> Tensor:
        """Run ``fn(n_local)`` on each process for its share of n and return the union (n, ...) everywhere."""
        return self.gather(fn(self.shard_sizes(n)[self.rank]))

    def mean(self, value: float) -> float:
        """Average a Python scalar over processes (for logging)."""
        if not self.distributed:
            return float(value)
        t = torch.tensor([float(value)], device=self.device, dtype=torch.float64)
        self._dist().all_reduce(t)
        return float(t) / self.world_size

    def barrier(self) -> None:
        if self.distributed:
            self._dist().barrier()


def data_parallel_from_env() -> Optional[DataParallel]:
    """A :class:`DataParallel` when launched as several processes (``WORLD_SIZE`` > 1, as set by
    ``accelerate launch``/``torchrun``/accelerate's ``debug_launcher``), else None (no accelerate state)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return DataParallel(cpu=not torch.cuda.is_available())


__all__ = ["DataParallel", "data_parallel_from_env"]
