"""Replacing a small file so that a power cut leaves the old one or the new one, never a mix: a temporary file
(created with the final mode, so a secret is never readable by others even for a moment), flushed, renamed
over the old one, and the directory flushed so the rename itself survives.

Every file first boot, enrollment and Wi-Fi setup write goes through `write_atomic`, and hearth.toml through
`update_toml`, which parses the whole file, sets keys and writes it whole (comments kept): setting a key twice
leaves it once, so a step that is cut short and run again converges instead of appending a duplicate key.

Root writes into the service user's data directory, which that user may have filled with symbolic links: the
writers here take a directory descriptor (`open_dir`) and never follow a link below it. The temporary file is
created O_EXCL|O_NOFOLLOW, the rename replaces a link planted at the final name instead of writing through it,
and `read_regular` reads only a regular file (not a link, FIFO or device).
"""

import errno
import json
import os
import stat
import threading

from edge.errors import EdgeError

READ_LIMIT = 1 << 20        # the files read here (hearth.toml, keys, seeds) are a few KiB


class UnsafePathError(EdgeError):
    """A name in a directory root writes into is a link or not a regular file (or directory)."""


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_dir(name: str, dir_fd: int | None = None, create_mode: int | None = None) -> int:
    """A descriptor of directory `name` (relative to dir_fd), never through a link; created with create_mode
    if missing and create_mode is given. The caller closes it."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (os.O_NOFOLLOW if dir_fd is not None else 0)
    for _ in range(2):
        try:
            return os.open(name, flags, dir_fd=dir_fd)
        except FileNotFoundError:
            if create_mode is None:
                raise
            try:
                os.mkdir(name, create_mode, dir_fd=dir_fd)
            except FileExistsError:
                pass
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafePathError(f"{name} is a symbolic link or not a directory; Hearth does not follow links "
                                      "in its data directory: remove it and run again") from None
            raise
    return os.open(name, flags, dir_fd=dir_fd)


def read_regular(name: str, dir_fd: int | None = None, limit: int = READ_LIMIT, *,
                 owner: int | None = None) -> bytes | None:
    """The bytes of regular file `name`, None if it does not exist; UnsafePathError for a link, FIFO, device or
    a file over `limit` bytes (none of which root should read on the service user's behalf), and, when `owner`
    (a uid) is given, for a file of another owner (a record only root writes, which the service user could
    plant)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(f"{name} is a symbolic link; Hearth does not follow links in its data "
                                  "directory: remove it and run again") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            raise UnsafePathError(f"{name} is not a regular file of at most {limit} bytes; remove it and run again")
        if owner is not None and st.st_uid != owner:
            raise UnsafePathError(f"{name} belongs to user {st.st_uid}, not {owner}; remove it and run again")
        chunks, left = [], limit + 1
        while left > 0 and (chunk := os.read(fd, left)):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_full(f, view) -> int:
    """Read from binary file object f into view until it is full or f ends (a pipe gives what it has); the bytes
    read."""
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def write_all(fd: int, data) -> None:
    """Write all of data to fd and make it durable (fsync)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def write_atomic(path: str, data: bytes, mode: int = 0o644, *, dir_fd: int | None = None,
                 owner: tuple[int, int] | None = None) -> None:
    """Replace `path` (a name inside dir_fd when that is given) with `data`, whole or not at all. `owner`
    (uid, gid) is set on the new file before it appears under its name."""
    if dir_fd is None:
        parent = open_dir(os.path.dirname(os.path.abspath(path)))
        try:
            return write_atomic(os.path.basename(path), data, mode, dir_fd=parent, owner=owner)
        finally:
            os.close(parent)
    name = path
    tmp = temp_name(name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, mode, dir_fd=dir_fd)
    except FileExistsError:          # left by a process of the same pid that was cut short (a reboot)
        os.unlink(tmp, dir_fd=dir_fd)
        fd = os.open(tmp, flags, mode, dir_fd=dir_fd)
    try:
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        raise
    os.fsync(dir_fd)


def temp_name(name: str) -> str:
    """The temporary name write_atomic writes `name` under in this thread: NAME.tmpPID.TID. A process's threads
    may write the same file at once (each its own whole version; the last replace wins), so the name says
    whose it is: with the process's id alone, one thread's retry removed the other's file before its rename."""
    return f"{name}.tmp{os.getpid()}.{threading.get_native_id()}"


def write_json(path: str, value, dir_fd: int | None = None, owner: tuple[int, int] | None = None) -> None:
    """write_atomic of a JSON record readable by its owner only (claims, enrollment records)."""
    write_atomic(path, json.dumps(value, indent=1, sort_keys=True).encode(), 0o600, dir_fd=dir_fd, owner=owner)


def remove_stale_temps(names, dir_fd: int) -> list[str]:
    """Remove the temporary files write_atomic left for `names` when it was cut short (a power cut); returns
    what was removed. Only for a directory no other writer uses at the same time (first boot's)."""
    removed = []
    prefixes = tuple(f"{n}.tmp" for n in names)
    for entry in os.listdir(dir_fd):
        if entry.startswith(prefixes) and entry.rsplit(".tmp", 1)[1].replace(".", "", 1).isdigit():
            os.unlink(entry, dir_fd=dir_fd)
            removed.append(entry)
    if removed:
        os.fsync(dir_fd)
    return removed


def update_toml(name: str, values: dict, *, dir_fd: int | None = None, comment: str | None = None,
                mode: int = 0o644, owner: tuple[int, int] | None = None) -> bool:
    """Set top-level keys of TOML file `name` (created if missing) and write it whole, atomically; comments and
    every other key are kept. `comment` goes above keys that were not there before. Returns whether the file
    changed. UnsafePathError / TomlError if the existing file is not a regular file of valid TOML."""
    import tomlkit
    from tomlkit.exceptions import TOMLKitError
    old = read_regular(name, dir_fd)
    try:
        doc = tomlkit.parse(old.decode()) if old is not None else tomlkit.document()
    except (TOMLKitError, UnicodeDecodeError) as exc:
        raise TomlError(f"{name} is not valid TOML ({exc}); fix or remove it and run again") from None
    new = [k for k in values if k not in doc]
    if new and comment:
        if doc.body:
            doc.add(tomlkit.nl())
        doc.add(tomlkit.comment(comment))
    for key, value in values.items():
        doc[key] = value
    text = tomlkit.dumps(doc).encode()
    if text == old:
        return False
    write_atomic(name, text, mode, dir_fd=dir_fd, owner=owner)
    return True


class TomlError(EdgeError):
    """A TOML file to be updated does not parse; nothing was written."""
