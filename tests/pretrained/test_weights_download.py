"""Weights by name, end to end against a loopback HTTP server (no outside network).

The server serves random-weight files in the publishers' layouts under their
official names; ``VIDEO_SWIN_WEIGHTS_URL`` points the registry at it, as a
mirror would. Small catalog entries (same presets, fewer channels) keep the
files tiny; one test uses the real ``swin3d_t.k400`` entry at full size.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
from dataclasses import replace

import pytest
import torch
import torchvision
from accelerate import Accelerator

import video_swin
from video_swin.checkpoints import CheckpointError, load_checkpoint
from video_swin.config import check_paths, load_config
from video_swin.engine.build import build_model
from video_swin.pretrained import CATALOG, PretrainedWeights, cache_dir, read_classes

TINY = {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}
CLIP = torch.randn(1, 3, 4, 32, 32)


class Server:
    """Serves ``files`` (name -> bytes); ``cut`` names files sent with half their body.

    ``routes`` (name -> function of the request handler) answer a name their own way
    (a slow body, an HTML page, a false Content-Length).
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.routes: dict = {}
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                outer.requests.append(name)
                if name in outer.routes:
                    outer.routes[name](self)
                    return
                if name not in outer.files:
                    self.send_error(404)
                    return
                body = outer.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if name in outer.cut else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mirror"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDEO_SWIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VIDEO_SWIN_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    s = Server()
    monkeypatch.setenv("VIDEO_SWIN_WEIGHTS_URL", s.url)
    yield s
    s.httpd.shutdown()


def saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def official_video(model) -> bytes:
    """mmaction layout of the official Video Swin release: backbone.* and cls_head.fc_cls.*."""
    sd = model.state_dict()
    state = {("cls_head.fc_cls." + k[5:] if k.startswith("head.") else "backbone." + k): v for k, v in sd.items()}
    return saved({"meta": {}, "state_dict": state})


def tiny_entry(monkeypatch, name="swin3d_t.tiny", **changes) -> PretrainedWeights:
    base = CATALOG["swin3d_t.k400"]
    entry = replace(base, name=name, file=f"{name}.pth", url=f"https://example.invalid/{name}.pth",
                    model_args=TINY, **changes)
    monkeypatch.setitem(CATALOG, name, entry)
    return entry


def test_download_then_cache_hit_and_same_logits_as_load_checkpoint(server, monkeypatch):
    entry = tiny_entry(monkeypatch)
    source = video_swin.create_model("swin3d_t", **TINY)
    server.files[entry.file] = official_video(source)
    model = video_swin.create_model("swin3d_t", pretrained="tiny").eval()
    again = video_swin.create_model("swin3d_t", pretrained="swin3d_t.tiny").eval()
    assert server.requests == [entry.file]  # the second load is a cache hit
    assert sorted(p.name for p in cache_dir().iterdir()) == [entry.file]  # no temporary files left
    assert model.classes[0] == "abseiling" and len(model.classes) == 400
    reference = video_swin.create_model("swin3d_t", **TINY).eval()
    load_checkpoint(reference, cache_dir() / entry.file)
    with torch.no_grad():
        torch.testing.assert_close(model(CLIP), reference(CLIP), rtol=0, atol=0)
        torch.testing.assert_close(again(CLIP), source.eval()(CLIP), rtol=0, atol=0)


def test_other_class_count_gets_a_fresh_head_and_no_class_names(server, monkeypatch):
    entry = tiny_entry(monkeypatch)
    server.files[entry.file] = official_video(video_swin.create_model("swin3d_t", **TINY))
    model = video_swin.create_model("swin3d_t", num_classes=7, pretrained="tiny")
    assert model.head.out_features == 7 and model.classes is None


def tv_tiny() -> tuple[bytes, str]:
    from torchvision.models.video.swin_transformer import SwinTransformer3d

    tv = SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                           window_size=[8, 7, 7], num_classes=400)
    body = saved(tv.state_dict())
    return body, hashlib.sha256(body).hexdigest()


def test_torchvision_layout_with_its_hash_prefix_loads(server, monkeypatch):
    body, digest = tv_tiny()
    entry = tiny_entry(monkeypatch, "swin3d_t.tv_tiny", layout="torchvision_video", sha256=digest[:8])
    server.files[entry.file] = body
    model = video_swin.create_model("swin3d_t", pretrained="tv_tiny")
    assert model.pretrained_weights == "swin3d_t.tv_tiny"


