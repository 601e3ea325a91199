"""What the LoRA wrapper costs on the vector tier: the levy MLP prior as the fine-tuners hold it.

    python -m benchmarks.perf.perf_lora [--task levy] [--rows 32] [--rank 4] [--calls 200] [--out results/perf_lora.csv]

Milliseconds per call (median of ``--calls`` after 5 warm-up calls) at ``--rows`` rows (the fine-tuners'
``train_batch``), one thread, of: the plain pretrained network (the frozen reference), the policy with LoRA
adapters of ``--rank`` (how every fine-tuner trains it, ``lora_rank=4``: the hand-written ``LoraLinear`` of
``sqdf_bbo/backbones/lora.py``), the same policy as peft ``lora.Linear`` layers holding the same weights, through
peft's own forward (``lora_peft``; rows committed before the hand-written layer timed peft layers with a lean
forward as ``lora``), the LoRA
policy with its adapters merged (what no-grad sampling uses), and a what-if used nowhere else: the LoRA
policy computing W + s·B·A inside every call (``lora_merged_per_call``: the same function, other
rounding); each without grad and with a backward pass (to the LoRA weights for the LoRA policies, to the
input for the frozen ones). Give it the machine alone. (Rows committed before the shared
``median_seconds`` timer were a mean over the calls.)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

COLUMNS = ["task", "module", "pass", "rows", "ms_per_call", "threads", "load_before", "machine", "git_commit"]


def merged_per_call_copy(model: torch.nn.Module) -> torch.nn.Module:
    """What-if, benchmark only: a deep copy whose LoRA Linear layers compute ``x (W + s B A)^T + b`` with
    the merge inside the autograd graph (gradients still reach A and B). The same function as the lean
    forward but not the same rounding, so using it in training would change every run's numbers."""
    import copy

    import torch.nn.functional as F

    from sqdf_bbo.backbones.lora import ADAPTER, LoraLinear

    class MergedPerCallLinear(LoraLinear):
        def forward(self, x):
            A, B = self.lora_A[ADAPTER].weight, self.lora_B[ADAPTER].weight
            return F.linear(x, self.base_layer.weight + (B @ A) * self.scaling[ADAPTER], self.base_layer.bias)

    twin = copy.deepcopy(model)
    for module in twin.modules():
        if type(module) is LoraLinear:
            module.__class__ = MergedPerCallLinear
    return twin


def what_if_difference(policy: torch.nn.Module, latent_shape) -> float:
    """Max |lean - merged per call| on 4 rows, with nonzero adapters (B = 0 at initialisation)."""
    import copy

    lean = copy.deepcopy(policy)
    with torch.no_grad():
        for n, w in lean.named_parameters():
            if "lora_B" in n:
                w.copy_(0.01 * torch.randn(w.shape, generator=torch.Generator().manual_seed(1)))
    x = torch.randn(4, *latent_shape, generator=torch.Generator().manual_seed(2))
    t = torch.full((4,), 500, dtype=torch.long)
    with torch.no_grad():
        return float((lean(x, t) - merged_per_call_copy(lean)(x, t)).abs().max())


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common.provenance import load_average, provenance
    from benchmarks.perf.perf_core import median_seconds
    from benchmarks.perf.results_csv import write_csv
    from sqdf_bbo.agents import resolve_method
    from sqdf_bbo.backbones.lora import peft_copy
    from sqdf_bbo.tasks import make_task

    p = argparse.ArgumentParser(prog="python -m benchmarks.perf.perf_lora", description=__doc__.split("\n")[0])
    p.add_argument("--task", default="levy")
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--out", default="results/perf_lora.csv")
    a = p.parse_args(argv)
    if min(a.rows, a.rank, a.calls) < 1:
        p.error(f"--rows, --rank and --calls must be >= 1, got {a.rows}, {a.rank}, {a.calls}")
    torch.set_num_threads(1)
    context = {"threads": 1, "load_before": load_average(), **provenance()}
    task = make_task(a.task)
    cls = resolve_method("draft-1")  # any OnlineFinetuneAgent: it wraps the policy as every fine-tuner does
    agent = cls(task.info, cls.resolve_config(task.info, {"lora_rank": a.rank}), seed=0)
    modules = {"plain": agent.reference, "lora": agent.policy, "lora_peft": peft_copy(agent.policy),
               "lora_merged": agent.sampling_policy(), "lora_merged_per_call": merged_per_call_copy(agent.policy)}
    print(f"merged per call vs lean forward, random adapters: max abs. difference "
          f"{what_if_difference(agent.policy, agent.reference.latent_shape):.1e}", file=sys.stderr)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.rows, *agent.reference.latent_shape, generator=g)
    t = torch.full((a.rows,), 500, dtype=torch.long)
    rows = []
    for name, module in modules.items():
        def forward():
            with torch.no_grad():
                module(x, t)

        x_in = x.clone().requires_grad_(name not in ("lora", "lora_merged_per_call"))

        def backward():
            module(x_in, t).sum().backward()

        for pass_name, fn in (("forward", forward), ("forward+backward", backward)):
            ms = 1e3 * median_seconds(fn, a.calls, warmup=5)
            rows.append({"task": a.task, "module": name, "pass": pass_name, "rows": a.rows,
                         "ms_per_call": round(ms, 3), **context})
            print(f"{name:12s} {pass_name:17s} {ms:7.3f} ms", file=sys.stderr)
    write_csv(Path(a.out), rows, COLUMNS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
