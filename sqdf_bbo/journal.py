"""The query journal: every oracle answer is on disk before the agent sees it, so a resumed run never
asks the oracle twice (DESIGN.md "Trust boundaries").

``journal.jsonl`` in the run folder, one line per oracle batch, appended and fsync'ed right after the
environment answers:

    {"round": r, "batch": i, "start": first query index, "n": m, "designs_sha256": ..., "observed": [...],
     "true": [...], "env_state": {...}}

``env_state`` is the environment's state after the batch (budget used, noise generator), so replaying a
batch leaves the environment exactly where the original call left it. On ``--resume`` the runner replays
every journaled batch of the round it re-enters instead of querying, after checking that the resumed
agent proposed byte-identical designs (sha256 of their float32 bytes); a mismatch is refused. A torn last
line (a kill during the write) is ignored: that batch's answer never reached the agent.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from sqdf_bbo.io import atomic_write_text


def designs_sha256(designs: torch.Tensor) -> str:
    """sha256 of the designs' float32 bytes (what the oracle was sent)."""
    return hashlib.sha256(designs.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()


class QueryJournal:
    """Append-only, fsync'ed record of oracle batches, keyed by (round, batch)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[tuple[int, int], dict] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        lines = self.path.read_text().split("\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:  # a torn last line: the agent never saw this batch; drop it so the
                    good = "".join(x + "\n" for x in lines[:i] if x.strip())  # next append starts a clean line
                    atomic_write_text(self.path, good)
                    break
                raise ValueError(f"query journal {self.path} is corrupt at line {i + 1}; it cannot be replayed "
                                 "(delete the run folder to start over)") from None
            self.entries[(int(e["round"]), int(e["batch"]))] = e

    def reset(self) -> None:
        """Start an empty journal (a fresh run)."""
        self.entries = {}
        self.path.write_text("")

    def get(self, rnd: int, batch: int) -> Optional[dict]:
        return self.entries.get((rnd, batch))

    def append(self, rnd: int, batch: int, start: int, designs: torch.Tensor, observed: np.ndarray,
               true: np.ndarray, env_state: dict) -> None:
        e = {"round": rnd, "batch": batch, "start": start, "n": int(len(designs)),
             "designs_sha256": designs_sha256(designs), "observed": [float(v) for v in observed],
             "true": [float(v) for v in true], "env_state": env_state}
        with open(self.path, "a") as f:
            f.write(json.dumps(e) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.entries[(rnd, batch)] = e
