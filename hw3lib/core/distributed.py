"""Which process this is, decided once (nanoGPT's `master_process`): the initialised process group's
rank when there is one, else torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), else a single
process. Every rank-dependent choice (who writes files, who prints, which GPU) reads `processes()`."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Processes:
    rank: int  # this process's rank in the job (0 without torchrun)
    world: int  # processes in the job
    local_rank: int  # this process's index on its machine (its GPU)

    @property
    def master_process(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0


def processes() -> Processes:
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return Processes(dist.get_rank(), dist.get_world_size(), local)
    return Processes(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), local)


def _start_worker(threads: int, parent: int, poll_s: float) -> None:
    """A pool worker's start: torch on `threads` threads, and a watch on the process that made the pool."""
    import torch

    torch.set_num_threads(threads)
    watch_parent(parent, poll_s)


def watch_parent(parent: int, poll_s: float = 0.5) -> None:
    """End this process as soon as `parent` is no longer its parent, however the parent died (kill -9, a
    closed terminal's SIGHUP, a crash): an orphaned worker would hold its memory, waiting for work that never
    comes. A daemon thread polls the parent pid (the way ipykernel's parent poller does; Linux's
    PR_SET_PDEATHSIG fires when the *thread* that started the worker ends, which a pool's manager thread may)."""
    import threading
    import time

    def watch():
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="hw3-parent-watch", daemon=True).start()


def worker_pool(processes: int, threads: int, poll_s: float = 0.5):
    """A pool of `processes` fresh interpreters (spawn: no forked OpenMP or kernel state), torch on `threads`
    threads in each: independent jobs side by side on the CPU. Each worker ends within `poll_s` seconds of
    its parent's death (`watch_parent`), so nothing outlives a killed report."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                               initargs=(threads, os.getpid(), poll_s))
