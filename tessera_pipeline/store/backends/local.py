"""A store in a local directory: atomic puts by write-fsync-rename, conditional puts under flock, durable by fsync."""

from __future__ import annotations

import fcntl
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tessera_pipeline.store.backends.base import TimedObject, content_tag


class LocalBackend:
    """A store in a local directory; atomic puts by write-fsync-rename, durable by fsync."""

    concurrent_listing = False
    listable = True
    writable = True
    deletes = True
    ranged_reads = True

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def zarr_store(self, key: str = "") -> Any:
        """A zarr LocalStore at the root, or at a prefix under it."""
        import zarr.storage

        self.root.mkdir(parents=True, exist_ok=True)
        return zarr.storage.LocalStore(self._path(key))

    def get(self, key: str) -> bytes | None:
        """Read a file, or None when absent (one unbuffered open and read: whole-store commands read 10^5 markers)."""
        try:
            with open(f"{self.url}/{key}" if key else self.url, "rb", buffering=0) as f:
                return f.readall()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def put_atomic(self, key: str, data: bytes) -> None:
        """Write to a hidden temporary file, fsync it, rename over the target, fsync the folder.

        Under the key's lock when the key has one (it was ever `put_if`-written), so an
        unconditional put never lands between a `put_if`'s compare and its swap.
        """
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked(path, create=False):
            self._replace(path, data)

    @property
    def conditional_writes(self) -> bool:
        """Always True: `put_if` is a compare-and-swap under an exclusive flock."""
        return True

    def get_tagged(self, key: str) -> tuple[bytes, str] | None:
        """The file's bytes and their sha256 hex, or None when absent (os.replace makes the read whole)."""
        data = self.get(key)
        return None if data is None else (data, content_tag(data))

    def get_timed(self, key: str) -> TimedObject | None:
        """The file, its sha256 and its age: the filesystem's modification time against the kernel's real-time
        clock (never the process's `time.time`, which a test or a skewed library may shift)."""
        path = self._path(key)
        try:
            with open(path, "rb", buffering=0) as f:
                data = f.readall()
                modified = os.fstat(f.fileno()).st_mtime
        except (FileNotFoundError, NotADirectoryError):
            return None
        age = time.clock_gettime(time.CLOCK_REALTIME) - modified
        return TimedObject(data, content_tag(data), max(0.0, age))

    def put_if(self, key: str, data: bytes, *, tag: str | None) -> bool:
        """Compare the file's sha256 with `tag` and replace it atomically, all under the key's flock."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked(path, create=True):
            current = self.get(key)
            if (None if current is None else content_tag(current)) != tag:
                return current == data
            self._replace(path, data)
        return True

    @contextmanager
    def _locked(self, path: Path, *, create: bool) -> Iterator[None]:
        """Hold an exclusive flock on the hidden `.{name}.lock` beside `path` (absent and not `create`: no lock)."""
        lock = path.with_name(f".{path.name}.lock")
        try:
            fd = os.open(lock, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        except (FileNotFoundError, NotADirectoryError):
            if create:
                raise
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _replace(self, path: Path, data: bytes) -> None:
        """Write a hidden temporary file, fsync it, os.replace it over `path`, fsync the folder."""
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)

    def put_many(self, items: dict[str, bytes]) -> None:
        """Write new files in place (their version folder is invisible until committed)."""
        for key, data in items.items():
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def exists(self, keys: list[str]) -> list[bool]:
        """A stat per file."""
        root = str(self.root)
        return [os.path.isfile(f"{root}/{key}") for key in keys]

    def list_children(self, key: str) -> list[str]:
        """Names in a directory, hidden temporaries excluded."""
        try:
            return sorted(e.name for e in os.scandir(self._path(key)) if not e.name.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def list_keys(self, prefix: str) -> list[str]:
        """Every file under a prefix (os.walk; hidden temporaries excluded)."""
        base = self._path(prefix)
        keys: list[str] = []
        for dirpath, _dirs, files in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            keys.extend(f"{rel}/{name}" for name in files if not name.startswith("."))
        return keys

    def scan(self, prefix: str) -> Iterator[tuple[str, float]]:
        """Files whose key starts with `prefix`, with their mtimes (scandir; hidden temporaries excluded)."""
        path = self._path(prefix)
        if prefix.endswith("/") or path.is_dir():
            folder, start = path, ""
        else:
            folder, start = path.parent, path.name
        rel = folder.relative_to(self.root).as_posix() if folder != self.root else ""
        yield from self._scan_dir(folder, rel, start)

    def _scan_dir(self, folder: Path, rel: str, start: str = "") -> Iterator[tuple[str, float]]:
        try:
            entries = os.scandir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return
        with entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.name.startswith(start):
                    continue
                key = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    yield from self._scan_dir(Path(entry.path), key)
                else:
                    yield key, entry.stat(follow_symlinks=False).st_mtime

    def delete_tree(self, key: str) -> None:
        """Remove a directory tree."""
        shutil.rmtree(self._path(key), ignore_errors=True)

    def delete(self, key: str) -> None:
        """Remove one file (under its lock when it has one, so a racing `put_if` sees it absent or present)."""
        path = self._path(key)
        with self._locked(path, create=False):
            path.unlink(missing_ok=True)

    def make_durable(self, key: str) -> None:
        """fsync every file and directory under the prefix, and the parents up to the root."""
        base = self._path(key)
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            _fsync_dir(Path(dirpath))
        parent = base
        while parent != self.root and parent.parent != parent:
            parent = parent.parent
            _fsync_dir(parent)


def _fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or new entry in it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

