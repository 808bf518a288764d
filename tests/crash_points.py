"""`labelrank` that kills itself (SIGKILL, as `kill -9` does) just before its Nth Chroma write:
the crash points of a label write, hit one by one.

    python -m tests.crash_points N serve --db DB --port P
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

from chromadb.api.models.Collection import Collection

WRITES = ("add", "upsert", "update", "delete", "modify")


def arm(at: int) -> None:
    """Make the `at`-th write call of this process (1-based) never happen: the process dies."""
    count = 0

    def counted(write: Callable) -> Callable:
        def call(self: Collection, *args: object, **kwargs: object) -> object:
            nonlocal count
            count += 1
            if count == at:
                os.kill(os.getpid(), signal.SIGKILL)
            return write(self, *args, **kwargs)
        return call

    for name in WRITES:
        setattr(Collection, name, counted(getattr(Collection, name)))


if __name__ == "__main__":
    arm(int(sys.argv[1]))
    from eval.cli import main

    sys.argv = ["labelrank", *sys.argv[2:]]
    main()
