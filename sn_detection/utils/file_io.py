"""Writing the files a user keeps (converted weights, reports, figures, exported models) whole or
not at all.

``atomic_write`` writes to a temporary file in the destination's folder and renames it into place
once complete: a failure part-way leaves the file already there untouched and no partial file.
``atomic_save`` does the same for writers implemented in C++ (``torch.save``, ``torch.jit.save``,
``torch.export.save``, ``onnx.save``). Checkpoints written during training are detectron2's.
"""

import contextlib
import io
import os
import tempfile
from typing import IO, Callable, Iterator, Union

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


def atomic_save(path: PathLike, save: Callable[[IO[bytes]], object]) -> None:
    """Write what ``save(f)`` writes into a binary file ``f`` to ``path``, whole or not at all.

    ``save`` writes to memory, then the bytes go to ``path`` through :func:`atomic_write`. On a
    full disk or past a file-size limit the C++ writers of torch and onnx raise a RuntimeError or
    abort the process; this way the failure is an ``OSError`` that names ``path``, and the file
    there stays as it was. Costs one copy of the file in memory.
    """
    path = check_writable(path)
    buffer = io.BytesIO()
    save(buffer)
    try:
        with atomic_write(path) as f:
            f.write(buffer.getbuffer())
    except OSError as e:
        reason = e.strerror or str(e)
        raise OSError(f"writing {path} failed ({reason}); any file there is unchanged") from e
