"""`python -m tests.faults POINT:N ERRNO hw3-args...`: the `hw3` command with a fault injected, for the
reliability tests. The N-th time the command passes the fault point POINT (`core.files.fault_point`),
the process is SIGKILLed, or, with ERRNO other than 0, OSError(ERRNO) is raised there (28: disk full)."""

import os
import signal
import sys

from hw3lib.app.cli import main
from hw3lib.core.files import fault_hook


def fault_at(spec: str, errno: int = 0):
    """The hook that fails at the N-th pass of POINT (spec "POINT:N")."""
    target, _, n = spec.rpartition(":")
    seen = {"count": 0}

    def hook(name: str) -> None:
        if name != target:
            return
        seen["count"] += 1
        if seen["count"] == int(n):
            if errno:
                raise OSError(errno, os.strerror(errno))
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


if __name__ == "__main__":
    spec, errno, *args = sys.argv[1:]
    with fault_hook(fault_at(spec, int(errno))):
        sys.exit(main(args))
