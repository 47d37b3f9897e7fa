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


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def worker_pool(processes: int, threads: int):
    """A pool of `processes` fresh interpreters (spawn: no forked OpenMP or kernel state), torch on `threads`
    threads in each: independent jobs side by side on the CPU."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"), initializer=_set_threads,
                               initargs=(threads,))
