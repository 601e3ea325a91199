"""LoRA for the small networks of the embedded tiers: a hand-written layer (vector tier) and a lean peft forward.

**Vector tier: hand-written LoRA, no peft.** :class:`LoraLinear` wraps an ``nn.Linear`` and computes

    y = W x + b + B(A(dropout(x))) * (alpha / r)        A: (r, in), B: (out, r)

with peft's ``lora.Linear`` layout, state-dict keys (``<name>.base_layer.weight``,
``<name>.lora_A.default.weight``, ``<name>.lora_B.default.weight``), ``get_delta_weight``/``merge``/``unmerge``
arithmetic and initialisation draws (:func:`add_lora`), so a run gives the numbers it gave under peft and
checkpoints written under peft load unchanged. Why by hand:

- peft's forward checks mixed-batch arguments, variants and dtypes and dispatches through five sub-modules
  per layer: overhead that dominates the MLP's 32-row batches on CPU;
- importing peft (which imports transformers) cost ~1.9 s of start-up per vector-tier run.

**Image tier (UNet; Stable Diffusion goes through diffusers' own peft integration): peft, lean forward.**
:func:`use_lean_forward` switches each peft ``lora.Linear`` / ``lora.Conv2d`` layer to a subclass whose forward
computes, in the common case (one active plain LoRA adapter, not merged, no dropout, no extra arguments),
``base(x) + B(A(x)) * scaling`` with the kernels peft uses, in its order (bit-identical), and otherwise defers
to peft's forward. These classes (``LeanLinear``, ``LeanConv2d``) are built on first use, so importing this
module does not import peft.

The order matters beyond the forward value in both: autograd sums the gradients of a tensor with three or
more consumers in the order their nodes were created, so base(x) is computed first, as peft does.
"""
from __future__ import annotations

import copy
import math
from functools import lru_cache
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

ADAPTER = "default"  # peft's default adapter name: keeps the state-dict keys of runs made under peft


class LoraLinear(nn.Module):
    """``nn.Linear`` + one LoRA adapter: x (..., in) -> (..., out), y = base(x) + B A dropout(x) * alpha/r.

    peft's ``lora.Linear`` interface as the harness uses it: ``base_layer``, ``lora_A``/``lora_B``
    (ModuleDicts holding one bias-free ``nn.Linear`` under ``"default"``), ``r``/``lora_alpha``/``scaling``,
    ``active_adapters``, ``lora_variant`` (always empty), ``lora_bias`` (always False), ``get_base_layer``,
    ``get_delta_weight``, ``merge``/``unmerge``, ``enable_adapters``."""

    def __init__(self, base_layer: nn.Linear, r: int, lora_alpha: float, lora_dropout: float = 0.0,
                 init_lora_weights: bool | str = "gaussian"):
        super().__init__()
        if type(base_layer) is not nn.Linear:
            raise TypeError(f"LoraLinear wraps an nn.Linear, got {type(base_layer).__name__}")
        if r <= 0:
            raise ValueError(f"LoRA rank must be a positive integer, got {r}")
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.r, self.lora_alpha, self.scaling = {ADAPTER: r}, {ADAPTER: lora_alpha}, {ADAPTER: lora_alpha / r}
        self.lora_dropout_p = float(lora_dropout)
        # peft's draws, in its order: both nn.Linear constructors draw their kaiming-uniform init from the
        # global generator, then A is re-drawn (gaussian: N(0, 1/r^2); True: kaiming-uniform a=sqrt(5)), B = 0
        self.lora_A = nn.ModuleDict({ADAPTER: nn.Linear(self.in_features, r, bias=False)})
        self.lora_B = nn.ModuleDict({ADAPTER: nn.Linear(r, self.out_features, bias=False)})
        A, B = self.lora_A[ADAPTER].weight, self.lora_B[ADAPTER].weight
        if init_lora_weights == "gaussian":
            nn.init.normal_(A, std=1 / r)
        elif init_lora_weights is True:
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        else:
            raise ValueError(f"init_lora_weights must be 'gaussian' or True, got {init_lora_weights!r}")
        nn.init.zeros_(B)
        w = base_layer.weight  # as peft: the adapter lives on the base layer's device, in its float dtype
        for adapter in (self.lora_A, self.lora_B):
            adapter.to(device=w.device, dtype=w.dtype if w.dtype.is_floating_point else None)
        self.lora_variant: dict = {}  # (peft's DoRA & co.: none here)
        self.lora_bias = {ADAPTER: False}
        self.merged_adapters: list[str] = []
        self._disable_adapters = False

    # ---- peft's interface ---------------------------------------------------------------------------
    @property
    def active_adapters(self) -> list[str]:
        return [ADAPTER]

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    @property
    def disable_adapters(self) -> bool:
        return self._disable_adapters

    @property
    def weight(self) -> Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> Optional[Tensor]:
        return self.base_layer.bias

    def get_base_layer(self) -> nn.Linear:
        return self.base_layer

    def enable_adapters(self, enabled: bool) -> None:
        """Switch the adapter on/off; as peft, its weights require grad exactly while it is on."""
        self._disable_adapters = not enabled
        for p in (*self.lora_A.parameters(), *self.lora_B.parameters()):
            p.requires_grad_(enabled)

    def get_delta_weight(self, adapter: str = ADAPTER) -> Tensor:
        """ΔW = B A * scaling, (out, in): peft's arithmetic, so merges are bit-equal to peft's."""
        return (self.lora_B[adapter].weight @ self.lora_A[adapter].weight) * self.scaling[adapter]

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """W += ΔW in place (a no-op if merged already)."""
        if self.merged:
            return
        delta = self.get_delta_weight(ADAPTER)
        if safe_merge and not torch.isfinite(delta).all():
            raise ValueError("NaNs detected in the merged weights: the adapter seems to be broken")
        self.base_layer.weight.data += delta
        self.merged_adapters.append(ADAPTER)

    def unmerge(self) -> None:
        """W -= ΔW in place (a no-op if not merged)."""
        while self.merged_adapters:
            self.base_layer.weight.data -= self.get_delta_weight(self.merged_adapters.pop())

    # ---- forward ------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        base = self.base_layer
        if self._disable_adapters:
            if self.merged_adapters:
                self.unmerge()
            return F.linear(x, base.weight, base.bias)
        result = F.linear(x, base.weight, base.bias)  # base first, as peft: autograd's node order matters
        if self.merged_adapters:
            return result
        A, B = self.lora_A[ADAPTER].weight, self.lora_B[ADAPTER].weight
        if x.dtype != A.dtype:  # as peft: the adapter sees its own dtype, the sum keeps the base's
            x = x.to(A.dtype)
        if self.lora_dropout_p > 0:
            x = F.dropout(x, self.lora_dropout_p, self.training)
        out = result + F.linear(F.linear(x, A), B) * self.scaling[ADAPTER]
        return out if out.dtype == result.dtype else out.to(result.dtype)

    def extra_repr(self) -> str:
        return f"r={self.r[ADAPTER]}, lora_alpha={self.lora_alpha[ADAPTER]}, dropout={self.lora_dropout_p}"


