"""Decoders on tiny mp4s: frames by index, decord == PyAV, broken files, released readers.

Exactness across real-world encodings is in test_exact_decoding.py."""

import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from video_files import frame_indices_of, textured_frames, write_mp4

from video_swin.data import DecodeError, get_decoder
from video_swin.data.decoders import (
    DecordDecoder,
    ExactDecoder,
    PyAVDecoder,
    torchcodec_available,
)

DECODERS = [DecordDecoder(), PyAVDecoder(), get_decoder("decord"), get_decoder("auto")]
IDS = ["decord", "pyav", "decord+pyav", "auto"]
if torchcodec_available():
    from video_swin.data.decoders import TorchCodecDecoder

    DECODERS.append(TorchCodecDecoder())
    IDS.append("torchcodec")


@pytest.mark.parametrize("decoder", DECODERS, ids=IDS)
def test_frames_by_index_any_order_with_repeats(decoder, index_video):
    path = index_video(num_frames=60, gop=12)
    assert decoder.num_frames(path) == 60
    wanted = [59, 0, 13, 13, 30, 1, 47, 0]
    frames = decoder.get_frames(path, wanted)
    assert frames.dtype == torch.uint8 and frames.shape == (8, 24, 32, 3)
    assert frame_indices_of(frames) == wanted


@pytest.mark.parametrize("decoder", DECODERS, ids=IDS)
def test_read_chooses_indices_from_the_frame_count(decoder, index_video):
    path = index_video(num_frames=37)
    frames, indices = decoder.read(path, lambda n: np.arange(n - 4, n))
    np.testing.assert_array_equal(indices, [33, 34, 35, 36])
    assert frame_indices_of(frames) == [33, 34, 35, 36]


@pytest.mark.parametrize("fps,gop", [(25, 10), (Fraction(30000, 1001), 30), (15, 250)])
def test_decord_and_pyav_decode_identical_frames(tmp_path, fps, gop):
    path = write_mp4(tmp_path / "tex.mp4", textured_frames(75), fps=fps, gop=gop, crf=23)
    decord_dec, pyav_dec = DecordDecoder(), PyAVDecoder()
    assert decord_dec.num_frames(path) == pyav_dec.num_frames(path) == 75
    for wanted in ([0, 1, 2], [40, 41, 74], [9, 10, 11, 29, 30, 31], list(range(0, 75, 7))):
        a = decord_dec.get_frames(path, wanted).int()
        b = pyav_dec.get_frames(path, wanted).int()
        assert (a - b).abs().max() <= 1, wanted


@pytest.mark.parametrize("decoder", DECODERS, ids=IDS)
@pytest.mark.parametrize("kind", ["zero_bytes", "truncated", "truncated_data", "random_bytes", "text", "missing"])
def test_broken_files_raise_decode_error(decoder, kind, broken_files):
    path = broken_files[kind]
    with pytest.raises(DecodeError) as info:
        decoder.read(path, lambda n: [0, n // 2, n - 1])
    assert info.value.path == str(path) and info.value.reason


def test_fallback_decodes_what_decord_cannot(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr("video_swin.data.decoders._warned", False)  # warned once per process
    # decord 0.6 cannot convert frames 72 pixels wide; PyAV takes over for that file.
    path = write_mp4(tmp_path / "w72.mp4", textured_frames(12, height=48, width=72))
    with pytest.raises(DecodeError):
        DecordDecoder().get_frames(path, [0, 3])
    decoder = get_decoder("decord")
    assert isinstance(decoder, ExactDecoder)
    frames = decoder.get_frames(path, [0, 3])
    torch.testing.assert_close(frames, PyAVDecoder().get_frames(path, [0, 3]))
    assert any("decoded with pyav" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("decoder", DECODERS, ids=IDS)
def test_out_of_range_indices_are_a_value_error(decoder, index_video):
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        decoder.get_frames(index_video(num_frames=10), [3, 10])


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest.mark.parametrize("decoder", DECODERS, ids=IDS)
def test_no_file_stays_open_after_a_read(decoder, index_video):
    path = index_video()
    decoder.get_frames(path, [1])  # warm up library-level handles
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        decoder.get_frames(path, [1, 30])
    assert len(os.listdir("/proc/self/fd")) == before


def test_unknown_decoder_name():
    with pytest.raises(ValueError, match="unknown decoder"):
        get_decoder("opencv")


def test_importing_the_package_loads_no_decoder():
    code = "import sys, video_swin.data; print(sorted(m for m in ('decord', 'av', 'pytorchvideo') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
@pytest.mark.parametrize("decoder", DECODERS[:2], ids=IDS[:2])
def test_memory_stays_flat_over_many_videos(decoder, tmp_path):
    path = write_mp4(tmp_path / "m.mp4", textured_frames(30, height=96, width=128), gop=10, crf=23)

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    for _ in range(20):
        decoder.get_frames(path, [0, 15, 29])
    before = rss()
    for _ in range(150):
        decoder.get_frames(path, [0, 15, 29])
    assert rss() - before < 16 * 2**20
