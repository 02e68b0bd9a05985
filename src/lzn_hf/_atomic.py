"""Atomic writes of files and folders: a reader (a resume, a push, a user) sees the old one or the new one, never
half of one.

Each writer fills a hidden temporary sibling (a unique name in the same folder, so the final rename stays on one
filesystem) and renames it over the target; on any failure the target is left as it was and the temporary sibling
is removed (a kill may leave a ``.NAME.*.partial`` file or a ``.NAME.partial-*`` folder, never a broken ``NAME``).
What lands has the permissions a plain ``open`` / ``mkdir`` would give it (the umask's), not the temporary's.
Files: :func:`write_atomically` (and its text / JSON forms); folders: :func:`atomic_folder`, the one folder writer
of lzn_hf (exported model folders, converted checkpoints, saved datasets, the demo's Space).

Imports only the standard library: the code-carrying folders of ``save_pretrained(include_code=True)`` copy this
file beside the modules that import it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Union

__all__ = ["write_atomically", "write_text_atomically", "write_json_atomically", "atomic_folder"]


def _current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it (``/proc/self/status``), else by the
    set-and-restore idiom."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomically(path: Union[str, os.PathLike], write: Callable[[Path], Any]) -> Path:
    """``write(temporary_path)`` writes the whole file; it is then renamed over ``path``. Returns ``path``.

    The file gets the permissions a plain ``open(path, "w")`` would give it: an existing ``path`` keeps its mode, a
    new one gets ``0o666`` less the umask (the temporary file itself is private, ``0o600``, while it is written).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(handle)
    try:
        write(Path(temporary))
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o666 & ~_current_umask()
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return path


def write_text_atomically(path: Union[str, os.PathLike], text: str) -> Path:
    """``text`` as UTF-8 (newlines written as given)."""

    def write(temporary: Path) -> None:
        with open(temporary, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)

    return write_atomically(path, write)


def write_json_atomically(path: Union[str, os.PathLike], data: Any, sort_keys: bool = False) -> Path:
    """``data`` as indented JSON with a final newline."""
    return write_text_atomically(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


def _remove(path: Path) -> None:
    """Remove a file, a link or a whole folder (a link is removed, never followed)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def _is_empty_folder(path: Path) -> bool:
    with os.scandir(path) as entries:
        return next(entries, None) is None


def _check_target(path: Path, overwrite: bool) -> None:
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder: move it away, or choose another output folder")
    if not overwrite and not _is_empty_folder(path):
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True to replace it")


@contextmanager
def atomic_folder(path: Union[str, os.PathLike], overwrite: bool = False, create: bool = True) -> Iterator[Path]:
    """Write the folder ``path`` whole or not at all: yields a temporary folder to fill, which takes the place of
    ``path`` when the ``with`` block ends without an error.

    Guarantees:

    * the temporary folder is a hidden sibling ``.{name}.partial-{random}`` in the same parent (created with its
      parents), so the final rename never crosses filesystems; it is made with ``os.mkdir``'s usual permissions;
    * on success an existing ``path`` is first moved aside to ``.{name}.old-{random}``, the new folder renamed in,
      and only then the old one deleted: at every moment ``path`` is the old folder, the new one or (between the
      two renames) absent, never a mix;
    * on any exception in the block (``KeyboardInterrupt`` included) the temporary folder is removed, ``path`` is
      left untouched and the exception propagates unchanged; should the final rename fail, the old folder is put
      back;
    * a killed process leaves at most hidden ``.{name}.partial-*`` / ``.{name}.old-*`` siblings, which the next
      ``atomic_folder(path)`` removes before it starts (so one writer per ``path`` at a time).

    Args:
        path: the folder to write. An existing ``path`` that is not a folder (a file, a symbolic link) is a
            ``FileExistsError`` naming it, before anything is written.
        overwrite: replace an existing non-empty folder. Without it a non-empty ``path`` is a ``FileExistsError``
            (checked before the block runs and again before the rename); an empty folder is always replaced, since
            it holds nothing to lose. Callers with their own rules (which folders may be replaced) check first.
        create: yield an existing empty folder (default) or, with ``create=False``, a fresh path the block creates
            itself (for writers that make their folder, e.g. ``DatasetDict.save_to_disk`` or ``shutil.copytree``).
    """
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise ValueError(f"atomic_folder: path must name a folder, got {os.fspath(path)!r}")
    _check_target(path, overwrite)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    leftover = re.compile(re.escape(f".{path.name}.") + r"(partial|old)-[^.]+")
    for entry in os.listdir(parent):
        if leftover.fullmatch(entry):
            _remove(parent / entry)
    while True:
        tag = secrets.token_hex(6)
        temporary = parent / f".{path.name}.partial-{tag}"
        try:
            if create:
                os.mkdir(temporary)
            elif os.path.lexists(temporary):
                continue
            break
        except FileExistsError:
            continue
    old = None
    try:
        yield temporary
        if not temporary.is_dir():
            raise FileNotFoundError(f"atomic_folder: the block wrote no folder at {temporary} to put in place of {path}")
        _check_target(path, overwrite)
        if os.path.lexists(path):
            old = parent / f".{path.name}.old-{tag}"
            os.replace(path, old)
        os.replace(temporary, path)
    except BaseException:
        if old is not None and not os.path.lexists(path):
            os.replace(old, path)  # the new folder could not be renamed in: the old one goes back
        _remove(temporary)
        raise
    if old is not None:
        _remove(old)
