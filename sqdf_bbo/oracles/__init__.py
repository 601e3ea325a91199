"""Embedded oracles and fixed feature encoders for the image tier (weights in sqdf_bbo/tasks/assets/).

Submodules: ``rand_aesthetic`` (the RandAesthetic stand-in oracle), ``proxy_features`` (the proxy
feature map agents see), ``encoders`` (frozen random conv encoders). Imported lazily.
"""
import importlib

_LAZY = {"RandAesthetic": "rand_aesthetic", "gt_statistics": "rand_aesthetic",
         "load_rand_aesthetic": "rand_aesthetic", "load_proxy_features": "proxy_features"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"sqdf_bbo.oracles.{_LAZY[name]}"), name)
    raise AttributeError(name)


__all__ = list(_LAZY)
