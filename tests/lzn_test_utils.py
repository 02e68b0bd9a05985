"""Shared test helpers: where the upstream parity fixtures live, a free local port, tiny images."""

import os
import socket
from pathlib import Path

import pytest

# `../shared/parity` beside the repository (CI lays a copy of shared/ there); LZN_PARITY_DIR overrides.
PARITY_DIR = Path(os.environ.get("LZN_PARITY_DIR", Path(__file__).resolve().parents[2] / "shared" / "parity"))


def parity_folder(name: str) -> Path:
    """The fixture folder `name`; skipped outside CI when absent, a failure in CI (which has them)."""
    folder = PARITY_DIR / name
    if not folder.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"parity fixtures missing in CI: {folder}")
        pytest.skip(f"parity fixtures not found at {folder}")
    return folder


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for `--main_process_port`, a local server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

def tiny_images(batch=4, channels=1, size=8, seed=0):
    """Seeded random images `[batch, channels, size, size]` in [-1, 1] (the tiny presets' 8x8 grayscale)."""
    import torch

    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
