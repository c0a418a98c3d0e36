"""Long videos: windows at a stride, decoded once (timeline, extract_features, the two commands).

Videos come from real encoders through PyAV: the decoding corpus (H.264 with
B-frames, variable frame rate, a rotated portrait file; every frame painted
with its own index) and a file of coloured segments made by concatenating
segments of known content. Models are tiny: a Swin with random weights, and
a "colour model" whose class scores are a known function of the pixels.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torch import nn

import video_swin
from tests.data.corpus import BY_NAME, frame_times, read_indices, write_all
from video_swin.cli import main
from video_swin.config import ConfigError, config_from_dict
from video_swin.data import IMAGENET_MEAN, IMAGENET_STD, clips_to_float, get_decoder
from video_swin.data.demo import write_video
from video_swin.data.long_video import Stride, parse_stride, plan_windows, read_windows, video_plan
from video_swin.engine.long_video import VideoWindows, extract_features, timeline, window_transform
from video_swin.engine.long_video_output import merge_segments
from video_swin.engine.predict import load_predictor, predict_videos

CORPUS = ("h264_bframes", "h264_vfr", "h264_rotated")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """Painted-index files: H.264 with B-frames, VFR, and a 90-degree rotation tag (shown portrait)."""
    return write_all(tmp_path_factory.mktemp("corpus"), tuple(BY_NAME[n] for n in CORPUS))


# -- the colour model: class k's logit is 2 x.c_k - |c_k|^2 (x = the window's mean colour, normalised),
#    the squared distance to colour k up to a term common to all classes: the nearest colour wins.
# The corners of a regular tetrahedron in the RGB cube: a window across two segments has a colour between
# theirs, nearer to one of them than to either other colour.
COLOURS = np.array([[30, 30, 30], [225, 225, 30], [225, 30, 225], [30, 225, 225]], dtype=np.float64)


def _normalised(rgb: np.ndarray) -> torch.Tensor:
    return torch.tensor((rgb - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD), dtype=torch.float32)


class ColourModel(nn.Module):
    """A video classifier with Swin's interface whose output is a known function of the frames."""

    def __init__(self, colours: np.ndarray = COLOURS, sharpness: float = 4.0) -> None:
        super().__init__()
        c = _normalised(colours)  # (K, 3)
        self.head = nn.Linear(3, len(colours))
        with torch.no_grad():
            self.head.weight.copy_(2 * sharpness * c)
            self.head.bias.copy_(-sharpness * (c * c).sum(1))
        self.layers = nn.ModuleList([nn.Identity()])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, T, H, W) -> (B, 3, 1, 1, 1)
        return x.mean(dim=(2, 3, 4), keepdim=True)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.flatten(1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(clip_len: int = 4, frame_interval: int = 2, crop: int = 32, average: str = "prob"):
    return config_from_dict({"data": {"clip_len": clip_len, "frame_interval": frame_interval, "crop_size": crop,
                                      "test_short_side": crop}, "eval": {"average": average}})  # fmt: skip


def _expected_clip(path, indices, cfg, crops) -> torch.Tensor:
    """The window as the exact decoder and the evaluation's transform give it: float (V, 3, T, S, S)."""
    frames = get_decoder("pyav").get_frames(path, indices)
    return clips_to_float(window_transform(cfg, crops)(frames[None]))


# -- strides and window plans ---------------------------------------------------------------------


def test_parse_stride():
    assert parse_stride("16f") == Stride(16, "f") == parse_stride("16") == parse_stride(16)
    assert parse_stride("0.5s") == Stride(0.5, "s") == parse_stride(" 0.5 sec")
    for bad in ("0", "0s", "-2", "1.5f", "fast", "", "nan"):
        with pytest.raises(ConfigError, match="--stride"):
            parse_stride(bad)


def test_windows_in_frames_and_in_seconds_of_a_variable_frame_rate():
    times = np.array([float(t) for t in frame_times(BY_NAME["h264_vfr"])])  # irregular steps of 1-3 frames
    plan = plan_windows(times, 4, 2, Stride(5, "f"))
    assert plan.start_frame.tolist() == list(range(0, 96 - 8 + 1, 5))
    assert (plan.end_frame == plan.start_frame + 8).all()
    assert (plan.indices == plan.start_frame[:, None] + np.arange(0, 8, 2)).all()
    by_time = plan_windows(times, 4, 2, Stride(0.5, "s"))
    starts = by_time.start_frame
    for k, s in enumerate(starts):  # each start: the first frame shown at or after k * 0.5 s
        assert times[s] >= k * 0.5 - 1e-9 and (s == 0 or times[s - 1] < k * 0.5)
    assert by_time.start_sec.tolist() == times[starts].tolist()
    assert by_time.end_sec[-1] == pytest.approx(times[by_time.end_frame[-1]])
    assert starts[-1] + 8 <= 96 and len(starts) > 8


def test_a_video_shorter_than_one_window_gives_one_looping_window():
    plan = plan_windows(np.arange(5) / 25.0, 4, 2, Stride(8, "f"))
    assert len(plan) == 1 and plan.indices.tolist() == [[0, 2, 4, 1]]  # the evaluation's sampling of a short clip
    assert (plan.start_frame[0], plan.end_frame[0]) == (0, 5) and "short video: 5 frames" in plan.note
    assert plan.end_sec[0] == pytest.approx(0.2)


# -- one sequential pass gives the exact decoders' frames ------------------------------------------


@pytest.mark.parametrize("name", CORPUS)
def test_windows_hold_the_exact_decoders_frames(corpus, name):
    path = corpus[name]
    cfg = _cfg(4, 3)
    index, plan = video_plan(path, 4, 3, Stride(5, "f"))
    items = list(read_windows(path, plan, index, window_transform(cfg, 3), batch_size=3))
    assert items[-1] is None  # every window read
    firsts = [w for w, _ in items[:-1]]
    clips = torch.cat([c for _, c in items[:-1]])  # (W, V, 3, T, S, S) uint8
    assert firsts == list(range(0, len(plan), 3)) and len(clips) == len(plan) == (96 - 12) // 5 + 1
    frames = get_decoder("pyav").get_frames(path, plan.indices.reshape(-1))  # (W * T, H, W, 3), as shown
    shown = frames.rot90(-index.rotation // 90, (1, 2)) if index.rotation else frames  # back to as painted
    assert read_indices(shown) == plan.indices.reshape(-1).tolist()  # frame i is frame i
    want = window_transform(cfg, 3)(frames.view(len(plan), 4, *frames.shape[1:]))  # (W * V, 3, T, S, S)
    assert torch.equal(clips, want.view(len(plan), 3, 3, 4, 32, 32))
    if name == "h264_rotated":
        assert frames.shape[1:3] == (64, 48)  # portrait as shown


def test_timestamps_of_the_windows_are_the_frames_own(corpus):
    tl = timeline(ColourModel(), corpus["h264_vfr"], cfg=_cfg(), stride="0.5s", workers=0)
    times = np.array([float(t) for t in frame_times(BY_NAME["h264_vfr"])])
    assert tl.start_sec.tolist() == pytest.approx(times[tl.start_frame].tolist(), abs=1e-9)
    assert tl.end_sec.tolist() == pytest.approx(times[tl.end_frame].tolist(), abs=1e-9)


# -- the plumbing, window by window, with a model whose output is known ----------------------------


@pytest.mark.parametrize("workers", [0, 1])
def test_every_window_gets_its_own_probabilities(corpus, workers):
    cfg = _cfg(4, 2)
    model = ColourModel()
    results = timeline(model, [corpus[n] for n in CORPUS], cfg=cfg, stride="6f", crops=3, batch_size=4,
                       workers=workers)
    assert [r.path for r in results] == [str(corpus[n]) for n in CORPUS]
    for r in results:
        assert r.error is None and r.num_windows == (96 - 8) // 6 + 1
        with torch.no_grad():
            want = torch.stack([model(_expected_clip(r.path, ix, cfg, 3)).softmax(-1).mean(0)
                                for ix in r.plan.indices])  # fmt: skip
        torch.testing.assert_close(r.probs, want, rtol=0, atol=1e-6)
        assert sum(r.probs[0]) == pytest.approx(1.0)


def test_features_are_the_pooled_features_of_each_window(corpus, tiny_checkpoint):
    path, _ = tiny_checkpoint
    model, cfg, classes = load_predictor(path)
    r = extract_features(path, corpus["h264_bframes"], stride="10f", stages=[0, 1], workers=1)
    assert r.features.shape == (r.num_windows, model.num_features) and r.features.dtype == torch.float32
    assert set(r.stage_features) == {0, 1}
    with torch.no_grad():
        for w in (0, r.num_windows - 1):
            clip = _expected_clip(r.path, r.plan.indices[w], cfg, 1)
            want = model.forward_head(model.forward_features(clip), pre_logits=True)[0]
            torch.testing.assert_close(r.features[w], want, rtol=1e-4, atol=1e-5)
            _, maps = model.forward_intermediates(clip, indices=[0, 1])
            torch.testing.assert_close(r.stage_features[1][w], maps[1].flatten(2).mean(-1)[0], rtol=1e-4,
                                       atol=1e-5)  # fmt: skip


def _write_lossless(path: Path, frames: torch.Tensor, fps: int) -> Path:
    """Frames (N, H, W, 3) uint8 as FFV1 (RGB, lossless) in Matroska."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "bgr0"
        for frame in frames.numpy():
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="bgr0", threads=1)
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())
    return path


def test_each_window_scores_as_predict_scores_it_cut_out_as_a_file(corpus, tiny_checkpoint, tmp_path):
    """A window's probabilities equal ``predict`` on a (lossless) file of just that window's frames."""
    weights, _ = tiny_checkpoint
    path = corpus["h264_rotated"]  # B-frames and a rotation tag
    tl = timeline(weights, path, stride="12f", crops=3, top_k=3, workers=1)
    model, cfg, classes = load_predictor(weights)
    span = cfg.data.clip_len * cfg.data.frame_interval
    decoder = get_decoder("pyav")
    for w in (0, 3, tl.num_windows - 1):
        a, b = int(tl.start_frame[w]), int(tl.end_frame[w])
        assert b - a == span
        cut = _write_lossless(tmp_path / f"window{w}.mkv", decoder.get_frames(path, list(range(a, b))), 25)
        [p] = predict_videos(model, cfg, classes, [cut], views="1x3", top_k=len(classes), workers=0)
        assert p.error is None
        want = dict(p.top)
        got = {c: float(x) for c, x in zip(classes, tl.probs[w])}
        assert got == pytest.approx(want, abs=1e-5)


# -- content: segments of known colours, concatenated --------------------------------------------

SEGMENTS = ((0, 40), (1, 56), (2, 24), (3, 64), (0, 36))  # (colour, frames)


@pytest.fixture(scope="module")
def segment_video(tmp_path_factory) -> tuple[Path, list[int]]:
    """H.264 (B-frames) at 25 fps: segments of noisy solid colours; returns the file and the first frame of each."""
    rng = np.random.default_rng(0)
    parts, starts, at = [], [], 0
    for colour, n in SEGMENTS:
        base = np.broadcast_to(COLOURS[colour], (n, 48, 64, 3))
        parts.append(np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8))
        starts.append(at)
        at += n
    path = tmp_path_factory.mktemp("segments") / "segments.mp4"
    write_video(path, np.concatenate(parts), 25, crf=23, gop=32)
    return path, starts


def test_windows_inside_a_segment_take_its_class_and_segments_recover_the_boundaries(segment_video):
    path, starts = segment_video
    bounds = starts + [sum(n for _, n in SEGMENTS)]
    stride = 4
    tl = timeline(ColourModel(sharpness=20.0), path, cfg=_cfg(4, 2), stride=f"{stride}f", workers=1,
                  classes=["black", "yellow", "magenta", "cyan"])
    labels = tl.probs.argmax(1).tolist()
    inside = 0
    for w in range(tl.num_windows):
        a, b = int(tl.start_frame[w]), int(tl.end_frame[w])
        for k, (colour, _) in enumerate(SEGMENTS):
            if bounds[k] <= a and b <= bounds[k + 1]:
                assert labels[w] == colour, (w, a, b)
                inside += 1
    assert inside >= tl.num_windows - 2 * len(SEGMENTS)  # all but the windows across a boundary
    segments = merge_segments(tl, threshold=0.5)
    assert [s.label for s in segments] == ["black", "yellow", "magenta", "cyan", "black"]
    for s, a, b in zip(segments, bounds[:-1], bounds[1:]):
        assert abs(s.start_frame - a) <= stride and (abs(s.end_frame - b) <= stride or b == bounds[-1])
    assert segments[0].start_frame == 0 and segments[-1].end_frame == int(tl.end_frame[-1])


def test_segments_begin_at_the_first_window_above_the_threshold():
    """A run of one class whose first window is below the threshold still makes a segment."""
    from video_swin.data.long_video import WindowPlan

    probs = torch.tensor([[0.9, 0.1], [0.45, 0.55], [0.3, 0.7], [0.1, 0.9], [0.2, 0.8], [0.45, 0.55]])
    starts = np.arange(6) * 4
    plan = WindowPlan(starts[:, None] + np.arange(4), starts, starts + 8, np.arange(40) / 10.0, 40, 10.0)
    r = VideoWindows("v.mp4", ["a", "b"], plan, probs)
    got = [(s.label, s.start_frame, s.end_frame, s.windows) for s in merge_segments(r, threshold=0.65)]
    # centres 4, 8, ..., 24: cuts half-way between them (6, 10, ...), the ends at 0 and the last window's end
    assert got == [("a", 0, 6, 1), ("b", 10, 22, 3)]
    assert [s.label for s in merge_segments(r, threshold=0.5)] == ["a", "b"]


# -- bad input -------------------------------------------------------------------------------------


def test_a_break_mid_stream_keeps_the_windows_before_it(corpus, monkeypatch):
    """A stream whose decoder fails at frame 50 (in this process: workers=0) keeps its first windows."""
    real_decode = av.container.InputContainer.decode

    def failing(self, *args, **kwargs):
        for n, frame in enumerate(real_decode(self, *args, **kwargs)):
            if n == 50:
                raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
            yield frame

    monkeypatch.setattr(av.container.InputContainer, "decode", failing)
    tl = timeline(ColourModel(), corpus["h264_bframes"], cfg=_cfg(4, 2), stride="8f", workers=0)
    assert 0 < tl.num_windows < len(tl.plan)
    assert int(tl.end_frame[-1]) <= 50
    assert "decoding stopped at frame" in tl.error and f"kept the {tl.num_windows} windows" in tl.error


def test_a_skipped_frame_is_a_break_not_a_wrong_window(corpus, monkeypatch):
    real_decode = av.container.InputContainer.decode

    def skipping(self, *args, **kwargs):
        for n, frame in enumerate(real_decode(self, *args, **kwargs)):
            if n != 34:  # a frame window 4 uses (frames 32, 34, 36, 38)
                yield frame

    monkeypatch.setattr(av.container.InputContainer, "decode", skipping)
    tl = timeline(ColourModel(), corpus["h264_bframes"], cfg=_cfg(4, 2), stride="8f", workers=0)
    assert tl.end_frame.tolist() == [8, 16, 24, 32] and "frame 34 of 96 never came out of the decoder" in tl.error


def test_short_and_unreadable_videos(tmp_path, corpus):
    short = tmp_path / "short.mp4"
    write_video(short, np.full((5, 48, 64, 3), 90, np.uint8), 25)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    a, b = timeline(ColourModel(), [short, junk], cfg=_cfg(4, 2), workers=1)
    assert a.num_windows == 1 and "short video: 5 frames" in a.note and a.error is None
    assert b.num_windows == 0 and b.plan is None and "cannot open it as a video" in b.error


# -- the commands ---------------------------------------------------------------------------------


def test_timeline_command_writes_the_table_segments_and_plot(segment_video, tiny_checkpoint, tmp_path, capsys):
    weights, _ = tiny_checkpoint
    path, _ = segment_video
    out, seg, plot = tmp_path / "tl.csv", tmp_path / "seg.csv", tmp_path / "tl.png"
    code = main(["timeline", str(path), "--weights", str(weights), "--stride", "16f", "--top-k", "3",
                 "--out", str(out), "--segments", str(seg), "--threshold", "0", "--plot", str(plot)])
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["video", "start_frame", "end_frame", "start_sec", "end_sec", "top1", "score1",
                             "top2", "score2", "top3", "score3", "note"]  # fmt: skip
    tl = timeline(weights, path, stride=16, workers=0)
    assert [int(r["start_frame"]) for r in rows] == tl.start_frame.tolist()
    assert [r["top1"] for r in rows] == [t[0][0] for t in tl.top(1)]
    assert [float(r["start_sec"]) for r in rows] == pytest.approx(tl.start_sec.tolist(), abs=1e-3)
    segments = list(csv.DictReader(seg.open()))
    assert segments and segments[0]["start_frame"] == "0"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "windows of 1 videos; wrote" in capsys.readouterr().err


def test_timeline_command_json_and_stdout(corpus, tiny_checkpoint, tmp_path, capsys):
    weights, _ = tiny_checkpoint
    out = tmp_path / "tl.json"
    assert main(["timeline", str(corpus["h264_vfr"]), "--weights", str(weights), "--stride", "1s",
                 "--out", str(out)]) == 0  # fmt: skip
    doc = json.loads(out.read_text())
    assert doc["stride"] == "1s" and doc["videos"][0]["num_frames"] == 96
    assert [w["start_sec"] for w in doc["videos"][0]["windows"]][:3] == pytest.approx([0.0, 1.0, 2.0], abs=0.05)
    capsys.readouterr()
    assert main(["timeline", str(corpus["h264_vfr"]), "--weights", str(weights), "--top-k", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "video,start_frame,end_frame,start_sec,end_sec,top1,score1,note" and len(lines) > 3


@pytest.mark.parametrize("args, message", [
    (["--stride", "0"], "--stride: must be more than zero"),
    (["--stride", "3.5f"], "a whole number"),
    (["--out", "tl.txt"], "--out: expected a .csv or .json file"),
    (["--plot", "x.gif"], "--plot: expected a .png"),
    (["--threshold", "1.5"], "--threshold"),
])  # fmt: skip
def test_timeline_command_refuses_bad_options_in_one_line(corpus, tiny_checkpoint, args, message, capsys):
    weights, _ = tiny_checkpoint
    assert main(["timeline", str(corpus["h264_vfr"]), "--weights", str(weights), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_timeline_command_missing_file_and_unreadable_file(tmp_path, tiny_checkpoint, capsys):
    weights, _ = tiny_checkpoint
    assert main(["timeline", str(tmp_path / "nope.mp4"), "--weights", str(weights)]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\0" * 1000)
    assert main(["timeline", str(junk), "--weights", str(weights), "--workers", "0"]) == 1  # no window at all
    out = capsys.readouterr()
    assert "error: " in out.err and "error: " in out.out  # a row saying why


def test_extract_mirrors_folders_resumes_and_lists_broken_videos(corpus, tiny_checkpoint, tmp_path, caplog):
    weights, _ = tiny_checkpoint
    src = tmp_path / "videos"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    os.symlink(corpus["h264_bframes"], src / "a" / "one.mp4")
    os.symlink(corpus["h264_vfr"], src / "b" / "two.mp4")
    (src / "b" / "bad.mp4").write_bytes(b"\0" * 2000)
    out = tmp_path / "feats"
    args = ["extract", str(src), "--weights", str(weights), "--out", str(out), "--stride", "16f"]
    assert main([*args, "--feature-stages", "0"]) == 1  # one video gave no window
    one = np.load(out / "a" / "one.npy")
    meta = json.loads((out / "a" / "one.json").read_text())
    assert one.dtype == np.float32 and one.shape == (meta["num_windows"], meta["dim"]) == (6, 16)
    assert np.load(out / "a" / "one.stage0.npy").shape == (6, 8)
    assert meta["start_frame"] == list(range(0, 81, 16)) and meta["settings"]["stride"] == "16f"
    assert len(meta["settings"]["weights_sha256"]) == 64 and meta["fps"] == pytest.approx(25.0)
    want = extract_features(weights, corpus["h264_bframes"], stride=16, workers=0).features
    np.testing.assert_allclose(one, want.numpy(), rtol=1e-5, atol=1e-6)
    assert (out / "b" / "two.npy").exists() and not (out / "b" / "bad.npy").exists()
    broken = list(csv.DictReader((out / "broken.csv").open()))
    assert [Path(r["path"]).name for r in broken] == ["bad.mp4"]
    stamp = os.stat(out / "a" / "one.npy").st_mtime_ns
    caplog.clear()
    assert main([*args, "--feature-stages", "0"]) == 1  # the broken one is tried again
    assert os.stat(out / "a" / "one.npy").st_mtime_ns == stamp  # complete and the same settings: skipped
    assert "2 of 3 videos already done" in caplog.text
    assert main([*args[:-1], "8f"]) == 1  # another stride: computed again
    assert json.loads((out / "a" / "one.json").read_text())["settings"]["stride"] == "8f"


def test_package_level_names():
    assert video_swin.timeline is timeline and video_swin.extract_features is extract_features
    assert VideoWindows("x", ["a"]).top() == [] and VideoWindows("x", ["a"]).rows() == []


@pytest.mark.slow
def test_extract_over_two_processes_writes_each_video_once(corpus, tiny_checkpoint, tmp_path):
    """``accelerate launch --num_processes 2``: the videos are split, every one written, broken.csv merged."""
    import subprocess
    import sys

    from tests.engine.conftest import ACCELERATE, REPO
    from tests.reliability.conftest import free_port

    weights, _ = tiny_checkpoint
    src = tmp_path / "videos"
    src.mkdir()
    for i, name in enumerate([*CORPUS, "h264_bframes"]):
        os.symlink(corpus[name], src / f"v{i}.mp4")
    (src / "v9_bad.mp4").write_bytes(b"\0" * 500)
    out = tmp_path / "feats"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port",
                             str(free_port()), "-m", "video_swin.cli", "extract", str(src), "--weights", str(weights),
                             "--out", str(out), "--stride", "8f"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300, check=False)  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]  # one video without windows
    assert sorted(p.name for p in out.glob("*.npy")) == [f"v{i}.npy" for i in range(4)]
    assert [Path(r["path"]).name for r in csv.DictReader((out / "broken.csv").open())] == ["v9_bad.mp4"]
    assert not list(out.glob(".broken.*"))
    alone = extract_features(weights, corpus["h264_vfr"], stride=8, workers=0).features.numpy()
    np.testing.assert_allclose(np.load(out / "v1.npy"), alone, rtol=1e-5, atol=1e-6)
    assert "4 of 5 videos complete" in result.stderr


def test_the_decoding_thread_hands_on_its_error_and_stops_when_the_reader_does():
    from video_swin.engine.long_video import _in_thread

    def items(fail_at):
        for i in range(10):
            if i == fail_at:
                raise RuntimeError(f"broke at {i}")
            yield {"video": 0, "n": i}

    got = []
    with pytest.raises(RuntimeError, match="broke at 3"):
        for item in _in_thread(items(3)):
            got.append(item["n"])
    assert got == [0, 1, 2]
    reader = _in_thread(items(None))
    assert next(reader)["n"] == 0
    reader.close()  # the consumer stops early: the thread is told to stop and joined
    assert not [t for t in __import__("threading").enumerate() if t.name == "video-swin-decode"]
