"""Optional experiment trackers people already use (``--set run.tracker=...``): nothing is required by default.

- ``none`` (default): the run folder's rounds.jsonl is the log.
- ``tensorboard``: ``torch.utils.tensorboard.SummaryWriter`` writing to ``<run folder>/tensorboard``; every
  numeric per-round metric (eval reward, path KL, Vendi, best-so-far, ...) and training statistic
  (``train/...``) against the number of oracle queries used, and the sample grid of every round.
- ``wandb``: Weights & Biases in offline mode (``WANDB_MODE=offline``, files under the run folder; sync them
  later with ``wandb sync``), as the official SQDF, SEIKO and ddpo-pytorch code log; needs ``pip install wandb``.

Trackers only mirror what the run folder already holds; a tracker that fails to start is a one-line error
when the run is built.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Optional

TRACKERS = ("none", "tensorboard", "wandb")


def _scalars(record: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out.update(_scalars(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[f"{prefix}{k}"] = float(v)
    return out


class Tracker:
    """No-op tracker (``none``); subclasses mirror each round's record and sample grid."""

    def log_round(self, record: dict, step: int, image: Optional[Path] = None) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker(Tracker):
    def __init__(self, folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ValueError(f"run.tracker=tensorboard needs the tensorboard package (pip install tensorboard): {e}") from None
        self.writer = SummaryWriter(log_dir=str(folder / "tensorboard"))

    def log_round(self, record: dict, step: int, image: Optional[Path] = None) -> None:
        for k, v in _scalars(record).items():
            self.writer.add_scalar(k, v, global_step=step)
        if image is not None and image.exists():
            import numpy as np
            from PIL import Image

            self.writer.add_image("samples", np.asarray(Image.open(image).convert("RGB")), global_step=step,
                                  dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    def __init__(self, folder: Path, name: str, config: dict):
        try:
            import wandb
        except ImportError:
            raise ValueError("run.tracker=wandb needs the wandb package (pip install wandb); it runs offline") from None
        os.environ.setdefault("WANDB_MODE", "offline")
        self.wandb = wandb
        self.run = wandb.init(dir=str(folder), name=name, config=config, mode="offline", reinit=True)

    def log_round(self, record: dict, step: int, image: Optional[Path] = None) -> None:
        data: dict[str, Any] = dict(_scalars(record))
        if image is not None and image.exists():
            data["samples"] = self.wandb.Image(str(image))
        self.run.log(data, step=step)

    def close(self) -> None:
        self.run.finish()


def make_tracker(kind: str, folder: Path, name: str, config: dict) -> Tracker:
    """The tracker for ``run.tracker``; ValueError (one line) for an unknown kind or a missing package."""
    if kind == "none":
        return Tracker()
    if kind == "tensorboard":
        return TensorBoardTracker(folder)
    if kind == "wandb":
        return WandbTracker(folder, name, config)
    raise ValueError(f"run.tracker must be one of {', '.join(TRACKERS)}, got {kind!r}")
