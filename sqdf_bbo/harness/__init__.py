"""The harness: what runs one experiment (a task x a method x a seed, resumable), one module per concern.

- ``config.py``: :class:`RunConfig` (the run, built once from argv or keyword arguments), the ``run.*``
  settings, round sizes, :class:`FaultInjection`;
- ``cli.py``: the command line (``python -m sqdf_bbo.run`` = ``sqdf-bbo run``);
- ``loop.py``: :class:`Run`, the resumable round loop, and :func:`run_experiment`;
- ``evaluate.py``: the harness-side evaluation; ``persist.py``: the run folder, its lock, records and
  checkpoint files, ``load_agent``; ``guard.py``: calls into the agent; ``callbacks.py``: phase callbacks and
  the agent's step callback; ``console.py``: the ``sqdf-bbo`` console script.

``sqdf_bbo.run`` re-exports the public names. Importing this package imports no model library.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads at run time
