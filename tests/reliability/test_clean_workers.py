"""Worker processes start clean: a caller that has already decoded with every backend still gets exact frames.

A forked copy of a process that has decoded video can deadlock in FFmpeg's threads (issue 28, item 9): the
project's pools (predict's loader workers, demo generation) start from a forkserver, decoder helpers spawn a
fresh interpreter. The prepare pool has its own test in test_prepare_safety.py.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from tests.data.video_files import frame_indices_of, index_frames, textured_frames, write_mp4
from video_swin.data import get_decoder
from video_swin.data.isolated import IsolatedDecoder

BACKENDS = [b for b, module in (("pyav", "av"), ("decord", "decord"), ("torchcodec", "torchcodec"))
            if importlib.util.find_spec(module)]


def _torchcodec_usable() -> bool:
    try:
        get_decoder("torchcodec")
        return True
    except Exception:  # noqa: BLE001 - FFmpeg's shared libraries missing: skipped below unless CI requires it
        return False


@pytest.fixture(scope="module")
def decoded_everywhere(tmp_path_factory) -> Path:
    """A video, decoded in this process with every installed backend before any worker starts."""
    path = write_mp4(tmp_path_factory.mktemp("clean") / "index.mp4", index_frames(40), gop=8)
    for backend in BACKENDS:
        if backend == "torchcodec" and not _torchcodec_usable():
            assert not os.environ.get("VIDEO_SWIN_REQUIRE_TORCHCODEC"), "torchcodec is required but cannot load"
            continue
        frames = get_decoder(backend).get_frames(path, [0, 17, 39])
        assert frame_indices_of(frames) == [0, 17, 39], backend
    return path


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_decoder_helper_is_a_fresh_interpreter_not_a_fork(decoded_everywhere):
    decoder = IsolatedDecoder(get_decoder("pyav"), timeout=30)
    try:
        frames = decoder.get_frames(decoded_everywhere, [1, 2, 38])
        assert frame_indices_of(frames) == [1, 2, 38]
        # A forked helper's command line is its owner's (pytest); a spawned one runs the helper's entry point.
        assert "_helper_main" in _cmdline(decoder._helper.pid)
        assert _cmdline(decoder._helper.pid) != _cmdline(os.getpid())
    finally:
        decoder.close()


def test_the_project_pools_never_fork(monkeypatch, decoded_everywhere, tmp_path):
    from video_swin.config import Config
    from video_swin.data import demo
    from video_swin.engine import predict
    from video_swin.models import create_model

    contexts = []
    real_loader, real_pool = predict.DataLoader, demo.ProcessPoolExecutor

    def loader(*args, **kwargs):
        contexts.append(("predict", kwargs.get("multiprocessing_context")))
        return real_loader(*args, **kwargs)

    def pool(*args, **kwargs):
        contexts.append(("demo", kwargs.get("mp_context")))
        return real_pool(*args, **kwargs)

    monkeypatch.setattr(predict, "DataLoader", loader)
    monkeypatch.setattr(demo, "ProcessPoolExecutor", pool)
    demo.make_demo_data(tmp_path / "demo", train_per_class=2, val_per_class=1, workers=2)
    assert len(list((tmp_path / "demo").rglob("*.mp4"))) == 3 * len(demo.DEMO_CLASSES)

    cfg = Config()
    cfg.data.clip_len, cfg.data.frame_interval, cfg.data.crop_size, cfg.data.test_short_side = 4, 2, 32, 32
    cfg.eval.views = "1x1"
    torch.manual_seed(0)
    model = create_model("swin3d_t", num_classes=3, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
                         window_size=(2, 4, 4))
    videos = [str(decoded_everywhere)] * 3
    in_process = predict.predict_videos(model, cfg, None, videos, workers=0, device="cpu")
    in_workers = predict.predict_videos(model, cfg, None, videos, workers=2, device="cpu")
    assert [r.top for r in in_workers] == [r.top for r in in_process]
    assert all(r.error is None for r in in_workers)
    started = {kind: ctx.get_start_method() for kind, ctx in contexts if ctx is not None}
    assert started == {"demo": "forkserver", "predict": "forkserver"}, contexts


_FORK_AFTER_DECODING = """
import os, sys, time
from video_swin.data import get_decoder
import av
path, backends = sys.argv[1], sys.argv[2].split(",")
for backend in backends:  # decord and torchcodec are verified against PyAV on this first read
    assert get_decoder(backend).get_frames(path, [0, 17, 39]).shape[0] == 3, backend
with av.open(path) as container:  # what other code in the process may do last: PyAV's shared, threaded scaler
    for frame in container.decode(video=0):
        frame.to_ndarray(format="rgb24")
pid = os.fork()  # as torch's DataLoader starts its workers by default
if pid == 0:
    code = 0 if get_decoder("pyav").get_frames(path, list(range(40))).shape[0] == 40 else 3
    os._exit(code)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        sys.exit(os.waitstatus_to_exitcode(status))
    time.sleep(0.05)
os.kill(pid, 9)
sys.exit(4)
"""


def test_a_process_forked_after_the_library_decoded_can_still_decode(tmp_path):
    """A DataLoader worker forked after this process decoded (with PyAV's own threaded scaler, then with every
    backend) still decodes: the library converts frames with a scaler of its own process and thread, never one
    it inherited (PyAV's shared scaler deadlocked there). A fresh interpreter, so this test's state leaks nowhere."""
    import subprocess
    import sys

    path = write_mp4(tmp_path / "large.mp4", textured_frames(40, height=240, width=320), gop=8)
    backends = ["pyav"] + [b for b in BACKENDS if b != "pyav" and (b != "torchcodec" or _torchcodec_usable())]
    result = subprocess.run([sys.executable, "-c", _FORK_AFTER_DECODING, str(path), ",".join(backends)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 4, f"the forked child hung in FFmpeg after the parent decoded with {backends}"
    assert result.returncode == 0, result.stderr[-2000:]
