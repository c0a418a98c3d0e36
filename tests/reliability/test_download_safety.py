"""Downloads that cannot poison the cache, load errors without torch's weights_only=False advice,
a read-only weights cache, and from_pretrained's config.json checked against the weights (issue 28, items 4, 7).

Everything goes through the loopback server of tests/pretrained/test_weights_download.py and
random-weight files made here; nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

import video_swin
import video_swin.models
from video_swin.checkpoints import CheckpointError, load_checkpoint, read_state_dict
from video_swin.cli import main
from video_swin.pretrained import cache_dir
from video_swin.pretrained.download import fetch

from ..pretrained.test_weights_download import TINY, official_video, saved, server, tiny_entry  # noqa: F401 (fixture)

HTML = b"<!DOCTYPE html>\n<html><head><title>Rate limit</title></head><body>Too many requests</body></html>\n"
ADVICE = "weights_only"  # torch's "re-run with weights_only=False" must never reach a user


def cache_files() -> list[str]:
    folder = cache_dir()
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def reply(body: bytes, *, ctype: str = "application/octet-stream", length: int | None = -1,
          drip: float = 0.0, stop: threading.Event | None = None):
    """A route: status 200 with ``body``; ``length`` None sends no Content-Length, -1 the true one;
    ``drip`` seconds between single bytes (until ``stop`` is set)."""

    def route(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", ctype)
        if length is not None:
            handler.send_header("Content-Length", str(len(body) if length == -1 else length))
        handler.end_headers()
        try:
            if not drip:
                handler.wfile.write(body)
                return
            for i in range(len(body)):
                if stop is not None and stop.is_set():
                    return
                handler.wfile.write(body[i:i + 1])
                handler.wfile.flush()
                time.sleep(drip)
        except OSError:  # the client gave up: what the test wants
            pass

    return route


@pytest.fixture
def weights(server, monkeypatch):  # noqa: F811
    """A tiny catalog entry and its genuine file (official layout) on the server."""
    entry = tiny_entry(monkeypatch)
    body = official_video(video_swin.create_model("swin3d_t", **TINY))
    server.files[entry.file] = body
    return entry, body


# --- item 4: what may enter the cache -------------------------------------------------------------


@pytest.mark.parametrize("ctype", ["text/html; charset=utf-8", "application/octet-stream"])
def test_an_html_page_sent_with_status_200_is_refused_and_not_cached(server, weights, ctype):
    entry, _ = weights
    server.routes[entry.file] = reply(HTML, ctype=ctype)
    with pytest.raises(CheckpointError) as info:
        video_swin.create_model("swin3d_t", pretrained="tiny")
    message = str(info.value)
    assert "the server sent an HTML page, not weights" in message and "\n" not in message
    assert ADVICE not in message
    assert cache_files() == []


def test_a_file_of_another_layout_is_not_cached(server, monkeypatch):
    from torchvision.models.video.swin_transformer import SwinTransformer3d

    entry = tiny_entry(monkeypatch)  # published as official_video
    tv = SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                           window_size=[8, 7, 7], num_classes=400)
    server.files[entry.file] = saved(tv.state_dict())
    with pytest.raises(CheckpointError, match="layout"):
        video_swin.create_model("swin3d_t", pretrained="tiny")
    assert cache_files() == []


def test_a_size_other_than_the_catalogs_is_refused_before_download(server, monkeypatch):
    entry = tiny_entry(monkeypatch, size=12345)
    server.files[entry.file] = official_video(video_swin.create_model("swin3d_t", **TINY))
    with pytest.raises(CheckpointError, match="catalog's file has 12,345"):
        video_swin.create_model("swin3d_t", pretrained="tiny")
    assert cache_files() == []


@pytest.mark.parametrize("env, said", [
    ({}, "more than the 4,294,967,296 allowed (VIDEO_SWIN_DOWNLOAD_MAX_BYTES)"),
    ({"VIDEO_SWIN_DOWNLOAD_MAX_BYTES": str(10**18)}, "free"),
])
def test_an_announced_size_beyond_the_limit_or_the_disk_is_refused_before_writing(server, monkeypatch, env, said):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    server.routes["huge.pth"] = reply(b"\x80" * 4096, length=10**15)
    with pytest.raises(CheckpointError) as info:
        fetch("https://example.invalid/huge.pth", "huge.pth", progress=False)
    assert "announces 1,000,000,000,000,000 bytes" in str(info.value) and said in str(info.value)
    assert cache_files() == []


def test_a_body_without_announced_size_is_cut_at_the_maximum(server, monkeypatch):
    monkeypatch.setenv("VIDEO_SWIN_DOWNLOAD_MAX_BYTES", "100000")
    server.routes["endless.pth"] = reply(b"\x80" + bytes(3_000_000), length=None)
    with pytest.raises(CheckpointError, match="more than 100,000 bytes"):
        fetch("https://example.invalid/endless.pth", "endless.pth", progress=False)
    assert cache_files() == []


def test_a_dripping_server_fails_at_the_whole_download_deadline(server, monkeypatch):
    monkeypatch.setenv("VIDEO_SWIN_DOWNLOAD_TIMEOUT", "1")
    stop = threading.Event()
    # 30 bytes, one every 0.25 s: each read gets a byte well within the per-read timeout.
    server.routes["slow.pth"] = reply(b"\x80" * 30, drip=0.25, stop=stop)
    start = time.monotonic()
    try:
        with pytest.raises(CheckpointError, match=r"did not finish within 1 s .*VIDEO_SWIN_DOWNLOAD_TIMEOUT"):
            fetch("https://example.invalid/slow.pth", "slow.pth", progress=False)
    finally:
        stop.set()
    assert time.monotonic() - start < 3
    assert cache_files() == []


def test_sigterm_during_a_download_leaves_no_partial_file(server, tmp_path):
    stop = threading.Event()
    server.routes["slow.pth"] = reply(b"\x80" * 400, drip=0.05, stop=stop)
    child = textwrap.dedent(f"""
        from video_swin.pretrained.download import fetch
        fetch("https://example.invalid/slow.pth", "slow.pth", progress=False)
    """)
    env = {**os.environ}  # VIDEO_SWIN_CACHE and VIDEO_SWIN_WEIGHTS_URL set by the fixture
    proc = subprocess.Popen([sys.executable, "-c", child], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (cache_dir().is_dir() and list(cache_dir().glob("*.partial"))):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        time.sleep(0.3)  # some bytes written
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM  # still ended by the signal, as without the handler
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert cache_files() == []


def test_a_dead_downloads_partial_is_swept_by_the_next_download(weights):
    entry, _ = weights
    cache_dir().mkdir(parents=True)
    dead = cache_dir() / f".{entry.file}.abc123.partial"
    dead.write_bytes(b"\x80" * 100)
    old = time.time() - 3600
    os.utime(dead, (old, old))
    video_swin.create_model("swin3d_t", pretrained="tiny")
    assert cache_files() == [entry.file]


# --- item 4: a bad file already in the cache ------------------------------------------------------


@pytest.mark.parametrize("bad", [HTML, b"PK\x03\x04" + bytes(200), b"\x80\x02\x8a\x0a garbage " + bytes(64)],
                         ids=["html", "cut_zip", "broken_pickle"])
def test_a_bad_cached_file_is_named_with_the_command_to_remove_it(server, weights, bad):
    entry, _ = weights
    cache_dir().mkdir(parents=True)
    cached = cache_dir() / entry.file
    cached.write_bytes(bad)  # what an older version cached from a bad mirror, or a disk error left
    with pytest.raises(CheckpointError) as info:
        video_swin.create_model("swin3d_t", pretrained="tiny")
    message = str(info.value)
    assert message.startswith(f"{cached}: the cached weights cannot be used")
    assert f"rm {cached}" in message and "VIDEO_SWIN_REDOWNLOAD=1" in message
    assert ADVICE + "=False" not in message and "will likely succeed" not in message and "\n" not in message
    assert server.requests == []  # nothing fetched unasked
    assert cached.read_bytes() == bad  # and nothing removed unasked


def test_a_bad_cached_file_is_downloaded_again_once_when_asked(server, weights, monkeypatch):
    entry, body = weights
    cache_dir().mkdir(parents=True)
    (cache_dir() / entry.file).write_bytes(HTML)
    monkeypatch.setenv("VIDEO_SWIN_REDOWNLOAD", "1")
    model = video_swin.create_model("swin3d_t", pretrained="tiny")
    assert model.pretrained_weights == entry.name and server.requests == [entry.file]
    assert (cache_dir() / entry.file).read_bytes() == body
    video_swin.create_model("swin3d_t", pretrained="tiny")
    assert server.requests == [entry.file]  # a good cached file is not fetched again


def test_a_cached_html_page_through_the_cli_is_one_line_exit_2(server, weights, capsys):
    cache_dir().mkdir(parents=True)
    cached = cache_dir() / "swin_tiny_patch244_window877_kinetics400_1k.pth"  # swin3d_t.k400's file
    cached.write_bytes(HTML)
    code = main(["export", "--weights", "swin3d_t.k400", "--format", "pt2", "--out", str(cache_dir() / "x.pt2")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert str(cached) in err[0] and "HTML page" in err[0] and "rm " in err[0] and ADVICE not in err[0]


# --- item 4: torch's weights_only=False advice is never passed on ---------------------------------


def _unpickling_error(path: Path):
    import pickle

    try:
        torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:
        assert "weights_only` set to `False` will likely succeed" in str(e)  # what torch says
        return e
    raise AssertionError("torch loaded it")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("content", ["html", "garbage_pickle", "code"])
def test_no_load_path_passes_on_torchs_weights_only_false_advice(tmp_path, content):
    from video_swin.engine.state import _refuse

    path = tmp_path / "weights.pth"
    if content == "html":
        path.write_bytes(HTML)
    elif content == "garbage_pickle":
        path.write_bytes(b"\x80\x02" + b"\xff" * 64)  # a pickle header, then bytes no unpickler knows
    else:
        torch.save({"w": torch.zeros(2), "x": _RunsCode()}, path)
    messages = []
    for load in (read_state_dict, lambda p: load_checkpoint(video_swin.create_model("swin3d_t", **TINY), p)):
        with pytest.raises(CheckpointError) as info:
            load(path)
        messages.append(str(info.value))
    if content != "html":  # an HTML page is recognised before torch is asked
        messages.append(str(_refuse(path, _unpickling_error(path))))  # a training state's files
    for message in messages:
        assert str(path) in message and ADVICE not in message and "will likely succeed" not in message, message
    what = {"html": "the file is an HTML page, not weights", "garbage_pickle": "not a PyTorch checkpoint",
            "code": "refused to unpickle"}[content]
    assert what in messages[0]


# --- item 7: a read-only weights cache ------------------------------------------------------------


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder that refuses writes for real, root included: a tmpfs mounted read-only."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        (folder / "weights").mkdir()
        folder.chmod(0o555)
        (folder / "weights").chmod(0o555)
        yield folder
        (folder / "weights").chmod(0o755)
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"running as root and cannot mount a tmpfs to make a read-only folder: {mounted.stderr!r}")
    try:
        (folder / "weights").mkdir()
        remounted = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True)
        if remounted.returncode != 0:
            pytest.skip(f"cannot remount the tmpfs read-only: {remounted.stderr!r}")
        with contextlib.suppress(OSError):
            (folder / "probe").write_text("x")
            pytest.fail("the read-only folder took a write")
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.mark.parametrize("sub", ["", "missing"], ids=["weights_folder_exists", "folder_to_create"])
@pytest.mark.parametrize("command", ["predict", "export"])
def test_a_read_only_weights_cache_is_one_line_and_exit_2(server, read_only_folder, monkeypatch, capsys, tmp_path,
                                                          command, sub):
    root = read_only_folder / sub if sub else read_only_folder
    monkeypatch.setenv("VIDEO_SWIN_CACHE", str(root))
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")  # never reached: the weights come first
    argv = {"predict": ["predict", "--weights", "swin3d_t.k400", str(clip)],
            "export": ["export", "--weights", "swin3d_t.k400", "--format", "pt2", "--out", str(tmp_path / "m.pt2")]}
    code = main(argv[command])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: cannot write to the weights cache {root / 'weights'}")
    assert "VIDEO_SWIN_CACHE" in err[0] and "Traceback" not in err[0]
    assert server.requests == []


# --- item 7: from_pretrained checks config.json against the weights -------------------------------

HUB_TINY = {"embed_dim": 8, "depths": (1, 1), "num_heads": (1, 2), "window_size": (2, 4, 4)}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub") / "m"
    model = video_swin.create_model("swin3d_t", num_classes=5, **HUB_TINY)
    model.classes = list("abcde")
    model.save_pretrained(folder)
    return folder


@pytest.fixture
def folder(saved_model, tmp_path):
    """A copy of the saved model whose config.json a test may spoil."""
    import shutil

    return Path(shutil.copytree(saved_model, tmp_path / "m"))


def edit(folder: Path, change) -> Path:
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    change(config)
    config_file.write_text(json.dumps(config))
    return config_file


def test_the_saved_model_loads(folder):
    assert video_swin.from_pretrained(folder).classes == list("abcde")


def test_a_class_list_shorter_than_the_head_is_refused(folder):
    config_file = edit(folder, lambda c: c.update(classes=["a", "b", "c"]))
    with pytest.raises(CheckpointError, match=r"classes lists 3 names, but .* have 5 outputs") as info:
        video_swin.from_pretrained(folder)
    assert str(config_file) in str(info.value)


@pytest.mark.parametrize("text, said", [
    ('{"format": "video-swin-hub/1", "model_name": "swin3d_t", ', "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
])
def test_malformed_json_is_a_checkpoint_error(folder, text, said):
    (folder / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=said) as info:
        video_swin.from_pretrained(folder)
    assert str(folder / "config.json") in str(info.value)


@pytest.mark.parametrize("change, field", [
    (lambda c: c.pop("model_args"), "model_args"),
    (lambda c: c.pop("model_name"), "model_name"),
    (lambda c: c.update(model_name="swin9d_x"), "model_name"),
    (lambda c: c["model_args"].update(depths=[1, 1, 1]), "model_args.depths"),
    (lambda c: c["model_args"].update(num_classes=7), "model_args.num_classes"),
    (lambda c: c["model_args"].update(embed_dim="eight"), "model_args.embed_dim"),
    (lambda c: c["model_args"].update(num_heads=[2, 2]), "num_heads"),
    (lambda c: c["model_args"].update(colour="blue"), "colour"),
    (lambda c: c.update(classes="abcde"), "classes"),
], ids=["no_args", "no_name", "unknown_name", "depths", "num_classes", "embed_dim_type", "heads", "unknown_arg",
        "classes_type"])
def test_a_missing_or_wrong_field_is_named(folder, change, field):
    config_file = edit(folder, change)
    with pytest.raises(CheckpointError) as info:
        video_swin.from_pretrained(folder)
    message = str(info.value)
    assert field in message and (str(config_file) in message or str(folder / "model.safetensors") in message), message


def test_a_huge_embed_dim_fails_fast_before_anything_is_allocated(folder, monkeypatch):
    config_file = edit(folder, lambda c: c["model_args"].update(embed_dim=10_000_000))
    devices = []
    real = video_swin.models.create_model

    def watched(*args, **kwargs):  # from_pretrained imports it from video_swin.models when called
        devices.append(str(torch.get_default_device()))
        return real(*args, **kwargs)

    monkeypatch.setattr(video_swin.models, "create_model", watched)
    start = time.monotonic()
    with pytest.raises(CheckpointError) as info:
        video_swin.from_pretrained(folder)
    assert time.monotonic() - start < 2
    assert all(d == "meta" for d in devices), devices  # no model built in memory
    message = str(info.value)
    assert f"{config_file}: model_args.embed_dim = 10000000 does not fit" in message
    assert "patch_embed.proj.weight has shape (8, 3, 2, 4, 4)" in message