def _matches(name: str, target: str) -> bool:
    """peft's rule for a list of target names: the module's full name or its dotted suffix."""
    return name == target or name.endswith("." + target)


def add_lora(model: nn.Module, targets: list[str], r: int, lora_alpha: float, lora_dropout: float = 0.0,
             init_lora_weights: bool | str = "gaussian") -> list[str]:
    """Wrap every ``nn.Linear`` of ``model`` named by ``targets`` (peft's matching) in :class:`LoraLinear`,
    in ``named_modules`` order, as peft's ``inject_adapter_in_model`` does (so the same seed draws the same
    adapters). Only the parameters' requires_grad of the new adapters is set (True). Returns the wrapped names."""
    wrapped = []
    for name, module in list(model.named_modules()):
        if not name or not any(_matches(name, t) for t in targets) or isinstance(module, LoraLinear):
            continue
        if type(module) is not nn.Linear:
            raise TypeError(f"LoRA target {name!r} is a {type(module).__name__}; the hand-written LoRA wraps nn.Linear")
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child,
                LoraLinear(module, r, lora_alpha, lora_dropout, init_lora_weights))
        wrapped.append(name)
    if not wrapped:
        raise ValueError(f"no nn.Linear of the model matches the LoRA targets {targets}")
    return wrapped


def peft_copy(model: nn.Module) -> nn.Module:
    """Tests and benchmarks: a deep copy of ``model`` whose :class:`LoraLinear` layers are peft ``lora.Linear``
    layers (peft's own forward) holding the same weights. Imports peft."""
    from peft import LoraConfig, inject_adapter_in_model

    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}
    if not layers:
        raise ValueError("the model has no LoraLinear layers")
    first = next(iter(layers.values()))
    twin = copy.deepcopy(model)
    for name, layer in layers.items():  # unwrap, then let peft wrap the same layers
        parent, _, child = name.rpartition(".")
        setattr(twin.get_submodule(parent) if parent else twin, child, twin.get_submodule(name).base_layer)
    cfg = LoraConfig(r=first.r[ADAPTER], lora_alpha=first.lora_alpha[ADAPTER], lora_dropout=first.lora_dropout_p,
                     target_modules=list(layers), init_lora_weights="gaussian")
    with torch.random.fork_rng():  # peft's init draws must not move the caller's generator
        inject_adapter_in_model(cfg, twin)
    twin.load_state_dict(model.state_dict(), strict=True)
    for name, p in twin.named_parameters():
        p.requires_grad_(dict(model.named_parameters())[name].requires_grad)
    return twin


