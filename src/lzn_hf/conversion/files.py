"""Reading an upstream checkpoint file safely, and saying what a file is when it is not one.

Nothing beyond tensors and plain containers is ever unpickled: the file is recognised from its first bytes (a
PyTorch zip archive with a ``data.pkl``, or PyTorch's legacy format) and only then read with
``torch.load(weights_only=True)``. Anything else (an image, JSON, a safetensors file, a Git LFS pointer, a text or
HTML page, another archive) gets an error that says what it looks like and how to proceed.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import zipfile
from typing import Any, Dict, Optional, Union

import torch

__all__ = ["load_upstream_checkpoint", "describe_foreign_file"]

#: PyTorch's legacy (pre-1.6, non-zip) format starts with a pickle (protocol opcode, maybe a frame) of this LONG1 magic
#: number 0x1950a86a20f9469cfc6c.
_LEGACY_TORCH_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_MAGIC_BYTES = (  # (prefix, what the file looks like)
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"RIFF", "a RIFF file (e.g. a WebP image or WAV audio)"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip-compressed file (decompress it first)"),
    (b"BZh", "a bzip2-compressed file (decompress it first)"),
    (b"\xfd7zXZ\x00", "an xz-compressed file (decompress it first)"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (e.g. Keras weights)"),
    (b"PAR1", "a Parquet file"),
)
_FOREIGN_HINT = (
    "the released LZN checkpoints are torch.save files such as lzn1/case_study_3/000008000-000200000.pt from the Hub "
    "repo microsoft/latent-zoning-networks"
)


def _safetensors_header(path: str, head: bytes, size: int) -> Optional[dict]:
    """The JSON header when the file is a safetensors file (u64 little-endian header length, then a JSON object)."""
    if len(head) < 10 or head[8:9] != b"{":
        return None
    (length,) = struct.unpack("<Q", head[:8])
    if not 2 <= length <= min(size - 8, 100 * 1024 * 1024):
        return None
    with open(path, "rb") as handle:
        handle.seek(8)
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return header if isinstance(header, dict) else None


def _text_kind(head: bytes) -> Optional[str]:
    """What a text file looks like, or None when ``head`` is binary."""
    if b"\x00" in head:
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:  # a multi-byte character cut at the end of the sniffed block is still text
        if error.start < len(head) - 4:
            return None
        text = head[: error.start].decode("utf-8")
    stripped = text.lstrip("\ufeff \t\r\n")
    if stripped.startswith("version https://git-lfs.github.com/spec/"):
        return "a Git LFS pointer, not the file it points to (run `git lfs pull`, or download it with huggingface_hub.hf_hub_download)"
    if re.match(r"(?i)<(!doctype html|html|head|body)\b", stripped):
        return "an HTML page (a failed or redirected download?)"
    if stripped[:1] and stripped[:1] in "{[":
        return "a JSON file" + (" (a config? pass it as the config, not as the checkpoint)" if '"summary"' in text or '"model_type"' in text else "")
    return "a text file"


def describe_foreign_file(path: Union[str, os.PathLike]) -> Optional[str]:
    """What the (non-empty) file at ``path`` looks like when it is not a PyTorch checkpoint; None when it looks like
    one (a zip archive holding a ``data.pkl``, or PyTorch's legacy format). Reads the first bytes only."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(64 * 1024)
    if head[:1] == b"\x80" and _LEGACY_TORCH_MAGIC in head[:24]:
        return None
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            return "a truncated or corrupt zip archive (PyTorch checkpoints are zip archives: an incomplete download?)"
        if any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
            return None
        if any(name.endswith(".npy") for name in names):
            return "a NumPy .npz archive"
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        return f"a zip archive without the data.pkl of a PyTorch checkpoint (it holds {shown or 'nothing'})"
    for magic, kind in _MAGIC_BYTES:
        if head.startswith(magic):
            return kind
    header = _safetensors_header(path, head, size)
    if header is not None:
        names = [name for name in header if name != "__metadata__"]
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        return (
            f"a safetensors file (tensors {shown}). A converted lzn_hf model is a folder: load it with "
            "LZNModel.from_pretrained(folder). Upstream state dicts you saved as safetensors yourself can be converted "
            "from Python: convert_original_checkpoint({'encoder': safetensors.torch.load_file(path), ...}, config, "
            "use_ema=False)"
        )
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a plain Python pickle, not a torch.save file (lzn_hf does not unpickle arbitrary files)"
    return _text_kind(head) or f"an unrecognised binary file (it starts with {head[:8]!r})"


def _unpickler_reason(error: Exception) -> str:
    """The line of torch's weights-only error that names the problem (without its advice to load unsafely)."""
    _, _, detail = str(error).partition("WeightsUnpickler error:")
    line = next((line.strip() for line in detail.splitlines() if line.strip()), type(error).__name__)
    return re.sub(r" was not an allowed global.*", "", line)


def load_upstream_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """An upstream checkpoint dict, read with ``torch.load(map_location="cpu", weights_only=True)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        IsADirectoryError: ``path`` is a folder (the message lists the ``.pt`` files inside, or says it is already
            a converted model folder).
        ValueError: the file is empty, is not a PyTorch checkpoint (saying what it looks like), is truncated or
            corrupt, holds Python objects other than tensors and plain containers (refused, never loaded unsafely),
            or is a PyTorch file but not an upstream LZN checkpoint (listing what it holds).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "config.json")) or os.path.isfile(os.path.join(path, "model_index.json")):
            raise IsADirectoryError(f"checkpoint {path!r} is a folder written by save_pretrained, already converted: load it with from_pretrained")
        checkpoints = sorted(name for name in os.listdir(path) if name.endswith((".pt", ".pth", ".bin")))
        inside = f"; the .pt files in it: {checkpoints[:10]}" if checkpoints else ""
        raise IsADirectoryError(f"checkpoint {path!r} is a folder, not a checkpoint file{inside}")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"checkpoint: no file at {path!r}; the released checkpoints are downloaded first, e.g. "
            "huggingface_hub.hf_hub_download('microsoft/latent-zoning-networks', 'lzn1/case_study_3/000008000-000200000.pt')"
        )
    if os.path.getsize(path) == 0:
        raise ValueError(f"checkpoint {path!r} is an empty file (0 bytes): an interrupted download?")
    foreign = describe_foreign_file(path)
    if foreign is not None:
        raise ValueError(f"checkpoint {path!r} is not a PyTorch checkpoint: it looks like {foreign}; {_FOREIGN_HINT}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = _unpickler_reason(error)
        if not reason.startswith("Unsupported global"):  # a broken pickle stream, not a refused object
            raise ValueError(
                f"checkpoint {path!r} is a damaged PyTorch file (truncated or corrupt?), or uses a pickle feature that "
                f"torch.load(weights_only=True) does not read (e.g. a pickle protocol above 2 in the legacy format): {reason}"
            ) from None
        raise ValueError(
            f"checkpoint {path!r} holds Python objects other than tensors and plain containers ({reason}). lzn_hf "
            "reads upstream files with torch.load(weights_only=True) and never unpickles anything else; the released "
            "LZN checkpoints hold only tensors and plain containers, so this file is not one of them, or was modified"
        ) from None
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 -- any failure inside a recognised PyTorch file means damage
        raise ValueError(f"checkpoint {path!r} is a damaged PyTorch file (truncated or corrupt?): {type(error).__name__}: {error}") from error
    return _checked_upstream_dict(path, checkpoint)


def _checked_upstream_dict(path: str, checkpoint: Any) -> Dict[str, Any]:
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint {path!r} holds a {type(checkpoint).__name__}, not an upstream LZN checkpoint (a dict with an 'encoder' entry)")
    if "encoder" in checkpoint:
        return checkpoint
    keys = [str(key) for key in checkpoint]
    if keys and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        raise ValueError(
            f"checkpoint {path!r} holds one state dict (keys {keys[:3]}...), not a whole upstream LZN checkpoint with "
            "'encoder' (and 'decoder', 'label_anchor', '*_ema') entries; if it is an upstream network's state dict, pass "
            "{'encoder': state_dict, ...} to convert_original_checkpoint(..., use_ema=False)"
        )
    raise ValueError(f"checkpoint {path!r} is not an upstream LZN checkpoint: expected an 'encoder' entry, found {keys[:20]}")
