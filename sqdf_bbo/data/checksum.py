"""sha256 sidecar files for committed weights: ``<file>.sha256`` holds ``<hex>  <file name>``."""
from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checksum_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def write_checksum(path: str | Path) -> str:
    """Write ``<path>.sha256`` next to ``path`` and return the hex digest."""
    digest = sha256_of(path)
    checksum_path(path).write_text(f"{digest}  {Path(path).name}\n")
    return digest


def verify_checksum(path: str | Path) -> str:
    """Raise RuntimeError unless ``path`` matches its ``.sha256`` sidecar; returns the digest."""
    path = Path(path)
    side = checksum_path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} is missing (rebuild it, see its module docstring)")
    if not side.exists():
        raise RuntimeError(f"checksum file {side} is missing; refusing to load {path.name}")
    expected = side.read_text().split()[0].strip().lower()
    got = sha256_of(path)
    if got != expected:
        raise RuntimeError(f"sha256 mismatch for {path}: file has {got}, {side.name} expects {expected}")
    return got
