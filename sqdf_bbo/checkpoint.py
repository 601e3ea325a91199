"""Checkpoints without pickle: a state tree of plain values and tensors, written as safetensors + JSON.

Loading a checkpoint executes no code from it: JSON is parsed, tensors are read by safetensors, and the
values are put into objects the *current* code built (an agent is constructed from its config first,
then its state is loaded into it). So a shared run folder cannot run code on ``--resume``, and a
checkpoint survives a code change as long as the state's names and shapes still match; otherwise
:class:`CheckpointError` names the first mismatch.

What a state tree may hold (:func:`encode`): None, bool, int, float (NaN/inf included), str; tensors;
``torch.Generator`` (its state); numpy arrays; ``torch.dtype``; lists, tuples and str-keyed dicts of
these; ``nn.Module`` (its state dict, plus its plain public attributes); ``torch.optim.Optimizer`` (its
state dict); dataclass instances and plain objects of classes listed in :data:`OBJECT_TYPES` (by their
fields). Anything else is refused when *saving*, naming the attribute, so no state is silently dropped.

Files (:func:`save`, :func:`load`): ``<stem>.json`` holds the tree's structure and plain values and the
name and sha256 of ``<stem>-<n>.safetensors``, which holds every tensor. The tensor file is written
first under a new name and the JSON last (both atomically), and older tensor files are removed only
after that, so a crash or a full disk at any moment leaves the last good checkpoint readable.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from sqdf_bbo.io import atomic_write_bytes, atomic_write_text

FORMAT = 1
#: plain classes whose instances are saved field by field (qualified name -> class); filled by
#: :func:`checkpointable`
OBJECT_TYPES: dict[str, type] = {}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or does not fit the current code (message names the place)."""


