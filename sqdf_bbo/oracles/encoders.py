"""Frozen, seeded random convolutional encoders with global mean/std pooling.

Used twice, with different seeds and shapes: the RandAesthetic oracle's embedding phi (512 features)
and the proxy feature map agents see (256 features). Weights are drawn once from ``torch.Generator``
(He-normal, zero bias), then committed as safetensors with a sha256, so results never depend on
RNG streams staying the same across torch versions.

    encoder(x): x (B, 3, H, W) in [0, 1] -> (B, 2 * widths[-1]) raw features
    ZScored(encoder, mean, std)(x) -> (B, F) standardised with statistics from natural patches
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

_ACTS = {"gelu": F.gelu, "silu": F.silu, "relu": F.relu, "tanh": torch.tanh}


class RandomConvEncoder(nn.Module):
    """conv(k_i, stride s_i) -> act per layer, then [spatial mean, spatial std] of the last map."""

    def __init__(self, widths: Sequence[int], kernels: Sequence[int], strides: Sequence[int],
                 act: str = "gelu", seed: int = 0):
        super().__init__()
        if not (len(widths) == len(kernels) == len(strides)):
            raise ValueError(f"widths, kernels, strides must have equal length, got {widths}, {kernels}, {strides}")
        if act not in _ACTS:
            raise ValueError(f"act must be one of {sorted(_ACTS)}, got {act!r}")
        self.widths, self.kernels, self.strides, self.act = list(widths), list(kernels), list(strides), act
        g = torch.Generator().manual_seed(seed)
        self.convs = nn.ModuleList()
        c_in = 3
        for w, k, s in zip(widths, kernels, strides):
            conv = nn.Conv2d(c_in, w, k, stride=s, padding=k // 2)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / (c_in * k * k)) ** 0.5)
                conv.bias.zero_()
            self.convs.append(conv)
            c_in = w
        self.requires_grad_(False)
        self.out_dim = 2 * widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x * 2 - 1
        act = _ACTS[self.act]
        for conv in self.convs:
            h = act(conv(h))
        h = h.flatten(2)
        return torch.cat([h.mean(-1), (h.var(-1, unbiased=False) + 1e-8).sqrt()], dim=1)


class ZScored(nn.Module):
    """Standardise an encoder's output with fixed (F,) mean and std buffers."""

    def __init__(self, encoder: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.encoder = encoder
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("std", std.float().clamp(min=1e-6).clone())
        self.out_dim = mean.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.encoder(x) - self.mean) / self.std


@torch.no_grad()
def batched(fn, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """Apply fn to x in chunks (no grad); returns the concatenation."""
    return torch.cat([fn(x[i:i + batch]) for i in range(0, len(x), batch)])


def build_cli(prog: str, build, argv=None, build_help: str = "fit and write the committed assets") -> None:
    """``python -m <prog> --build [--size S] [--seed N]``: run ``build(size, seed=, argv=)`` and print its JSON
    record (the command line of the embedded oracles' asset builders)."""
    import argparse
    import json
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog=f"python -m {prog}")
    p.add_argument("--build", action="store_true", help=build_help)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if not a.build:
        p.error("nothing to do: pass --build")
    print(json.dumps(build(a.size, seed=a.seed, argv=argv), indent=2))
