"""Encodings x decoders: which frames each returns, measured on the test corpus.

Writes the decoding corpus of the tests (tests/data/corpus.py: every frame
shows its own index) and reads, from each file, a test-style spread (4 clips
of 8 frames every 2) and every fifth frame one seek at a time, with:

* the bare libraries, as a user calling them directly would: decord's
  ``get_batch``, TorchCodec's ``get_frames_at`` (``seek_mode="exact"``);
* our decoders by name (``get_decoder``): which backend served each file and
  whether the frames were right.

A cell says ``exact``, ``WRONG (k of n frames)`` or ``error: ...``. Prints a
Markdown table (docs/BENCHMARKS.md keeps the latest).

Example:
    python benchmarks/decode_table.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data"))
from corpus import ENCODINGS, read_indices, write_all  # noqa: E402

from video_swin.data import DecodeError, get_decoder  # noqa: E402
from video_swin.data.decoders import (  # noqa: E402
    DecordDecoder,
    decord_available,
    torchcodec_available,
)
from video_swin.data.frame_index import build_frame_index  # noqa: E402
from video_swin.data.sampling import eval_clip_indices  # noqa: E402


def requests(n: int) -> list[list[int]]:
    spread = eval_clip_indices(n, clip_len=8, frame_interval=2, num_clips=4).reshape(-1).tolist()
    return [spread] + [[i] for i in range(0, n, 5)]


def judge(read, n: int, rotation: int) -> str:
    wrong = total = 0
    for wanted in requests(n):
        try:
            frames = read(wanted)
        except Exception as exc:  # noqa: BLE001  (a table cell, whatever it is)
            text = str(exc).split(": ", 1)[-1].splitlines()[0]
            return f"error: {text[:60]}"
        k = (rotation // 90) % 4
        got = read_indices(torch.rot90(frames, -k, dims=(1, 2)) if k else frames)
        wrong += sum(a != b for a, b in zip(wanted, got))
        total += len(wanted)
    return "exact" if wrong == 0 else f"WRONG ({wrong} of {total} frames)"


def served_by(name: str, path: Path) -> str:
    decoder = get_decoder(name)
    index = build_frame_index(path)
    for backend in decoder.backends:
        if backend.unsuitable(index) is None:
            try:
                backend.get_frames(path, [0, len(index) - 1])
            except DecodeError:
                continue
            return backend.name
    return "none"


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    names = ["decord", "pyav", "auto"] + (["torchcodec"] if torchcodec_available() else [])
    columns: dict[str, object] = {}
    if decord_available():
        columns["decord (bare)"] = lambda path: (lambda w: DecordDecoder(exact=False).get_frames(path, w))
    if torchcodec_available():
        from torchcodec.decoders import VideoDecoder  # noqa: PLC0415

        columns["TorchCodec (bare)"] = lambda path: (
            lambda w: VideoDecoder(str(path), seek_mode="exact", dimension_order="NHWC").get_frames_at(w).data)
    for name in names:
        columns[f"`{name}`"] = lambda path, name=name: (lambda w: get_decoder(name).get_frames(path, w))
    with tempfile.TemporaryDirectory() as tmp:
        files = write_all(Path(tmp))
        print("| encoding | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns))
        for enc in ENCODINGS:
            path = files[enc.name]
            cells = []
            for title, make in columns.items():
                cell = judge(make(path), enc.num_frames, enc.rotation)
                if not title.endswith("(bare)") and cell == "exact":
                    cell = f"exact ({served_by(title.strip('`'), path)})"
                cells.append(cell)
            print(f"| {enc.name} ({enc.size[1]}x{enc.size[0]}, {enc.num_frames} frames) | " + " | ".join(cells) + " |")
    print(f"\ndecord available: {decord_available()}; TorchCodec available: {torchcodec_available()}; "
          f"numpy {np.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
