"""The one way into a bundle's files. A bundle may come from anywhere, so every name its manifest holds
is resolved here before anything is opened: a plain file name in the bundle's folder or in its
`engines/` folder, reached through a descriptor of that folder, never through a symlink, and only if
it is a regular file of the size the manifest promises. Nothing outside the bundle is opened, written
or removed, however the manifest or the folder was edited."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from edgecl.errors import DamagedFile, EdgeclError

SUBFOLDERS = ("engines",)  # the only folders a bundle has
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_READ_FLAGS = (
    os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
)  # a FIFO must not block


class UnsafeName(EdgeclError):
    """A manifest names a file outside the bundle, through a symlink, or not a regular file."""


def check_name(name: object) -> tuple[str | None, str]:
    """(subfolder or None, file name) of a name a manifest may hold; UnsafeName otherwise."""
    if not isinstance(name, str) or not name:
        raise UnsafeName("not a file name")
    parts = PurePosixPath(name).parts
    if (
        not parts
        or name.startswith("/")
        or "\\" in name
        or len(parts) > 2
        or (len(parts) == 2 and parts[0] not in SUBFOLDERS)
    ):
        raise UnsafeName("not a plain file name inside the bundle (or its engines/ folder)")
    leaf = parts[-1]
    if (
        name.endswith("/")
        or leaf in (".", "..")
        or leaf.startswith(".")
        or not set(leaf) <= _NAME_CHARS
        or len(leaf) > 200
    ):
        raise UnsafeName("not a plain file name inside the bundle (letters, digits, '.', '_', '-')")
    return (parts[0] if len(parts) == 2 else None), leaf


class BundleFiles:
    """A bundle folder's files, each reached through the folder's descriptor (never a path that a
    symlink could redirect)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @contextmanager
    def folder(self, sub: str | None, *, create: bool = False) -> Iterator[int]:
        """A descriptor of the bundle folder (the path the user gave, links allowed) or of one of its
        subfolders (a real folder, never a link)."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if sub is not None:
                made = False
                if create:
                    try:
                        os.mkdir(sub, 0o775, dir_fd=fd)
                        made = True
                    except FileExistsError:
                        pass
                try:
                    inner = os.open(sub, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as err:
                    if err.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise UnsafeName(
                            f"{self.root / sub}: is not a folder of the bundle (a symlink, or a file); "
                            "the bundle is refused"
                        ) from None
                    raise
                if made:
                    try:
                        os.fchmod(
                            inner, 0o2775
                        )  # group-writable whatever the umask: the device's service and users share it
                    except OSError:
                        pass  # a file system without modes
                os.close(fd)
                fd = inner
            yield fd
        finally:
            os.close(fd)

    def _describe(self, name: str) -> Path:
        return self.root / name

    def read(self, name: str, size: int | None = None) -> bytes:
        """The bytes of `name`: a regular file of `size` bytes when the manifest says so."""
        sub, leaf = check_name(name)
        path = self._describe(name)
        with self.folder(sub) as folder:
            try:
                fd = os.open(leaf, _READ_FLAGS, dir_fd=folder)
            except FileNotFoundError:
                raise DamagedFile(f"{path}: missing; the bundle is damaged") from None
            except OSError as err:
                if err.errno == errno.ELOOP:
                    raise UnsafeName(
                        f"{path}: is a symlink; a bundle's files are its own, the bundle is refused"
                    ) from None
                raise
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise UnsafeName(f"{path}: is not a regular file; the bundle is refused")
                if size is not None and info.st_size != size:
                    raise DamagedFile(
                        f"{path}: {info.st_size} bytes where the manifest says {size}; the bundle is damaged"
                    )
                os.set_blocking(fd, True)
                with os.fdopen(fd, "rb", closefd=False) as handle:
                    return handle.read()
            finally:
                os.close(fd)

    def size(self, name: str) -> int | None:
        """The size of a regular file `name`, None where there is none (missing, a link, not a file)."""
        sub, leaf = check_name(name)
        try:
            with self.folder(sub) as folder:
                info = os.stat(leaf, dir_fd=folder, follow_symlinks=False)
        except (FileNotFoundError, UnsafeName, NotADirectoryError):
            return None
        return info.st_size if stat.S_ISREG(info.st_mode) else None

    def digest_matches(self, name: str, sha256: str) -> bool:
        from edgecl.core.bundle import sha256_bytes

        try:
            return sha256_bytes(self.read(name)) == sha256
        except (DamagedFile, UnsafeName):
            return False

    def write(self, name: str, data: bytes, replaced: Callable[[], None] | None = None) -> None:
        """`name` replaced by `data` all at once: written aside (O_EXCL, no link followed), fsynced,
        renamed, the folder fsynced. A failure before the rename leaves `name` as it was and no temporary
        file; `replaced` is called right after the rename, before anything else can fail."""
        sub, leaf = check_name(name)
        tmp = f".{leaf}.tmp-{os.getpid()}"
        with self.folder(sub, create=sub is not None) as folder:
            try:
                os.unlink(tmp, dir_fd=folder)  # left by an earlier process of this pid
            except FileNotFoundError:
                pass
            fd = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                0o664,
                dir_fd=folder,
            )
            try:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, leaf, src_dir_fd=folder, dst_dir_fd=folder)
                if replaced is not None:
                    replaced()
            except BaseException as err:
                try:
                    os.unlink(tmp, dir_fd=folder)
                except FileNotFoundError:
                    pass
                if isinstance(err, OSError) and err.filename is None:  # a full disk names the file it could not write
                    err.filename = str(self._describe(name))
                raise
            os.fsync(folder)

    def unlink(self, name: str) -> None:
        """Remove `name` (a link is removed, never what it points at); nothing if it is not there."""
        sub, leaf = check_name(name)
        try:
            with self.folder(sub) as folder:
                os.unlink(leaf, dir_fd=folder)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            pass  # a folder where a file was named: not one of the bundle's files
        except UnsafeName:
            pass  # a subfolder that is a link: nothing of the bundle's is in it

    def remove_temporary(self, sub: str | None = None) -> None:
        """Remove the `.<name>.tmp-<pid>` files writers that were killed left behind."""
        try:
            with self.folder(sub) as folder:
                for leaf in os.listdir(folder):
                    if leaf.startswith(".") and ".tmp-" in leaf:
                        try:
                            os.unlink(leaf, dir_fd=folder)
                        except (FileNotFoundError, IsADirectoryError, PermissionError):
                            pass
        except (FileNotFoundError, UnsafeName):
            pass

    def listing(self, sub: str | None = None) -> list[str]:
        """The names in the bundle folder (or a real subfolder), as the manifest would spell them."""
        try:
            with self.folder(sub) as folder:
                names = os.listdir(folder)
        except (FileNotFoundError, UnsafeName):
            return []
        return sorted(f"{sub}/{n}" if sub else n for n in names)
