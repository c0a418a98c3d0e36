"""Fixtures: tiny real mp4 files written by the tests themselves, and broken ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from video_files import index_frames, textured_frames, write_mp4


@pytest.fixture
def index_video(tmp_path):
    """Factory: an index video at ``tmp_path/name``."""

    def make(name: str = "index.mp4", num_frames: int = 60, height: int = 24, width: int = 32, **kw) -> Path:
        return write_mp4(tmp_path / name, index_frames(num_frames, height, width), **kw)

    return make


@pytest.fixture
def broken_files(tmp_path) -> dict[str, Path]:
    """One file per kind of broken video, and a path that does not exist."""
    good = write_mp4(tmp_path / "src.mp4", textured_frames(40), gop=10, crf=23)
    good_fast = write_mp4(tmp_path / "src_fast.mp4", textured_frames(40), gop=10, crf=23, faststart=True)
    folder = tmp_path / "broken"
    folder.mkdir()
    files = {
        "zero_bytes": folder / "zero.mp4",
        "truncated": folder / "truncated.mp4",
        "truncated_data": folder / "truncated_data.mp4",
        "random_bytes": folder / "random.mp4",
        "text": folder / "text.mp4",
        "missing": folder / "missing.mp4",
    }
    files["zero_bytes"].write_bytes(b"")
    data = good.read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])  # moov atom lost
    data = good_fast.read_bytes()
    files["truncated_data"].write_bytes(data[: len(data) // 3])  # index intact, frames cut off
    files["random_bytes"].write_bytes(np.random.default_rng(0).bytes(4000))
    files["text"].write_text("this is not a video\n" * 50)
    return files
