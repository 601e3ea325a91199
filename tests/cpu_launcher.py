"""Run a function in several CPU processes joined by gloo, for the data-parallel tests.

accelerate's ``debug_launcher`` starts its processes with ``fork``, which can deadlock when the parent already
runs other threads (a pytest-xdist worker does), and it rendezvous through one fixed port. This launcher
starts them with ``spawn`` (each child imports the test module afresh, so ``function`` must be a module-level
function) and gives each launch its own rendezvous file, so two launches at once never meet. The children
inherit the parent's ``sys.path`` and its file descriptors, so plug-ins named by module path and ``capfd``
work as in one process.
"""
from __future__ import annotations

import socket
import tempfile
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_on_cpu(function, args: tuple = (), num_processes: int = 2) -> None:
    """Call ``function(*args)`` in ``num_processes`` spawned processes, each in the gloo group of that size.

    Raises torch.multiprocessing's ProcessExitedException (a child exited with a non-zero code) or
    ProcessRaisedException (a child raised), as ``debug_launcher`` does.
    """
    from accelerate.utils import PrepareForLaunch, patch_environment
    from torch.multiprocessing import start_processes

    with tempfile.TemporaryDirectory(prefix="gloo_rdv_") as folder:
        with patch_environment(world_size=num_processes, master_addr="127.0.0.1", master_port=str(_free_port()),
                               accelerate_mixed_precision="no", accelerate_use_cpu="yes", gloo_socket_ifname="lo",
                               accelerate_debug_rdv_file=str(Path(folder) / "rendezvous")):
            start_processes(PrepareForLaunch(function, debug=True), args=args, nprocs=num_processes,
                            start_method="spawn")
