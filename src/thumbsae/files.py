"""Temp-name-then-rename writes, so that no reader ever sees a half-written file or folder.

Every package writes its outputs through these: the temporary lives in the destination's own
folder (a rename across file systems would not be atomic) and keeps the destination's suffix
(PIL, pandas and matplotlib pick the format from it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path


def _sibling(path: Path, tag: str) -> Path:
    """A hidden, unique name beside `path` that keeps its suffix: `.name.<tag>-<hex><suffix>`."""
    return path.with_name(f".{path.stem}.{tag}-{uuid.uuid4().hex[:12]}{path.suffix}")


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # os.umask can only be read by setting it; put it straight back
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _give_umask_modes(root: Path) -> None:
    """chmod `root` (and all under it, for a folder) to what the umask gives a new file or folder.

    Writers such as safetensors create 0600 files; an output must not keep that private mode
    once it is renamed into place. Executable files stay executable.
    """
    umask = current_umask()
    for path in [root, *(root.rglob("*") if root.is_dir() and not root.is_symlink() else ())]:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            continue
        if stat.S_ISDIR(info.st_mode) or info.st_mode & 0o111:
            mode = 0o777 & ~umask
        else:
            mode = 0o666 & ~umask
        if stat.S_IMODE(info.st_mode) != mode:
            os.chmod(path, mode)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, on failure remove it.

    The caller writes the temporary (any writer: `df.to_parquet(tmp)`, `img.save(tmp)`); the parent
    folder is created if missing. `fsync=True` flushes the file to disk before the rename. The
    file gets the mode the umask gives a new file, whatever mode its writer created it with.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic write of {path}: nothing was written to {tmp.name}")
        if fsync:
            _fsync_file(tmp)
        _give_umask_modes(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_atomic(path: str | os.PathLike, write_fn: Callable[[Path], object], *, fsync: bool = False) -> Path:
    """Call `write_fn(tmp)` on a temporary beside `path`, then rename it into place; returns `path`."""
    with atomic_path(path, fsync=fsync) as tmp:
        write_fn(tmp)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> Path:
    """Write `data` to `path` atomically; returns `path`."""
    return write_atomic(path, lambda tmp: tmp.write_bytes(data), fsync=fsync)


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8", fsync: bool = False) -> Path:
    """Write `text` to `path` atomically (no newline translation, so bytes match on every OS)."""
    return write_atomic(path, lambda tmp: tmp.write_bytes(text.encode(encoding)), fsync=fsync)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `path`; on success it replaces `path`, on failure it is removed.

    An existing `path` (file or folder) is moved aside and deleted only after the new folder is in
    place, so an interruption leaves either the old or the new content, never a mix. Everything in
    it gets the modes the umask gives new files and folders.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        _give_umask_modes(tmp)
        old = None
        if path.exists() or path.is_symlink():
            old = _sibling(path, "old")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            _remove(old)
    except BaseException:
        _remove(tmp)
        raise


def read_json_object(path: Path) -> dict:
    """The JSON object in `path`; one-line `ThumbsaeError` naming the file when it cannot be read,
    is not JSON, or holds something other than an object."""
    import json

    from thumbsae.errors import ThumbsaeError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ThumbsaeError(f"{path}: not readable JSON ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise ThumbsaeError(f"{path}: expected a JSON object")
    return data


def shown_path(path: str | os.PathLike) -> str:
    """`path` as a command line would show it: relative to the working directory when it lies
    inside it (`runs/x/sae`), else absolute."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix() or "."
    except ValueError:
        return str(resolved)


def key_digest(key: object, length: int) -> str:
    """A cache entry's name: the first `length` hex digits of the sha256 of `key` as sorted JSON,
    so equal keys name the same file or folder whatever the order they were built in."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:length]
