"""Data-loader workers that never outlive their work.

Workers ignore Ctrl-C and SIGTERM (`worker_init`): `docker stop`, `timeout`, SLURM and a Kaggle
session's end signal the whole process group, and the training loop must first save a checkpoint.
Because they ignore SIGTERM, nothing but their own loader may stop them: every loop over a
DataLoader runs inside `worker_batches`, which stops the workers when the loop is left (done,
failed or interrupted), killing any that do not exit within WORKER_EXIT_SECONDS. As a last resort
an exit hook kills daemonic children still alive at interpreter exit, where multiprocessing would
otherwise send them the SIGTERM they ignore and join them without a timeout (a run that hangs
after its work is done).
"""

from __future__ import annotations

import atexit
import multiprocessing
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch.utils.data import DataLoader

WORKER_EXIT_SECONDS = 10.0  # a worker asked to exit gets this long before it is killed


def worker_init(_: int) -> None:
    """Workers ignore Ctrl-C and SIGTERM (sent to the whole process group): the main process
    saves a checkpoint, then stops them (`worker_batches`); they also exit on their own when the
    main process is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextmanager
def worker_batches(loader: DataLoader) -> Iterator[Iterator[Any]]:
    """An iterator over `loader` whose workers are stopped when the block is left, however."""
    batches = iter(loader)
    try:
        yield batches
    finally:
        stop_workers(batches)


def stop_workers(batches: Iterator[Any]) -> None:
    """Ask a loader iterator's workers to exit; kill those still alive after WORKER_EXIT_SECONDS."""
    workers = list(getattr(batches, "_workers", ()))
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()  # torch's own: an exit request, joins with a timeout, then SIGTERM (ignored)
    for worker in workers:
        worker.join(WORKER_EXIT_SECONDS)
        if worker.is_alive():
            worker.kill()
            worker.join(WORKER_EXIT_SECONDS)


def _kill_daemonic_children() -> None:
    """At exit: daemonic children (loader workers) still alive are killed, not joined."""
    for child in multiprocessing.active_children():
        if child.daemon:
            child.join(1.0)
            if child.is_alive():
                child.kill()
                child.join(WORKER_EXIT_SECONDS)


# Exit hooks run last-registered first: this one runs before multiprocessing's own, which would
# SIGTERM these children and join them without a timeout.
atexit.register(_kill_daemonic_children)
