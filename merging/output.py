"""Atomic output folders: written under a temporary sibling, renamed only when complete.

An interrupted merge leaves only ``.<name>.raysoup-tmp-<pid>-<id>``, never a folder
at the requested path; the next merge into the same path removes such leftovers
whose process is gone.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from merging.errors import MergeError

TMP_MARK = ".raysoup-tmp-"


@contextmanager
def staged_output(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder that becomes ``out_dir`` if the block succeeds."""
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and not overwrite:
        raise MergeError(
            f"output folder {out_dir} already exists; replace it with --overwrite "
            "(overwrite=True from Python)"
        )
    tmp = out_dir.parent / f".{out_dir.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(out_dir)
        tmp.mkdir()
        yield tmp
        _publish(tmp, out_dir)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MergeError(_cannot_write(out_dir, err)) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _cannot_write(out_dir: Path, err: OSError) -> str:
    reason = "no space left on the device" if err.errno == errno.ENOSPC else err.strerror
    return (
        f"cannot write the merged model to {out_dir}: {reason} ({err.filename or out_dir}); "
        "nothing was left there"
    )


def _publish(tmp: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    old = out_dir.parent / f".{out_dir.name}.raysoup-old-{uuid.uuid4().hex[:8]}"
    os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:  # --overwrite over a file (or a link): remove it, not only folders
        old.unlink(missing_ok=True)


def remove_stale(out_dir: Path) -> list[Path]:
    """Delete temporary siblings of ``out_dir`` left by merges whose process has died."""
    removed = []
    for path in out_dir.parent.glob(f".{out_dir.name}{TMP_MARK}*"):
        pid = path.name.removeprefix(f".{out_dir.name}{TMP_MARK}").split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
