"""One way to write a file so that readers never see a partial one."""
from __future__ import annotations

import os
import pathlib
import stat
import tempfile
from typing import Callable


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it (os.umask can only be read
    by setting it, which would briefly open files created by other threads to everyone)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(path: str | os.PathLike, directory: bool = False) -> int:
    """The mode a file or folder written at `path` should get: an existing one's own mode, else what
    open()/mkdir() would give under the umask (mkstemp/mkdtemp make 0600/0700, which would leave
    samples, weights and statistics unreadable to the rest of a group sharing them)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return (0o777 if directory else 0o666) & ~current_umask()


def mkdtemp_beside(path: str | os.PathLike, prefix: str) -> pathlib.Path:
    """A temporary folder in `path`'s parent, to be renamed onto `path`, with the mode mkdir() gives."""
    path = pathlib.Path(path)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=path.parent, prefix=prefix))
    os.chmod(tmp, new_file_mode(path, directory=True))
    return tmp


def atomic_write(path: str | os.PathLike, write: Callable[[pathlib.Path], object], *,
                 keep_suffix: bool = False) -> None:
    """Write `path` through a temporary file in the same folder: `write(tmp)` fills it, it is fsynced
    and renamed over `path` in one `os.replace`. On any error the temporary file is removed and an
    existing `path` is left as it was. `keep_suffix`: the temporary name ends with path's suffix
    (for writers that pick the format from it: mp4, gif, npz). The file gets an existing `path`'s
    mode, else the umask's, like a file written in place."""
    path = pathlib.Path(path)
    prefix, suffix = (f".{path.stem}.", path.suffix) if keep_suffix else (f".{path.name}.", ".tmp")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
    os.close(fd)
    try:
        write(pathlib.Path(tmp))
        os.chmod(tmp, new_file_mode(path))  # after write(): a writer may have replaced the file
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
