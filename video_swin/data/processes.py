"""How the project starts its worker processes: from a clean process, never by forking the caller.

A process that has decoded video or run tensor ops holds FFmpeg's, OpenMP's
and torch's threads; ``fork`` copies their locks in whatever state they were,
and a child that touches them can wait forever (seen here: a forked ``prepare``
worker hung in libswscale's thread teardown inside PyAV's
``VideoFrame.reformat`` after the caller had decoded with PyAV). The library
is called from notebooks and long-lived processes, so its own pools
(``prepare``, ``predict``'s loader workers, demo-data generation) start their
workers from a forkserver: a fresh interpreter that imports the data package
once and forks each worker from itself, so a worker starts without inheriting
a thread and without importing torch again. Decoder helpers
(:mod:`video_swin.data.isolated`) spawn a fresh interpreter each: they are
started from DataLoader workers, where multiprocessing's forkserver belongs to
the parent process.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext

# What the forkserver imports once, so that each worker it forks starts with them loaded.
PRELOAD = ["video_swin.data"]


def worker_context() -> BaseContext:
    """The multiprocessing context for the project's worker pools: forkserver, or spawn where it is missing."""
    if "forkserver" not in multiprocessing.get_all_start_methods():  # Windows
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)  # no effect once the server runs (it then has them already)
    return context
