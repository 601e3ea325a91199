"""A lean forward for peft's LoRA layers, for the small networks of the embedded tiers.

peft's ``lora.Linear`` / ``lora.Conv2d`` forward checks mixed-batch arguments, variants and dtypes and calls
five sub-modules per layer; on the vector tier's 256-wide MLP at 32 rows the lean forward + backward took
5.1 vs 8.3 ms, 4.5 vs 4.9 ms and 7.4 vs 8.3 ms in three measurements (benchmarks/perf_lora.py; this VM's
speed drifts between runs; whole runs gain less, as most of a training step is the GEMMs themselves).
:func:`use_lean_forward` switches each wrapped layer to a subclass whose forward computes, in the common
case (one active plain LoRA adapter, not merged, no dropout, no extra arguments),

    y = base(x) + B(A(x)) * scaling          (the same kernels in the same order as peft: bit-identical)

and otherwise defers to peft's own forward. Parameters, state-dict keys, ``get_delta_weight``, merging and
every isinstance check are peft's, unchanged. The order matters beyond the forward value: autograd sums the
gradients of a tensor with three or more consumers in the order their nodes were created, so base(x) is
computed first, as peft does.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora import layer as peft_lora
from torch import nn

Tensor = torch.Tensor


def _single_plain_adapter(layer: peft_lora.LoraLayer, x: Tensor, args: tuple, kwargs: dict) -> str | None:
    """The one active adapter if the lean path applies, else None (peft's forward then runs)."""
    if args or kwargs or layer.disable_adapters or layer.merged:
        return None
    active = layer.active_adapters
    if len(active) != 1:
        return None
    name = active[0]
    if (name not in layer.lora_A or name in layer.lora_variant or layer.lora_bias.get(name, False)
            or not isinstance(layer.lora_dropout[name], nn.Identity) or x.dtype != layer.lora_A[name].weight.dtype):
        return None
    return name


class LeanLinear(peft_lora.Linear):
    """peft ``lora.Linear`` with a lean forward for one plain adapter (see module docstring)."""

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        name = _single_plain_adapter(self, x, args, kwargs)
        if name is None:
            return super().forward(x, *args, **kwargs)
        base = self.base_layer
        result = F.linear(x, base.weight, base.bias)  # base first, as peft: autograd's node order matters
        return result + F.linear(F.linear(x, self.lora_A[name].weight), self.lora_B[name].weight) * self.scaling[name]


class LeanConv2d(peft_lora.Conv2d):
    """peft ``lora.Conv2d`` with a lean forward for one plain adapter (see module docstring)."""

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        name = _single_plain_adapter(self, x, args, kwargs)
        if name is None:
            return super().forward(x, *args, **kwargs)
        base, A, B = self.base_layer, self.lora_A[name], self.lora_B[name]
        result = base._conv_forward(x, base.weight, base.bias)
        return result + B._conv_forward(A._conv_forward(x, A.weight, None), B.weight, None) * self.scaling[name]


_LEAN = {peft_lora.Linear: LeanLinear, peft_lora.Conv2d: LeanConv2d}


def use_lean_forward(model: nn.Module) -> int:
    """Switch every peft LoRA Linear/Conv2d layer of ``model`` (exact type, with a plain nn.Linear /
    nn.Conv2d base) to its lean subclass, in place. Returns how many layers were switched."""
    switched = 0
    for module in model.modules():
        lean = _LEAN.get(type(module))
        if lean is not None and type(module.get_base_layer()) in (nn.Linear, nn.Conv2d):
            module.__class__ = lean
            switched += 1
    return switched


def peft_forward_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose lean LoRA layers run peft's own forward again (tests, benchmarks)."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        for peft_type, lean in _LEAN.items():
            if type(module) is lean:
                module.__class__ = peft_type
    return twin
