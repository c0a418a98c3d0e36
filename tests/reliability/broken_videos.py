"""Every kind of bad video file the reliability tests feed the data layer, written into a Kinetics layout."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import av
import numpy as np

from tests.data.video_files import textured_frames, write_mp4
from video_swin.data import Decoder

HEADER = "label,youtube_id,time_start,time_end,split\n"

# kind -> what the reason a run reports for it must contain (None: not broken at all)
REASONS = {
    "zerobytes": "empty file (0 bytes)",
    "truncated": "cannot open it",  # the index (moov atom, at the end) was cut off
    "truncateddata": "",  # index intact, frames cut off: decord and PyAV word it differently
    "randombytes": "cannot open it",
    "text": "cannot open it",
    "novideostream": "no video stream",
    "danglinglink": "dangling symbolic link",
    "missingatruntime": "file not found",  # deleted after the annotations were read
    "oneframe": None,  # a real video of one frame: valid, the frame is repeated to fill the clip
}
HOSTILE = {"CRASH": "the decoder crashed (killed by signal SIGSEGV)",
           "HANG": "decoding did not finish within"}


def _audio_only(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write(kind: str, path: Path, good: Path, good_faststart: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "zerobytes":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncateddata":
        data = good_faststart.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "randombytes":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "text":
        path.write_text("this is not a video\n" * 40)
    elif kind == "novideostream":
        _audio_only(path)
    elif kind == "danglinglink":
        os.symlink(path.parent / "gone_for_good.mp4", path)
    elif kind == "missingatruntime":
        shutil.copyfile(good, path)
    elif kind == "oneframe":
        write_mp4(path, textured_frames(1, seed=9))
    elif kind in HOSTILE:
        shutil.copyfile(good, path)  # a fine file; only the hostile decoder below chokes on its name
    else:
        raise ValueError(kind)


def video_name(youtube_id: str) -> str:
    return f"{youtube_id}_000000_000010.mp4"


def add_bad_videos(root: Path, split: str, kinds, label: str = "bad") -> dict[str, Path]:
    """Writes one file per kind under ``root/split/label`` and appends their rows to ``root/split.csv``.

    Returns ``{kind: path}``; youtube ids are ``BAD<kind>`` (``CRASH...``/``HANG...`` for the hostile kinds).
    """
    src = root.parent / f"_sources_{split}"
    good = write_mp4(src / "good.mp4", textured_frames(40, height=48, width=64), gop=10, crf=23)
    good_fast = write_mp4(src / "good_fast.mp4", textured_frames(40, height=48, width=64), gop=10, crf=23,
                          faststart=True)
    csv = root / f"{split}.csv"
    if not csv.exists():
        csv.write_text(HEADER)
    paths = {}
    with open(csv, "a") as f:
        for kind in kinds:
            youtube_id = kind if kind in HOSTILE else f"BAD{kind}"
            path = root / split / label / video_name(youtube_id)
            _write(kind, path, good, good_fast)
            f.write(f"{label},{youtube_id},0,10,{split}\n")
            paths[kind] = path
    return paths


class HostileDecoder(Decoder):
    """Wraps a decoder; segfaults on files named ``*CRASH*``, exits on ``*EXIT*``, never returns on ``*HANG*``."""

    name = "hostile"

    def __init__(self, inner: Decoder) -> None:
        self.inner = inner

    def read(self, path, select):
        name = os.path.basename(str(path))
        if "CRASH" in name:
            os.kill(os.getpid(), signal.SIGSEGV)
        if "EXIT" in name:
            os._exit(7)
        if "HANG" in name:
            time.sleep(10**6)
        return self.inner.read(path, select)
