"""Pretraining and evaluation of the embedded backbones (seeded; committed weights record the command that
made them). This package sits above ``backbones/``, ``tasks/`` and ``consistency``: the backbones import
nothing from it or from ``tasks/``.

    python -m sqdf_bbo.pretrain vector --prior all          # MLP denoisers for the synthetic priors
    python -m sqdf_bbo.pretrain image ...                   # tiny pixel UNet on natural patches
    python -m sqdf_bbo.pretrain consistency ...             # distil a one-call consistency model
"""
from __future__ import annotations

import sys

TIERS = {
    "vector": "sqdf_bbo.pretrain.vector:pretrain_vector_main",
    "image": "sqdf_bbo.pretrain.image:pretrain_image_main",
    "consistency": "sqdf_bbo.pretrain.distill:distill_main",
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in TIERS:
        got = argv[0] if argv else "(nothing)"
        raise SystemExit(f"error: unknown pretraining target {got!r}; allowed: {', '.join(TIERS)}")
    import importlib

    mod, _, fn = TIERS[argv[0]].partition(":")
    getattr(importlib.import_module(mod), fn)(argv[1:])
