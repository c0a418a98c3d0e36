"""The catalog of published weights and the shipped class lists (no network)."""

from __future__ import annotations

import re

import pytest

import video_swin
from video_swin.config import check_paths, list_configs, load_config
from video_swin.errors import CheckpointError
from video_swin.pretrained import CATALOG, get_pretrained, read_classes
from video_swin.pretrained.catalog import DEFAULT_TAGS

LAYOUTS = {"official_video", "torchvision_video", "ours"}


def test_names_asked_for_are_listed():
    names = set(video_swin.list_pretrained())
    wanted = {"swin3d_t.k400", "swin3d_s.k400", "swin3d_b.k400", "swin3d_b.k400_in22k", "swin3d_b.k600_in22k",
              "swin3d_b.ssv2", "swin3d_t.tv_k400", "swin3d_s.tv_k400", "swin3d_b.tv_k400", "swin3d_b.tv_k400_in22k",
              "swin_t.in1k", "swin_s.in1k", "swin_b.in1k", "swin_b.in22k", "swin_l.in22k", "swinv2_t.in1k"}
    assert wanted <= names


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_entry_is_consistent(name):
    e = CATALOG[name]
    assert e.name == name and name.split(".")[0] == e.model and e.model in video_swin.list_models()
    assert e.url.endswith("/" + e.file) and e.url.startswith("https://")
    assert e.layout in LAYOUTS and e.source
    if e.classes:
        assert len(read_classes(e.classes)) == e.num_classes
    if e.layout == "torchvision_video":  # torchvision's file names carry the sha256 prefix
        assert re.fullmatch(r"[0-9a-f]{8}", e.sha256) and e.sha256 in e.file
    if e.accuracy:
        assert 0 < e.accuracy["acc@1"] < e.accuracy["acc@5"] < 100


def test_default_tags_exist():
    for model, tag in DEFAULT_TAGS.items():
        assert get_pretrained(model, True).name == f"{model}.{tag}"


def test_unknown_and_mismatched_names_are_errors():
    with pytest.raises(CheckpointError, match="did you mean swin3d_t.k400"):
        get_pretrained("swin3d_t", "k40")
    with pytest.raises(CheckpointError, match="not 'swin3d_t'"):
        get_pretrained("swin3d_t", "swin3d_b.k400")
    with pytest.raises(CheckpointError, match="no published weights"):
        get_pretrained("swinv2_3d_t", True)


@pytest.mark.parametrize(("name", "count", "known"), [
    ("kinetics400", 400, {0: "abseiling", 1: "air drumming", 399: "zumba"}),
    ("kinetics600", 600, {0: "abseiling", 1: "acting in play", 599: "zumba"}),
    ("something_something_v2", 174, {0: "Approaching something with your camera",
                                     173: "Wiping something off of something"}),
])  # fmt: skip
def test_class_lists(name, count, known):
    classes = read_classes(name)
    assert len(classes) == count == len(set(classes))
    assert all(c == c.strip() and c for c in classes)
    for i, c in known.items():
        assert classes[i] == c


def test_shipped_recipes_name_registry_weights():
    seen = {}
    for recipe in list_configs():
        cfg = load_config(recipe)
        for key in ("pretrained_image", "pretrained_video"):
            value = getattr(cfg.model, key)
            if value is not None:
                assert value in CATALOG, f"{recipe}: model.{key}={value}"
                seen[recipe] = value
    assert seen["k400_swin_t.yaml"] == "swin_t.in1k" and seen["ssv2_swin_b.yaml"] == "swin3d_b.k400_in22k"


def test_check_paths_accepts_names_but_not_missing_files(tmp_path):
    check_paths(load_config("demo.yaml", ["model.pretrained_video=swin3d_b.k400"]))
    from video_swin.config import ConfigError

    with pytest.raises(ConfigError, match="file not found"):
        check_paths(load_config("demo.yaml", [f"model.pretrained_video={tmp_path / 'swin3d_b.k400'}"]))
