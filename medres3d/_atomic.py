"""Atomic file writes: a file appears complete or not at all, never half-written.

Used by the model file (:mod:`medres3d.modelfile`) and the training checkpoint
(:mod:`medres3d.training.checkpoint`), so a crash mid-write leaves the previous file in place.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from medres3d.errors import OutputWriteError


def write_atomically(path: Path, write: Callable[[str], object], what: str, *, fsync: bool = False) -> Path:
    """Call ``write(temporary)`` on a new file beside ``path``, then rename it over ``path``.

    The temporary file is in the same folder (so the rename is atomic) and is removed if
    anything fails.

    Args:
        path: destination file; its folder is created if missing.
        write: writes the whole file to the temporary path it is given.
        what: what the file is, for the error message ("model file", "checkpoint").
        fsync: force the data to the disk before the rename, so a power loss cannot leave an
            empty file under ``path``.

    Returns:
        ``path``.

    Raises:
        OutputWriteError: writing or renaming failed (the message names ``what`` and the cause).

    Example:
        >>> import pathlib, tempfile
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "sub" / "note.txt"
        >>> write_atomically(out, lambda tmp: pathlib.Path(tmp).write_text("hi"), "note").read_text()
        'hi'
        >>> sorted(p.name for p in out.parent.iterdir())
        ['note.txt']
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its private 0600 mode would survive the rename; 0o666 lets the umask decide,
    # as for any other output file. O_EXCL keeps the name exclusive all the same.
    tmp = str(path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    os.close(fd)
    try:
        write(tmp)
        # Writers that replace the file themselves (safetensors 0.8 does) leave it 0600 again.
        os.chmod(tmp, mode)
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise OutputWriteError(path, f"could not write the {what}: {err}") from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