# ---- the image tier: peft's layers with a lean forward --------------------------------------------------
def merged_sampling_copy(policy: nn.Module, previous: Optional[nn.Module] = None,
                         max_params: int = 5_000_000) -> nn.Module:
    """A plain copy of a LoRA network (no LoRA wrappers) holding the merged weights W + ΔW, for no-grad
    sampling; ``policy`` itself when it has no LoRA layer, more than ``max_params`` parameters, or a LoRA
    variant or bias (those need peft's own merge).

    Same function as the policy, ~2x faster on CPU (one matmul per layer instead of three). ``previous``
    (a copy this function returned for the same policy) is refreshed in place instead of deep-copying
    again (a deep copy took ~0.1 s on the image tier): the policy's weights are copied in and each LoRA
    layer's ``get_delta_weight`` is added, the arithmetic of peft's ``merge()``, so the result equals a
    freshly merged deep copy bit for bit.
    """
    lora_layers = {name: m for name, m in policy.named_modules() if hasattr(m, "get_delta_weight")}
    n_params = sum(p.numel() for p in policy.parameters())
    if (not lora_layers or n_params > max_params
            or any(m.lora_variant or any(m.lora_bias.values()) for m in lora_layers.values())):
        return policy
    plain = previous
    if plain is None:
        plain = copy.deepcopy(policy)
        for name in lora_layers:  # unwrap: the wrapper's base layer takes its place
            parent, _, child = name.rpartition(".")
            setattr(plain.get_submodule(parent), child, plain.get_submodule(name).get_base_layer())
        plain = plain.eval().requires_grad_(False)
    source = {k.replace(".base_layer.", "."): v for k, v in policy.state_dict().items() if ".lora_" not in k}
    with torch.no_grad():
        for key, target in plain.state_dict(keep_vars=True).items():
            target.copy_(source[key])
        for name, layer in lora_layers.items():
            weight = plain.get_submodule(name).weight
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    weight += layer.get_delta_weight(adapter)
    return plain


def _single_plain_adapter(layer, x: Tensor, args: tuple, kwargs: dict) -> str | None:
    """The one active adapter of a peft layer if the lean path applies, else None (peft's forward runs)."""
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


@lru_cache(maxsize=None)
def _lean_peft_classes() -> dict[type, type]:
    """{peft lora.Linear: LeanLinear, peft lora.Conv2d: LeanConv2d}, built (and peft imported) on first use."""
    from peft.tuners.lora import layer as peft_lora

    class LeanLinear(peft_lora.Linear):
        """peft ``lora.Linear`` with a lean forward for one plain adapter (see module docstring)."""

        def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            name = _single_plain_adapter(self, x, args, kwargs)
            if name is None:
                return super().forward(x, *args, **kwargs)
            base = self.base_layer
            result = F.linear(x, base.weight, base.bias)  # base first, as peft: autograd's node order matters
            A, B = self.lora_A[name].weight, self.lora_B[name].weight
            return result + F.linear(F.linear(x, A), B) * self.scaling[name]

    class LeanConv2d(peft_lora.Conv2d):
        """peft ``lora.Conv2d`` with a lean forward for one plain adapter (see module docstring)."""

        def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            name = _single_plain_adapter(self, x, args, kwargs)
            if name is None:
                return super().forward(x, *args, **kwargs)
            base, A, B = self.base_layer, self.lora_A[name], self.lora_B[name]
            result = base._conv_forward(x, base.weight, base.bias)
            return result + B._conv_forward(A._conv_forward(x, A.weight, None), B.weight, None) * self.scaling[name]

    for cls in (LeanLinear, LeanConv2d):  # importable by name (module __getattr__ below), e.g. for pickle
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
    return {peft_lora.Linear: LeanLinear, peft_lora.Conv2d: LeanConv2d}


def __getattr__(name: str):
    """``LeanLinear`` / ``LeanConv2d`` on demand (importing peft then), so this module alone imports no peft."""
    if name in ("LeanLinear", "LeanConv2d"):
        return next(c for c in _lean_peft_classes().values() if c.__name__ == name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def use_lean_forward(model: nn.Module) -> int:
    """Switch every peft LoRA Linear/Conv2d layer of ``model`` (exact type, with a plain nn.Linear /
    nn.Conv2d base) to its lean subclass, in place. Returns how many layers were switched."""
    lean_of = _lean_peft_classes()
    switched = 0
    for module in model.modules():
        lean = lean_of.get(type(module))
        if lean is not None and type(module.get_base_layer()) in (nn.Linear, nn.Conv2d):
            module.__class__ = lean
            switched += 1
    return switched


def peft_forward_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose lean peft LoRA layers run peft's own forward again (tests, benchmarks)."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        for peft_type, lean in _lean_peft_classes().items():
            if type(module) is lean:
                module.__class__ = peft_type
    return twin
