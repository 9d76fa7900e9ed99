"""Writing the files a user keeps (converted weights, reports, figures, exported models) safely.

``atomic_write`` checks the destination before any work is spent on the content, writes to a
temporary file in the destination's directory and renames it into place only when the write has
finished: a failure part-way leaves any file already at the destination untouched and no
truncated file behind. Checkpoints written during training are detectron2's
(``DetectionCheckpointer``), which has its own conventions.
"""
import contextlib
import os
import tempfile
from typing import IO, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


def check_writable(path: PathLike) -> str:
    """The absolute ``path``, after checking that its directory exists and is writable and that
    ``path`` is not a directory; raises ``FileNotFoundError``/``PermissionError``/
    ``IsADirectoryError`` naming the problem otherwise."""
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path}: it is a directory; give a file name")
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"cannot write {path}: the directory {directory} does not exist (create it first)"
        )
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"cannot write {path}: the directory {directory} is not writable")
    return path


def _file_mode(path: str) -> int:
    """The permissions a new file at ``path`` gets: those of the file it replaces, else the
    usual 0666 less the process's umask."""
    if os.path.exists(path):
        return os.stat(path).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing (``mode`` "wb" or "w"); when the block
    ends without an exception the file is flushed to disk and renamed to ``path`` (replacing any
    file there), otherwise it is removed and ``path`` is left as it was."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write writes whole files: mode must be 'wb' or 'w', got {mode!r}")
    path = check_writable(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode(path))  # mkstemp makes it private (0600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
