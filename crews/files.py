"""Opening input files: regular files only, and symbolic links only where someone chose them.

Intake reads folders that other programs fill (a mail server's Maildir, a drop folder for exports),
and a folder can hold more than files: open() on a FIFO waits for a writer forever, a device never
ends, and a symbolic link can point anywhere — a link to the project's `.env` once became a ticket
body that `check` printed and the ledger stored. So every input file is opened here: its type is
read with lstat before anything is opened (a FIFO or device is never opened at all), then it is
opened with O_NOFOLLOW | O_NONBLOCK and fstat on the descriptor confirms a regular file, so nothing
swapped in between the two is read. Links: a SOURCE named on the command line is followed (the
operator named it); a link found by walking a folder or matched by a glob is not, unless
settings.yaml `intake.follow_symlinks: true`. FIFOs, devices and sockets are never read.

Output files (the results sheet, reply files, eval logs, reports) are written here too, through
a temporary file beside them renamed over the old one, so a reader or a killed run never leaves
half a file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
         stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket", stat.S_IFLNK: "a symbolic link"}
FOLLOW_HINT = "set intake.follow_symlinks: true to read linked files"


class NotRegularFile(Exception):
    """`path` is not a regular file, or is a symbolic link that is not to be followed."""

    def __init__(self, path: Path | str, what: str, target: str = ""):
        self.path, self.what, self.target = Path(path), what, target
        super().__init__(self.reason)

    @property
    def reason(self) -> str:
        """Why a file found in a folder was not read (the reason of its rejection)."""
        if self.what == "a symbolic link":
            return f"a symbolic link (to {self.target}), not followed; {FOLLOW_HINT}"
        if self.what == "a broken symbolic link":
            return f"a symbolic link to {self.target}, which does not exist; fix or remove the link"
        if self.target:
            return f"a symbolic link to {self.what} ({self.target}), not a regular file; never opened"
        return f"{self.what}, not a regular file; never opened"


def kind(mode: int) -> str:
    return KINDS.get(stat.S_IFMT(mode), "not a regular file")


def open_regular(path: Path | str, follow_symlinks: bool = False) -> BinaryIO:
    """`path` opened for reading in binary; NotRegularFile for anything but a regular file (and for a
    link unless `follow_symlinks`), OSError as os.open raises it (missing, permissions)."""
    st = os.lstat(path)
    target = ""
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        if not follow_symlinks:
            raise NotRegularFile(path, "a symbolic link", target)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise NotRegularFile(path, "a broken symbolic link", target) from None
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFile(path, kind(st.st_mode), target)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # replaced by a link since lstat
            raise NotRegularFile(path, "a symbolic link", _readlink(path)) from exc
        if exc.errno == errno.ENXIO:  # replaced by a socket
            raise NotRegularFile(path, "a socket") from exc
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # replaced by a FIFO or device since lstat: never read
            raise NotRegularFile(path, kind(st.st_mode), target)
        os.set_blocking(fd, True)  # O_NONBLOCK only guarded the open; a file's reads may block
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_head(path: Path | str, size: int, follow_symlinks: bool = False) -> bytes:
    """The first `size` bytes of a regular file, as `open_regular` opens it."""
    with open_regular(path, follow_symlinks) as f:
        with named(path):
            return f.read(size)


@contextlib.contextmanager
def named(path: Path | str):
    """An OSError while reading (EIO) names no file; this names `path` for `read_problem`."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


def read_problem(path: Path | str, exc: OSError) -> str:
    """What to tell the operator when `path` (a file or folder) cannot be read."""
    where = exc.filename if exc.filename is not None else path
    if exc.errno in (errno.EACCES, errno.EPERM):
        parent = os.path.dirname(where)
        if parent and not os.access(parent, os.X_OK):
            where = parent  # a folder without the x bit: nothing in it can be opened
        access = "read and search (r-x)" if os.path.isdir(where) else "read"
        return (f"{where}: cannot be read ({exc.strerror}); give the user crewbatch runs as "
                f"({_user()}) {access} access to it, or copy it somewhere it can read")
    if exc.errno == errno.ENOENT:
        return f"{where}: no such file (it was removed while crewbatch read the source?)"
    return (f"{where}: cannot be read ({exc.strerror or exc}); the disk or share it is on may be "
            "failing: copy it elsewhere and pass the copy")


@contextlib.contextmanager
def replacing(path: Path | str) -> Iterator[Path]:
    """A temporary path beside `path` (its folder made if need be) for the caller to write the new
    content to; when the block ends it replaces `path` in one rename. If the block raises, the
    temporary file is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomically(path: Path | str, data: bytes | str, encoding: str = "utf-8") -> Path:
    """Write `data` (text is encoded as is: no newline translation) to `path` through `replacing`;
    return the path."""
    with replacing(path) as tmp:
        tmp.write_bytes(data.encode(encoding) if isinstance(data, str) else data)
    return Path(path)


def _readlink(path: Path | str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"
