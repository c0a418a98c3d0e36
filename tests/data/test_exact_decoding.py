"""Every decoder returns the frames of a sequential decode, on files from real encoders, or a clear error.

The corpus (corpus.py) is written with FFmpeg's encoders through PyAV; each
frame shows its own index, so a decoded frame says where it came from.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from corpus import (
    BY_NAME,
    ENCODINGS,
    read_indices,
    sequential_indices,
    write,
    write_all,
)

from video_swin.data import DecodeError, get_decoder
from video_swin.data.decoders import (
    DecordDecoder,
    PyAVDecoder,
    TorchCodecDecoder,
    torchcodec_available,
)
from video_swin.data.frame_index import FrameIndex, FrameIndexCache, build_frame_index
from video_swin.data.sampling import eval_clip_indices, train_clip_indices

NAMES = ["decord", "pyav", "auto"] + (["torchcodec"] if torchcodec_available() else [])
BACKENDS = {"decord": DecordDecoder(), "pyav": PyAVDecoder()}
if torchcodec_available():
    BACKENDS["torchcodec"] = TorchCodecDecoder()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("corpus"))


def shown_indices(frames: torch.Tensor, rotation: int) -> list[int]:
    """Painted indices of frames that came out turned by ``rotation`` (as a player shows them)."""
    k = (rotation // 90) % 4
    return read_indices(torch.rot90(frames, -k, dims=(1, 2)) if k else frames)


def wanted_sets(n: int) -> list[list[int]]:
    rng = np.random.default_rng(n)
    train = train_clip_indices(n, clip_len=16, frame_interval=2, rng=rng).tolist()
    spread = eval_clip_indices(n, clip_len=8, frame_interval=2, num_clips=4).reshape(-1).tolist()
    return [train, spread, rng.choice(n, 12, replace=False).tolist(), [n - 1, 0, n // 2, n - 1]]


@pytest.mark.parametrize("encoding", [e.name for e in ENCODINGS])
def test_the_corpus_is_what_it_claims(corpus, encoding):
    # The ground truth itself: a sequential decode shows 0, 1, 2, ... in order.
    assert sequential_indices(corpus[encoding]) == list(range(BY_NAME[encoding].num_frames))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("encoding", [e.name for e in ENCODINGS])
def test_every_decoder_returns_the_frames_asked_for(corpus, encoding, name):
    enc, path, decoder = BY_NAME[encoding], corpus[encoding], get_decoder(name)
    assert decoder.num_frames(path) == enc.num_frames
    for wanted in wanted_sets(enc.num_frames):
        frames = decoder.get_frames(path, wanted)
        assert frames.dtype == torch.uint8 and frames.shape[-1] == 3
        assert shown_indices(frames, enc.rotation) == wanted, (encoding, name, wanted)


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("encoding", [e.name for e in ENCODINGS])
def test_a_backend_alone_is_exact_or_says_why_not(corpus, encoding, backend):
    enc, path = BY_NAME[encoding], corpus[encoding]
    wanted = wanted_sets(enc.num_frames)[1]
    try:
        frames = BACKENDS[backend].get_frames(path, wanted)
    except DecodeError as exc:
        assert exc.reason and "\n" not in exc.reason
        return
    assert shown_indices(frames, enc.rotation) == wanted


@pytest.mark.parametrize("encoding", ["h264_open_gop", "hevc", "mpeg4_bframes_avi"])
def test_bare_decord_is_wrong_where_the_guard_routes_files_away(corpus, encoding):
    # Why decord is guarded: without the frame index it returns other frames, silently.
    bare, wanted = DecordDecoder(exact=False), list(range(0, BY_NAME[encoding].num_frames, 3))
    got = [read_indices(bare.get_frames(corpus[encoding], [i]))[0] for i in wanted]  # one seek each
    assert got != wanted
    assert DecordDecoder().unsuitable(build_frame_index(corpus[encoding])) is not None


def test_rotation_is_applied_as_decord_applies_it(tmp_path):
    # decord turns frames by the display matrix where it can (sizes it handles): the reference.
    from dataclasses import replace

    enc = replace(BY_NAME["h264_rotated"], name="rot_wide", size=(64, 128), num_frames=24)
    path = write(enc, tmp_path)
    reference = DecordDecoder(exact=False).get_frames(path, [3, 17])
    assert reference.shape == (2, 128, 64, 3)
    for name in NAMES:
        frames = get_decoder(name).get_frames(path, [3, 17])
        assert frames.shape == reference.shape, name
        assert (frames.int() - reference.int()).abs().float().mean() < 2, name


def test_variable_frame_rate_positions_follow_timestamps(corpus):
    index = build_frame_index(corpus["h264_vfr"])
    gaps = np.diff(index.pts)
    assert len(set(gaps.tolist())) == 3  # steps of 1, 2 and 3 frame durations
    assert len(index) == BY_NAME["h264_vfr"].num_frames and index.timestamps


def test_index_properties(corpus):
    assert build_frame_index(corpus["h264_open_gop"]).open_gop
    assert not build_frame_index(corpus["h264_bframes"]).open_gop
    assert build_frame_index(corpus["h264_bframes"]).reordered
    assert not build_frame_index(corpus["vp9"]).reordered
    assert build_frame_index(corpus["h264_rotated"]).rotation == 90
    long = build_frame_index(corpus["h264_long"])
    assert long.keyframes[0] == 0 and np.all(np.diff(long.keyframes) > 0) and long.keyframes.size < 40


def test_far_apart_clips_are_read_with_separate_seeks(corpus, monkeypatch):
    # A spread over a 2,400-frame file must not decode everything in between.
    import av.container

    decoded = [0]
    original = av.container.InputContainer.decode

    def counting(self, *args, **kwargs):
        for frame in original(self, *args, **kwargs):
            decoded[0] += 1
            yield frame

    monkeypatch.setattr(av.container.InputContainer, "decode", counting)
    path = corpus["h264_long"]
    get_decoder("pyav").num_frames(path)  # index built (and its first-frame decode counted) before
    decoded[0] = 0
    wanted = [5, 6, 1200, 1201, 2390]
    frames = PyAVDecoder().get_frames(path, wanted)
    assert read_indices(frames) == wanted
    assert decoded[0] < 2400 // 3, decoded[0]


def test_index_cache_is_keyed_by_size_and_mtime_and_survives_damage(corpus, tmp_path):
    src = corpus["h264_bframes"]
    path = tmp_path / "v.mp4"
    path.write_bytes(src.read_bytes())
    cache = FrameIndexCache(tmp_path / "cache")
    first = cache.get(path)
    stored = list((tmp_path / "cache").rglob("*.npz"))
    assert len(stored) == 1 and np.array_equal(FrameIndex.load(stored[0]).pts, first.pts)
    stored[0].write_bytes(b"garbage")  # a damaged cache file is rebuilt, not trusted
    assert np.array_equal(FrameIndexCache(tmp_path / "cache").get(path).pts, first.pts)
    path.write_bytes(corpus["h264_vfr"].read_bytes())  # same name, new content: a new index
    os.utime(path, ns=(1, 1))
    assert not np.array_equal(cache.get(path).pts, first.pts)


def test_index_cache_shared_by_processes(corpus, tmp_path):
    # Eight processes build the same index at once into one folder: all get it, one file stays.
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(8) as pool:
        lengths = pool.starmap(_build_len, [(str(corpus["h264_long"]), str(tmp_path / "c"))] * 8)
    assert lengths == [2400] * 8
    assert len(list((tmp_path / "c").rglob("*.npz"))) == 1
    assert not list((tmp_path / "c").rglob("*.tmp"))


def _build_len(path: str, folder: str) -> int:
    return len(FrameIndexCache(folder).get(path))


def test_no_video_stream_is_a_one_line_error(tmp_path):
    import av

    path = tmp_path / "audio.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        container.mux(stream.encode())
    for name in NAMES:
        with pytest.raises(DecodeError, match=r"no video stream \(it has: audio\)"):
            get_decoder(name).get_frames(path, [0])


@pytest.mark.skipif(os.environ.get("VIDEO_SWIN_REQUIRE_TORCHCODEC") != "1", reason="CI sets it (.ci/run)")
def test_torchcodec_is_tested_in_ci():
    # .ci/run installs FFmpeg's shared libraries so that TorchCodec's tests above run, not skip.
    assert torchcodec_available()
