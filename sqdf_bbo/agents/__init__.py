"""Agent registry: built-in method names, or ``package.module:ClassName`` for a user's own agent."""
from __future__ import annotations

import importlib

from sqdf_bbo.agents.base import Agent, DiffusionAgent

#: method name -> "module:Class" (imported on first use, so running one method never imports the others)
METHODS: dict[str, str] = {
    "pretrained": "sqdf_bbo.agents.pretrained:PretrainedAgent",
    "random": "sqdf_bbo.agents.random_search:RandomSearchAgent",
    "sqdf": "sqdf_bbo.agents.sqdf:SQDFAgent",
    "ddpo": "baselines.ddpo:DDPOAgent",
    "ddpo-sf": "baselines.ddpo:DDPOSFAgent",
    "alignprop": "baselines.alignprop:AlignPropAgent",
    "draft": "baselines.draft:DRaFTAgent",
    "draft-k": "baselines.draft:DRaFTKAgent",
    "draft-1": "baselines.draft:DRaFT1Agent",
    "draft-lv": "baselines.draft:DRaFTLVAgent",
    "adjoint-matching": "baselines.adjoint_matching:AdjointMatchingAgent",
    "seiko": "baselines.seiko:SEIKOAgent",
    "best-of-n": "baselines.best_of_n:BestOfNAgent",
    "svdd": "baselines.svdd:SVDDAgent",
    "fk-steering": "baselines.fk_steering:FKSteeringAgent",
    "find": "baselines.find:FINDAgent",
    "dts": "baselines.dts:DTSAgent",
    "dts-star": "baselines.dts:DTSStarAgent",
    "d3po": "baselines.d3po:D3POAgent",
    "rlcm": "baselines.rlcm:RLCMAgent",
    "raft": "baselines.raft:RAFTAgent",
    "diffusion-nft": "baselines.diffusion_nft:DiffusionNFTAgent",
    "turbo": "baselines.turbo:TuRBOAgent",
    "qlognei": "baselines.qlognei:QLogNEIAgent",
}


def _import(spec: str):
    mod_name, _, cls_name = spec.partition(":")
    mod = importlib.import_module(mod_name)
    try:
        return getattr(mod, cls_name)
    except AttributeError:
        raise ValueError(f"module {mod_name!r} has no attribute {cls_name!r}") from None


def available_methods() -> list[str]:
    """All built-in method names. Each one is imported, so a missing or broken method raises here
    instead of silently dropping out of the list."""
    for name, spec in METHODS.items():
        try:
            _import(spec)
        except (ImportError, ValueError) as e:
            raise ImportError(f"built-in method {name!r} ({spec}) cannot be imported: {e}") from e
    return list(METHODS)


def resolve_method(method: str) -> type[Agent]:
    """Class for a method name or ``module:Class`` path; unknown names list what is allowed."""
    if ":" in method:
        try:
            cls = _import(method)
        except ImportError as e:
            raise ValueError(f"cannot import agent {method!r}: {e}") from None
    elif method in METHODS:
        try:
            cls = _import(METHODS[method])
        except ImportError as e:
            raise ValueError(f"method {method!r} is not available in this checkout ({e})") from None
    else:
        raise ValueError(
            f"unknown method {method!r}; allowed: {', '.join(METHODS)} "
            "or a 'package.module:ClassName' agent"
        )
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise ValueError(f"{method!r} is not a subclass of sqdf_bbo.agents.Agent")
    return cls


def make_agent(method: str, task_info, config: dict | None = None, seed: int = 0) -> Agent:
    return resolve_method(method)(task_info, config or {}, seed)


__all__ = ["Agent", "DiffusionAgent", "METHODS", "make_agent", "resolve_method", "available_methods"]
