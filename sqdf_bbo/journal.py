"""The query journal: every oracle answer is on disk before the agent sees it, so a resumed run never
asks the oracle twice (docs: "Reliability", trust boundary).

``journal.jsonl`` in the run folder, one line per oracle batch, appended and fsync'ed right after the
environment answers:

    {"round": r, "batch": i, "start": first query index, "n": m, "designs_sha256": ..., "observed": [...],
     "true": [...], "env_state": {...}, "prev": sha256 of the previous entry, "hash": sha256 of this one}

``env_state`` is the environment's state after the batch (budget used, noise generator), so replaying a
batch leaves the environment exactly where the original call left it. On ``--resume`` the runner replays
every journaled batch of the round it re-enters instead of querying, after checking that the resumed
agent proposed byte-identical designs (sha256 of their float32 bytes); a mismatch is refused.

The entries form a hash chain: ``hash`` is the sha256 of the entry's other fields (``prev`` included,
canonical JSON), ``prev`` the previous entry's ``hash`` (64 zeros for the first). ``journal.head`` holds
the number of entries and the newest hash, rewritten atomically after each append. Loading checks all of
it, so an edited value, a removed or reordered entry and an emptied or shortened journal are refused
(:class:`JournalError`, one line naming the file and the line). Only a torn last line (a kill during the
write: no newline after it and not a whole entry) is dropped; that batch's answer never reached the
agent and is bought again. Journals written before the chain (no ``hash`` fields) are refused too: their
values cannot be checked.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from sqdf_bbo.io import atomic_write_bytes, atomic_write_text


GENESIS = "0" * 64
REQUIRED = ("round", "batch", "start", "n", "designs_sha256", "observed", "true", "env_state", "prev", "hash")


class JournalError(ValueError):
    """A journal that cannot be replayed; the message is one line naming the file and the line."""


def designs_sha256(designs: torch.Tensor) -> str:
    """sha256 of the designs' float32 bytes (what the oracle was sent)."""
    return hashlib.sha256(designs.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()


def entry_hash(entry: dict) -> str:
    """sha256 of an entry's canonical JSON without its own ``hash`` (its ``prev`` link included)."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class QueryJournal:
    """Append-only, fsync'ed, hash-chained record of oracle batches, keyed by (round, batch)."""

    def __init__(self, path: Path, load: bool = True):
        """The journal at ``path``, read and checked if it exists and ``load`` (a fresh run passes False and
        calls :meth:`reset`)."""
        self.path = Path(path)
        self.head_path = self.path.with_name(self.path.stem + ".head")
        self.entries: dict[tuple[int, int], dict] = {}
        self.count, self.last_hash = 0, GENESIS
        if load and (self.path.exists() or self.head_path.exists()):
            self._load()

    def _fail(self, msg: str) -> JournalError:
        return JournalError(f"query journal {self.path} {msg}; it cannot be replayed (restore it, or delete the "
                            "run folder to start over)")

    def _parse(self) -> list[tuple[int, dict]]:
        """(line number, entry) of every line; a torn last line is dropped from the file."""
        data = self.path.read_bytes() if self.path.exists() else b""
        lines = data.split(b"\n")
        out = []
        for i, raw in enumerate(lines):
            if not raw.strip():
                continue
            try:
                e = json.loads(raw.decode("utf-8"))
                why = None if isinstance(e, dict) else "not a JSON object"
            except UnicodeDecodeError as err:
                why = f"not UTF-8: {err.reason} at byte {err.start}"
            except json.JSONDecodeError as err:
                why = f"not JSON: {err.msg}"
            last = i == len(lines) - 1  # no newline after it: written last, perhaps cut by a kill
            if last and (why is not None or any(k not in e for k in REQUIRED)):
                good = b"".join(x + b"\n" for x in lines[:i] if x.strip())  # torn: dropped, later appends stay clean
                atomic_write_bytes(self.path, good)
                break
            if why is not None:
                raise self._fail(f"is corrupt at line {i + 1} ({why})")
            out.append((i + 1, e))
        if data and not data.endswith(b"\n") and out and out[-1][0] == len(lines):
            with open(self.path, "ab") as f:  # a whole last entry without its newline: complete it
                f.write(b"\n")
        return out

    def _load(self) -> None:
        parsed = self._parse()
        if parsed and not any("hash" in e for _, e in parsed):
            raise JournalError(f"query journal {self.path} predates the hash chain (written by an older sqdf-bbo): "
                               "its answers cannot be checked, so it is not replayed; finish the run with the "
                               "version that started it, or delete the run folder to start over")
        prev = GENESIS
        for line, e in parsed:
            missing = [k for k in REQUIRED if k not in e]
            if missing:
                raise self._fail(f"is corrupt at line {line} (it lacks {', '.join(map(repr, missing))})")
            if entry_hash(e) != e["hash"]:
                raise self._fail(f"was edited at line {line} (its sha256 does not match its content)")
            if e["prev"] != prev:
                raise self._fail(f"is broken at line {line}: it does not follow the entry before it (an entry "
                                 "was removed or reordered)")
            prev = e["hash"]
            self.entries[(int(e["round"]), int(e["batch"]))] = e
        self.count, self.last_hash = len(parsed), prev
        try:
            head = json.loads(self.head_path.read_text())
            n, h = int(head["entries"]), str(head["hash"])
        except FileNotFoundError:
            raise self._fail(f"has no {self.head_path.name} beside it") from None
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise self._fail(f"has an unreadable {self.head_path.name}") from None
        if self.count < n:
            raise self._fail(f"holds {self.count} entries but {n} entries were written ({self.head_path.name}): "
                             "entries were removed")
        if n and parsed[n - 1][1]["hash"] != h:
            raise self._fail(f"differs at line {parsed[n - 1][0]} from the entry {self.head_path.name} recorded")

    def reset(self) -> None:
        """Start an empty journal (a fresh run)."""
        self.entries, self.count, self.last_hash = {}, 0, GENESIS
        atomic_write_text(self.path, "")
        self._write_head()

    def _write_head(self) -> None:
        atomic_write_text(self.head_path, json.dumps({"entries": self.count, "hash": self.last_hash}) + "\n")

    def get(self, rnd: int, batch: int) -> Optional[dict]:
        return self.entries.get((rnd, batch))

    def append(self, rnd: int, batch: int, start: int, designs: torch.Tensor, observed: np.ndarray,
               true: np.ndarray, env_state: dict) -> None:
        e = {"round": rnd, "batch": batch, "start": start, "n": int(len(designs)),
             "designs_sha256": designs_sha256(designs), "observed": [float(v) for v in observed],
             "true": [float(v) for v in true], "env_state": env_state, "prev": self.last_hash}
        e = json.loads(json.dumps(e))  # as it will read back (tuples -> lists), so the hash checks on load
        e["hash"] = entry_hash(e)
        with open(self.path, "a") as f:
            f.write(json.dumps(e) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.entries[(rnd, batch)] = e
        self.count, self.last_hash = self.count + 1, e["hash"]
        self._write_head()
