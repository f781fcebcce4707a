"""Where commands may write: nothing that exists is replaced without --overwrite, nothing is deleted
that the command did not write, no URL is taken for a local path, no missing folder tree is created.

Commands call these checks before any expensive work, so a mistake costs one line and exit code 2:

- `check_output_files(paths, option, overwrite)`: the files a command is about to write (GeoTIFFs,
  .npy files); any that exists is refused unless `overwrite`, and their folders must exist or be
  creatable one level below an existing folder.
- `check_output_dir(path, option)`: a folder files go into (created later, one level only).
- `prepare_output_dir(path, command=..., owned=..., overwrite=...)`: a command's own working folder
  (the demo's): created if absent, used if empty, refused if it holds anything else unless it was made
  by the same command (an owner file says so) or `overwrite` is given; then only the command's own
  entries (`owned`) are deleted, never the folder itself or anything else in it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from tessera_pipeline.errors import OutputError

log = logging.getLogger(__name__)

#: File a command leaves in a working folder it created, naming itself (see `prepare_output_dir`).
OWNER_FILE = ".tessera-pipeline-output.json"

#: "scheme:/" as click.Path leaves "s3://bucket/key" ("s3:/bucket/key"), or any "scheme://".
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


def refuse_url(path: str | os.PathLike[str], option: str) -> None:
    """Refuse an s3:// (or any URL) value for an option that writes local files only."""
    text = os.fspath(path)
    if _URL_RE.match(text):
        raise OutputError(f"{option} {text}: must be a local path (URLs such as s3:// are accepted by --store only)")


def _check_folder(folder: Path, option: str, shown: str) -> None:
    """The folder exists, or its parent does (so at most one level is created); never a file."""
    if folder.exists():
        if not folder.is_dir():
            raise OutputError(f"{option} {shown}: {folder} is a file, not a folder")
        return
    if not folder.parent.is_dir():
        raise OutputError(f"{option} {shown}: folder {folder.parent} does not exist (create it first)")


def check_output_dir(path: str | os.PathLike[str], option: str) -> Path:
    """A folder outputs go into: local, not a file, and at most one level to create; returns it."""
    refuse_url(path, option)
    folder = Path(path)
    _check_folder(folder, option, os.fspath(path))
    return folder


def check_output_files(
    paths: Iterable[Path], option: str, *, overwrite: bool, layout_root: Path | None = None
) -> list[Path]:
    """Refuse before any work if a file to be written exists (unless `overwrite`) or cannot be placed.

    Each file's folder must exist or be one level below an existing folder, except folders inside
    `layout_root` (a layout the command builds under a folder checked with `check_output_dir`).
    """
    planned = list(paths)
    for path in planned:
        refuse_url(path, option)
        if path.is_dir():
            raise OutputError(f"{option}: {path} is a folder, expected a file name")
    for folder in sorted({p.parent for p in planned}):
        if layout_root is not None and folder.is_relative_to(layout_root):
            continue
        _check_folder(folder, option, str(planned[0]))
    existing = [p for p in planned if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise OutputError(f"{option}: {existing[0]}{more} exists; pass --overwrite to replace it")
    return planned


def _owner(path: Path) -> str | None:
    """The command named by a folder's owner file, or None."""
    try:
        doc = json.loads((path / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return str(doc.get("command")) if isinstance(doc, dict) else None


def prepare_output_dir(
    path: str | os.PathLike[str],
    *,
    command: str,
    owned: Iterable[str],
    overwrite: bool = False,
    option: str = "--out",
) -> Path:
    """Make `path` the command's working folder, deleting only the command's own `owned` entries.

    Absent: created (its parent must exist). Empty: used. Made earlier by the same `command` (it holds
    the owner file), or `overwrite`: the `owned` entries are deleted and everything else stays. Any
    other non-empty folder, or a file, is refused with an `OutputError` before anything is touched.
    """
    refuse_url(path, option)
    folder = Path(path)
    names = list(owned)
    bad = [n for n in names if not n or "/" in n or n in (".", "..", OWNER_FILE)]
    if bad:
        raise ValueError(f"owned entries must be plain names, got {bad}")
    _check_folder(folder, option, os.fspath(path))
    if folder.is_dir():
        entries = sorted(e.name for e in os.scandir(folder))
        if entries and _owner(folder) != command and not overwrite:
            raise OutputError(
                f"{option} {folder}: folder is not empty ({len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, "
                f"e.g. {entries[0]}) and was not "
                f"made by `{command}`; choose another folder, or pass --overwrite to replace {command}'s own files in it"
            )
        for name in names:
            target = folder / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
                log.info("removed %s (from an earlier %s)", target, command)
            elif target.exists() or target.is_symlink():
                target.unlink()
                log.info("removed %s (from an earlier %s)", target, command)
    else:
        folder.mkdir()
    (folder / OWNER_FILE).write_text(json.dumps({"command": command, "written_by": "tessera-pipeline"}) + "\n")
    return folder