def test_wrong_hash_is_refused_and_not_cached(server, monkeypatch):
    body, digest = tv_tiny()
    wrong = "0" * 8 if not digest.startswith("0" * 8) else "f" * 8
    entry = tiny_entry(monkeypatch, "swin3d_t.tv_tiny", layout="torchvision_video", sha256=wrong)
    server.files[entry.file] = body
    with pytest.raises(CheckpointError, match="sha256"):
        video_swin.create_model("swin3d_t", pretrained="tv_tiny")
    assert not any(cache_dir().iterdir())


def test_cut_download_is_never_used_and_is_redone(server, monkeypatch):
    entry = tiny_entry(monkeypatch)  # no published hash: only the length can tell
    server.files[entry.file] = official_video(video_swin.create_model("swin3d_t", **TINY))
    server.cut.add(entry.file)
    with pytest.raises(CheckpointError, match="cut short"):
        video_swin.create_model("swin3d_t", pretrained="tiny")
    assert not any(cache_dir().iterdir())
    server.cut.clear()
    video_swin.create_model("swin3d_t", pretrained="tiny")
    assert server.requests == [entry.file, entry.file]


def test_file_of_another_layout_is_refused(server, monkeypatch):
    body, _ = tv_tiny()
    entry = tiny_entry(monkeypatch)  # published as official_video
    server.files[entry.file] = body
    with pytest.raises(CheckpointError, match="layout"):
        video_swin.create_model("swin3d_t", pretrained="tiny")


@pytest.mark.parametrize("var", ["VIDEO_SWIN_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_never_touches_the_network_and_says_where_to_put_the_file(server, monkeypatch, var):
    entry = tiny_entry(monkeypatch)
    body = official_video(video_swin.create_model("swin3d_t", **TINY))
    server.files[entry.file] = body
    monkeypatch.setenv(var, "1")
    with pytest.raises(CheckpointError) as info:
        video_swin.create_model("swin3d_t", pretrained="tiny")
    message = str(info.value)
    assert str(cache_dir() / entry.file) in message and f"{server.url}/{entry.file}" in message
    assert server.requests == []
    cache_dir().mkdir(parents=True)
    (cache_dir() / entry.file).write_bytes(body)  # placed by hand: then offline works
    assert video_swin.create_model("swin3d_t", pretrained="tiny").classes[0] == "abseiling"
    assert server.requests == []


@pytest.mark.slow
def test_full_size_official_swin3d_t_k400(server):
    """The real catalog entry: official file name and layout, the K400 class list."""
    entry = CATALOG["swin3d_t.k400"]
    source = video_swin.create_model("swin3d_t")
    server.files[entry.file] = official_video(source)
    model = video_swin.create_model("swin3d_t", pretrained=True)
    assert server.requests == ["swin_tiny_patch244_window877_kinetics400_1k.pth"]
    assert model.classes == list(read_classes("kinetics400"))
    assert torch.equal(model.state_dict()["head.weight"], source.state_dict()["head.weight"])


def test_config_takes_a_registry_name_for_pretrained_image(server, monkeypatch):
    demo = {"embed_dim": 32, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 4, 8)}  # demo.yaml's model, in 2D
    entry = replace(CATALOG["swin_t.in1k"], model_args=demo)
    monkeypatch.setitem(CATALOG, "swin_t.in1k", entry)
    image = video_swin.create_model("swin_t", num_classes=1000, **demo)
    server.files[entry.file] = saved({"model": image.state_dict()})  # official Microsoft layout
    cfg = load_config("demo.yaml", ["model.pretrained_image=swin_t.in1k"])
    check_paths(cfg)  # a name, not a missing file
    model = build_model(cfg, 10, Accelerator(cpu=True))
    assert server.requests == ["swin_tiny_patch4_window7_224.pth"]
    torch.testing.assert_close(model.state_dict()["layers.0.blocks.0.mlp.fc1.weight"],
                               image.state_dict()["layers.0.blocks.0.mlp.fc1.weight"])


def test_torchvision_k400_list_is_the_shipped_one():
    from torchvision.models._meta import _KINETICS400_CATEGORIES

    assert torchvision.__version__ and list(read_classes("kinetics400")) == list(_KINETICS400_CATEGORIES)
