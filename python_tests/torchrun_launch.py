"""Starting processes as torchrun does, for the multi-process tests (gloo on the CPU).

`torchrun(n)` uses torchrun's --standalone rendezvous, which binds a free port itself: a port picked
here and released before torchrun binds it could be taken in between by another process. `free_port()`
is for tests that start the ranks by hand (RANK, WORLD_SIZE, MASTER_PORT set by the test).
"""
from __future__ import annotations

import os
import socket
import sys


def torchrun(nproc: int) -> list[str]:
    """The command prefix of a one-machine torchrun with `nproc` processes (add `-m module` or a script)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(**extra: str) -> dict:
    """The test's environment with one thread per process and unbuffered output."""
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
