"""Writes that survive a kill or a power loss: files and folders fsync'd before the rename that publishes them.

A rename is atomic, but without fsync a crash soon after it can leave the renamed folder holding empty or partial
files (the data still in the page cache). :func:`fsync_tree` flushes every file of a folder and the folder
entries themselves; :func:`publish_folder` renames a finished temporary folder into place and flushes the parent.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def _fsync_path(path: Path) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(folder: str | Path) -> None:
    """fsync every file under ``folder``, then every folder (deepest first), then ``folder`` itself."""
    folder = Path(folder)
    folders = []
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync_path(Path(root) / name)
        folders.append(Path(root))
    for path in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        _fsync_path(path)


def exchange(a: str | Path, b: str | Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system or the
    file system cannot, and nothing was changed."""
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def publish_folder(tmp: str | Path, final: str | Path) -> Path:
    """Make the finished folder ``tmp`` appear as ``final`` at once: flush it, then rename it into place. An old
    ``final`` is swapped out in the same step where the system allows it (else moved aside just before), so a
    reader finds the old folder or the new one, and a kill leaves one of them whole; the parent is flushed and
    the old folder removed."""
    tmp, final = Path(tmp), Path(final)
    fsync_tree(tmp)
    if final.exists() and exchange(tmp, final):
        _fsync_path(final.parent)
        shutil.rmtree(tmp, ignore_errors=True)  # now the old folder
        return final
    old = final.with_name(f".{final.name}.old-{os.getpid()}-0")
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_path(final.parent)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def staging_folder(final: str | Path, *, tag: str = "tmp") -> Path:
    """A new empty temporary sibling of ``final`` to build it in (``.<name>.<tag>-<pid>-<n>``), after removing
    the siblings that killed processes left (their pid no longer runs): a kill skips every ``finally``."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(final, tag=tag)
    for n in range(1000):
        candidate = final.with_name(f".{final.name}.{tag}-{os.getpid()}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"no free temporary folder name beside {final}")


def remove_stale_siblings(final: str | Path, *, tag: str = "tmp") -> list[Path]:
    """Remove ``.<name>.<tag>-<pid>-*`` siblings of ``final`` (and the ``.<name>.old-<pid>-*`` ones a kill
    during :func:`publish_folder` may leave) whose process is gone; return them."""
    final = Path(final)
    removed = []
    for kind in dict.fromkeys((tag, "old")):
        prefix = f".{final.name}.{kind}-"
        for sibling in final.parent.glob(prefix + "*"):
            pid = sibling.name.removeprefix(prefix).split("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                if sibling.is_dir():
                    shutil.rmtree(sibling, ignore_errors=True)
                else:
                    sibling.unlink(missing_ok=True)
                removed.append(sibling)
    return removed


def check_writable(folder: str | Path, *, flag: str) -> None:
    """Create ``folder`` (and parents) and write, fsync and remove a file in it; OSError → a message naming it
    (``flag``: where the path came from, e.g. ``--output-dir``)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{flag} '{folder}' is a file, not a folder; pass a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        with open(probe, "wb") as handle:
            handle.write(b"ok")
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()
    except OSError as error:
        raise PermissionError(f"{flag} '{folder}' is not writable ({error.strerror or error}); pass a folder you "
                              f"can write to") from None
