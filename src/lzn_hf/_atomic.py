"""Atomic file writes: a reader (a resume, a push, a user) sees the old file or the new one, never half of one.

Each writer fills a hidden temporary sibling (a unique name in the same folder, so the final rename stays on one
filesystem) and renames it over the target; on any failure the target is left as it was and the temporary file
is removed (a kill may leave a ``.NAME.*.partial`` file, never a broken ``NAME``).

Imports only the standard library: the code-carrying folders of ``save_pretrained(include_code=True)`` copy this
file beside the modules that import it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

__all__ = ["write_atomically", "write_text_atomically", "write_json_atomically"]


def write_atomically(path: Union[str, os.PathLike], write: Callable[[Path], Any]) -> Path:
    """``write(temporary_path)`` writes the whole file; it is then renamed over ``path``. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(handle)
    try:
        write(Path(temporary))
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