def checkpointable(cls: type) -> type:
    """Class decorator: instances may appear in a state tree (saved by their ``vars()``)."""
    OBJECT_TYPES[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def _qualname(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


# ---- encoding ---------------------------------------------------------------------------------------
def encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able description of ``value``; its tensors go into ``tensors`` under keys starting with ``path``."""
    if value is None or isinstance(value, (bool, str)):
        return {"k": "v", "v": value}
    if type(value).__name__ == "_Alias":  # sqdf_bbo.agents.base._Alias: another attribute, by name
        return {"k": "alias", "v": value.name}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            return {"k": "f", "v": repr(value)}  # 'nan', 'inf', '-inf'
        return {"k": "v", "v": value}
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().contiguous()
        return {"k": "t", "device": str(value.device), "grad": bool(value.requires_grad)}
    if isinstance(value, torch.Generator):
        tensors[path] = value.get_state()
        return {"k": "gen"}
    if isinstance(value, np.ndarray):
        wide = value.dtype.kind == "u" and value.dtype.itemsize > 1  # torch/safetensors lack uint16/32/64
        tensors[path] = torch.from_numpy(np.ascontiguousarray(value.astype(np.int64) if wide else value))
        return {"k": "np", "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return encode(value.item(), path, tensors)
    if isinstance(value, torch.dtype):
        return {"k": "dtype", "v": str(value).replace("torch.", "")}
    if isinstance(value, (list, tuple)):
        return {"k": "list" if isinstance(value, list) else "tuple",
                "v": [encode(x, f"{path}.{i}", tensors) for i, x in enumerate(value)]}
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise CheckpointError(f"cannot checkpoint {path}: dict key {bad[0]!r} is not a string")
        return {"k": "dict", "v": {k: encode(v, f"{path}.{k}", tensors) for k, v in value.items()}}
    if isinstance(value, nn.Module):  # a module may store less than its state dict (SD: only its LoRA)
        sd = value.checkpoint_state_dict() if hasattr(value, "checkpoint_state_dict") else value.state_dict()
        for k, t in sd.items():
            tensors[f"{path}#{k}"] = t.detach().cpu().contiguous()
        return {"k": "module", "class": _qualname(value), "attrs": _module_attrs(value, path, tensors)}
    if isinstance(value, torch.optim.Optimizer):
        sd = value.state_dict()
        state = {str(i): {k: encode(v, f"{path}#{i}.{k}", tensors) for k, v in s.items()}
                 for i, s in sd["state"].items()}
        return {"k": "optim", "class": _qualname(value), "state": state, "groups": sd["param_groups"]}
    name = _qualname(value)
    if name in OBJECT_TYPES:
        fields = ({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
                  if dataclasses.is_dataclass(value) else vars(value))
        return {"k": "obj", "class": name, "v": {k: encode(v, f"{path}.{k}", tensors) for k, v in fields.items()}}
    raise CheckpointError(f"cannot checkpoint {path}: a {name} is not plain state (see sqdf_bbo/checkpoint.py; "
                          f"mark its class @checkpointable, or leave it out of the state)")


def _module_attrs(module: nn.Module, path: str, tensors: dict) -> dict:
    """Plain public attributes of a module (not parameters, buffers or submodules), e.g. a proxy's y_mean.
    Attributes holding anything else (e.g. a LoRA config) are set by the code that builds the module."""
    out = {}
    for name, v in vars(module).items():
        if name.startswith("_") or name == "training" or isinstance(v, (nn.Module, torch.Tensor)):
            continue
        if v is None or isinstance(v, (bool, int, float, str, list, tuple, dict)):
            sub: dict[str, torch.Tensor] = {}
            try:
                out[name] = encode(v, f"{path}@{name}", sub)
            except CheckpointError:
                continue
            tensors.update(sub)
    return out


# ---- decoding ---------------------------------------------------------------------------------------
def decode(desc: Any, path: str, tensors: dict[str, torch.Tensor], current: Any = None,
           build: Optional[Callable[[str, dict], Any]] = None) -> Any:
    """The value described by ``desc``, loaded into ``current`` where that is a module, optimizer,
    generator or object of the saved class; ``build(path, desc)`` makes a missing module or optimizer."""
    k = desc["k"]
    if k == "v":
        return desc["v"]
    if k == "f":
        return float(desc["v"])
    if k in ("t", "np", "gen") and path not in tensors:
        raise CheckpointError(f"checkpoint lacks the tensor {path}")
    if k == "t":
        t = tensors[path]
        if isinstance(current, torch.Tensor):
            t = t.to(current.device)
        return t.requires_grad_(True) if desc.get("grad") and t.is_floating_point() else t
    if k == "np":
        return tensors[path].numpy().astype(desc["dtype"])
    if k == "gen":
        g = current if isinstance(current, torch.Generator) else torch.Generator()
        g.set_state(tensors[path])
        return g
    if k == "dtype":
        return getattr(torch, desc["v"])
    if k in ("list", "tuple"):
        cur = current if isinstance(current, (list, tuple)) and len(current) == len(desc["v"]) else [None] * len(desc["v"])
        items = [decode(d, f"{path}.{i}", tensors, c, build) for i, (d, c) in enumerate(zip(desc["v"], cur))]
        return items if k == "list" else tuple(items)
    if k == "dict":
        cur = current if isinstance(current, dict) else {}
        return {key: decode(d, f"{path}.{key}", tensors, cur.get(key), build) for key, d in desc["v"].items()}
    if k == "module":
        module = current if isinstance(current, nn.Module) and _qualname(current) == desc["class"] else None
        if module is None and build is not None:
            module = build(path, desc)
        if module is None:
            raise CheckpointError(f"checkpoint holds a {desc['class']} at {path}, which the current code does "
                                  f"not build there (found {type(current).__name__})")
        _load_module(module, path, tensors)
        for name, d in desc["attrs"].items():
            setattr(module, name, decode(d, f"{path}@{name}", tensors, getattr(module, name, None), build))
        return module
    if k == "optim":
        opt = current if isinstance(current, torch.optim.Optimizer) else (build(path, desc) if build else None)
        if opt is None:
            raise CheckpointError(f"checkpoint holds an optimizer at {path} the current code cannot rebuild")
        state = {int(i): {key: decode(d, f"{path}#{i}.{key}", tensors) for key, d in s.items()}
                 for i, s in desc["state"].items()}
        try:
            opt.load_state_dict({"state": state, "param_groups": desc["groups"]})
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"optimizer state at {path} does not fit the current parameters: {e}") from None
        return opt
    if k == "obj":
        cls = OBJECT_TYPES.get(desc["class"])
        if cls is None:
            raise CheckpointError(f"checkpoint holds a {desc['class']} at {path}, not a checkpointable class of "
                                  f"the current code")
        if dataclasses.is_dataclass(cls):
            cur = {f.name: getattr(current, f.name, None) for f in dataclasses.fields(cls)} if current is not None else {}
            fields = {name: decode(d, f"{path}.{name}", tensors, cur.get(name), build) for name, d in desc["v"].items()}
            return cls(**fields)
        if not isinstance(current, cls):
            raise CheckpointError(f"checkpoint holds a {desc['class']} at {path}; the current code has "
                                  f"{type(current).__name__} there")
        for name, d in desc["v"].items():
            setattr(current, name, decode(d, f"{path}.{name}", tensors, getattr(current, name, None), build))
        return current
    raise CheckpointError(f"unknown entry kind {k!r} at {path} (checkpoint format {FORMAT} expected)")


def _load_module(module: nn.Module, path: str, tensors: dict) -> None:
    prefix = f"{path}#"
    saved = {key[len(prefix):]: t for key, t in tensors.items() if key.startswith(prefix)}
    if hasattr(module, "load_checkpoint_state_dict"):
        try:
            module.load_checkpoint_state_dict(saved)
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"state of {path} does not match the current code: {e}") from None
        return
    own = module.state_dict()
    missing, extra = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    if missing or extra:
        raise CheckpointError(f"state of {path} does not match the current code: "
                              + (f"missing {missing[:3]}" if missing else "") + (" " if missing and extra else "")
                              + (f"unexpected {extra[:3]}" if extra else ""))
    buffers = dict(module.named_buffers())
    for key, t in saved.items():
        if key in buffers and own[key].shape != t.shape:  # buffers may change shape (e.g. a proxy's precision)
            owner, _, name = key.rpartition(".")
            sub = module.get_submodule(owner) if owner else module
            sub._buffers[name] = t.to(own[key].device, own[key].dtype).clone()
        elif own[key].shape != t.shape:
            raise CheckpointError(f"state of {path}: {key} has shape {tuple(t.shape)} in the checkpoint and "
                                  f"{tuple(own[key].shape)} in the current code")
    module.load_state_dict({key: t.to(own[key].device) for key, t in saved.items()}, strict=True)


# ---- files ------------------------------------------------------------------------------------------
def save(folder: Path, stem: str, tree: dict) -> None:
    """Write ``tree`` as ``<stem>.json`` + ``<stem>-<n>.safetensors`` in ``folder`` (module docstring)."""
    tensors: dict[str, torch.Tensor] = {}
    desc = {name: encode(v, name, tensors) for name, v in tree.items()}
    save_encoded(folder, stem, desc, tensors)


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """``tensors`` as one safetensors blob (tensors sharing storage are copied apart first)."""
    from safetensors.torch import save as st_save

    unshared, seen = {}, set()
    for key, t in tensors.items():  # safetensors refuses tensors that share storage
        unshared[key] = t.clone() if t.data_ptr() in seen else t
        seen.add(t.data_ptr())
    return st_save(unshared) if unshared else st_save({"_empty": torch.zeros(0)})


def save_encoded(folder: Path, stem: str, desc: dict, tensors: dict[str, torch.Tensor]) -> None:
    """:func:`save` of a tree already encoded (``desc`` from :func:`encode`, its ``tensors``), e.g. by an
    agent process that sends its state to the harness (sqdf_bbo/agent_process.py)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = tensor_bytes(tensors)
    json_path = folder / f"{stem}.json"
    n = 1 + max([int(p.stem.rsplit("-", 1)[1]) for p in folder.glob(f"{stem}-*.safetensors")
                 if p.stem.rsplit("-", 1)[1].isdigit()] or [0])
    tensor_name = f"{stem}-{n}.safetensors"
    atomic_write_bytes(folder / tensor_name, data)
    atomic_write_text(json_path, json.dumps({"format": FORMAT, "tensors": tensor_name,
                                             "sha256": hashlib.sha256(data).hexdigest(), "tree": desc}) + "\n")
    for p in folder.glob(f"{stem}-*.safetensors"):
        if p.name != tensor_name:
            try:
                p.unlink()
            except OSError:
                pass


def load(folder: Path, stem: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(description tree, tensors) of ``<stem>.json``; CheckpointError if a file is missing, truncated or
    does not match its recorded sha256."""
    from safetensors.torch import load as st_load

    json_path = Path(folder) / f"{stem}.json"
    try:
        rec = json.loads(json_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {json_path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {json_path} is corrupted or truncated ({e})") from None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT or "tree" not in rec:
        raise CheckpointError(f"checkpoint {json_path} is not a format-{FORMAT} sqdf-bbo checkpoint")
    tpath = Path(folder) / rec["tensors"]
    try:
        data = tpath.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint tensors {tpath} are missing") from None
    if hashlib.sha256(data).hexdigest() != rec["sha256"]:
        raise CheckpointError(f"checkpoint tensors {tpath} are corrupted or truncated (sha256 mismatch)")
    return rec["tree"], st_load(data)


def remove(folder: Path, stem: str) -> None:
    for p in list(Path(folder).glob(f"{stem}-*.safetensors")) + [Path(folder) / f"{stem}.json"]:
        if p.exists():
            os.unlink(p)
