"""File primitives the bundle and the caches are built on: writes that are never seen half done, the
writer lock, and swapping two folders in one step."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import glob
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgecl.errors import EdgeclError, param

LOCK = ".lock"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def naming_failures(path: Path) -> Iterator[None]:
    """An OSError raised in the block without a file name (a full disk in a write) takes `path`'s, so the
    one-line message says which file could not be written."""
    try:
        yield
    except OSError as err:
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(path)) from err
        raise


@contextmanager
def written_aside(path: Path, *, durable: bool = True) -> Iterator[Path]:
    """Yields a temporary name beside `path` for the caller to write; on success it is fsynced (durable)
    and renamed over `path`, on any failure (Ctrl-C, a full disk) removed: no half-written `path`, ever."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with naming_failures(path):
            yield tmp
            if durable:
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            os.replace(tmp, path)
    except BaseException:  # a kill leaves the temporary file for the next update to remove
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """Write aside, fsync, rename over `path`, fsync the directory."""
    with written_aside(path) as tmp:
        tmp.write_bytes(data)


def _lock_holder(lock_file: Path) -> str:
    try:
        pid = lock_file.read_text().strip()
    except OSError:
        pid = ""
    return f" (pid {pid})" if pid else ""


def _open_lock(path: Path) -> int:
    """The lock file, created 0664 whatever the umask, so that every member of the bundle's group (a setgid
    folder on the device) can take it after root or the service created it. One that exists but is not
    writable for us is opened read-only: flock needs no write access, only the holder's pid goes unwritten.
    Never through a symbolic link: a planted one must not redirect the pid written into it."""
    lock_file = Path(path) / LOCK
    while True:
        try:
            try:
                fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o664)
            except FileExistsError:
                pass
            else:
                try:
                    os.fchmod(fd, 0o664)  # the umask (022 for root and most services) took the group's write bit
                except OSError:  # a file system without modes (FAT): nothing to share
                    pass
                return fd
            try:
                return os.open(lock_file, os.O_RDWR | os.O_NOFOLLOW)
            except PermissionError:
                return os.open(lock_file, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            if not Path(path).is_dir():
                gone = "removed or being replaced while this process waited for it"
                raise EdgeclError(f"{path}: no such bundle ({gone})") from None
            # the lock file went between the two opens (its bundle replaced): create it again
        except OSError as error:
            if error.errno != errno.ELOOP:
                raise
            raise EdgeclError(f"{lock_file}: is a symbolic link; edgecl locks only a plain file (remove it)") from None


@contextmanager
def locked(path: Path, timeout: float) -> Iterator[None]:
    """Exclusive writer lock on the bundle; waits up to `timeout` seconds, then fails clearly."""
    lock_file = Path(path) / LOCK
    fd = _open_lock(path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise EdgeclError(
                        f"{path}: another edgecl process{_lock_holder(lock_file)} is updating this bundle; "
                        f"gave up after {timeout:g}s (raise {param('lock_timeout')} to wait longer)"
                    ) from None
                time.sleep(0.05)
                continue
            if _same_file(fd, lock_file):
                break
            fresh = _open_lock(path)  # `train --force` replaced the bundle while we waited: lock the new one
            os.close(fd)
            fd = fresh
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR:  # a read-only lock keeps the old pid
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 with RENAME_EXCHANGE), so no reader ever finds
    neither; False where the C library or the file system cannot, and the caller renames twice."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    at_cwd, exchange = -100, 2
    return renameat2 is not None and renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), exchange) == 0


@contextmanager
def held_scratch(folder: Path) -> Iterator[Path]:
    """An empty folder this process works in, removed afterwards. While it is in use, this process holds
    an flock on `<folder>.alive` beside it: a process killed meanwhile releases it, so the next writer
    can tell its leftovers from a folder still in use, whatever pid namespace either runs in."""
    folder = Path(folder)
    marker = folder.with_name(folder.name + ".alive")
    fd = os.open(marker, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o664)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            marker.unlink(missing_ok=True)
    finally:
        os.close(fd)


def remove_abandoned(parent: Path, prefix: str, *, legacy_age: float = 3600.0) -> None:
    """Remove the scratch folders `<parent>/<prefix>*` whose process is gone (their `.alive` flock is free).
    A folder without a marker (an older edgecl's) goes once its pid is dead and it is `legacy_age` old."""
    for entry in Path(parent).glob(glob.escape(prefix) + "*"):
        if entry.name.endswith(".alive"):
            if not entry.with_name(entry.name.removesuffix(".alive")).exists() and _free(entry):
                entry.unlink(missing_ok=True)
            continue
        if entry.is_symlink() or not entry.is_dir():
            continue
        marker = entry.with_name(entry.name + ".alive")
        if marker.exists():
            if _free(marker):
                shutil.rmtree(entry, ignore_errors=True)
                marker.unlink(missing_ok=True)
        elif not alive(entry.name.rpartition("-")[2]) and time.time() - entry.stat().st_mtime > legacy_age:
            shutil.rmtree(entry, ignore_errors=True)


def _free(marker: Path) -> bool:
    """Whether no process holds the flock on `marker` (it takes it for a moment to find out)."""
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
