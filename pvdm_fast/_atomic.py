"""One way to write a file so that readers never see a partial one."""
from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[pathlib.Path], object], *,
                 keep_suffix: bool = False) -> None:
    """Write `path` through a temporary file in the same folder: `write(tmp)` fills it, it is fsynced
    and renamed over `path` in one `os.replace`. On any error the temporary file is removed and an
    existing `path` is left as it was. `keep_suffix`: the temporary name ends with path's suffix
    (for writers that pick the format from it: mp4, gif, npz)."""
    path = pathlib.Path(path)
    prefix, suffix = (f".{path.stem}.", path.suffix) if keep_suffix else (f".{path.name}.", ".tmp")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
    os.close(fd)
    try:
        write(pathlib.Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
