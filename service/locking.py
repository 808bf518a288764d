"""One writer process per embedded index directory: the lock `serve` and `index` both take."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from retrieval.errors import LabelrankError
from service.settings import Settings

# The name predates `index` taking the lock too; kept so that any server still running from
# before holds the same file.
LOCK_NAME = "labelrank-serve.lock"

_DOING = {"serve": "already served", "index": "being indexed"}
_ADVICE = {
    "serve": "run one worker, or use a Chroma server (LABELRANK_CHROMA_HOST) for several",
    "index": "change labels through the running server's API (PUT /v1/labels/{id}), stop it "
             "first, or build into a new directory and switch",
}


class DirectoryBusyError(LabelrankError):
    code = "index_in_use"
    status = 503


def hold_directory(db: Path, purpose: str) -> IO[str]:
    """Take the exclusive lock on an embedded index directory for `purpose` (`serve` or
    `index`), or fail at once with DirectoryBusyError; closing the handle releases it."""
    db.mkdir(parents=True, exist_ok=True)
    handle = (db / LOCK_NAME).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = _holder(handle.read())
        handle.close()
        raise DirectoryBusyError(
            f"the embedded index {db} is {_DOING.get(holder.get('purpose', ''), 'in use')} by "
            f"another process (labelrank {holder.get('purpose', '?')}, pid "
            f"{holder.get('pid', '?')}); Chroma's embedded mode is not safe for several writer "
            f"processes: {_ADVICE.get(purpose, _ADVICE['index'])}",
            path=str(db), holder=holder) from None
    handle.truncate(0)
    handle.write(json.dumps({"pid": os.getpid(), "purpose": purpose}) + "\n")
    handle.flush()
    return handle


@contextmanager
def writing(settings: Settings, purpose: str) -> Iterator[None]:
    """Hold the index directory while a command writes it; a Chroma server needs no lock."""
    if settings.chroma_host is not None:
        yield
        return
    handle = hold_directory(settings.db, purpose)
    try:
        yield
    finally:
        handle.close()


def _holder(content: str) -> dict[str, object]:
    try:
        found = json.loads(content.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {}
    return found if isinstance(found, dict) else {}
