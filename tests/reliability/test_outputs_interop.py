"""Outputs and interoperability (issue 28, items 5, 7 and 8): nothing scored is thrown away, every
destination is checked before the work, shards are found where prepare wrote them, and a model as
built exports with torch's own exporters."""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

from video_swin.models import create_model

from .conftest import free_port, run_main, tiny_checkpoint, tiny_data, tiny_overrides  # noqa: F401  (fixtures)

# -- item 8b: plain torch.export / torch.onnx.export of a model as built ------------------------------

CLIP = (3, 8, 56, 56)  # 4x14x14 tokens: windows clamped to (4, 7, 7), four windows, shifted blocks


@pytest.fixture(scope="module")
def as_built():
    """A tiny model as create_model builds it: parameters require grad, several heads, shifted blocks."""
    torch.manual_seed(0)
    model = create_model("swin3d_t", num_classes=5, embed_dim=16, depths=(2, 2, 1, 1), num_heads=(1, 2, 2, 2))
    model.eval()
    assert all(p.requires_grad for p in model.parameters())
    return model


def _batch_dim():
    return ({0: torch.export.Dim("batch", min=1)},)


def test_plain_torch_export_dynamic_batch(as_built):
    x = torch.randn(2, *CLIP)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        program = torch.export.export(as_built, (x,), dynamic_shapes=_batch_dim())
    assigned = [str(w.message) for w in caught if "assigned during export" in str(w.message)]
    assert not assigned, assigned  # caches of traced tensors on the modules
    for batch in (1, 3):
        y = torch.randn(batch, *CLIP)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(y), as_built(y), rtol=1e-4, atol=1e-5)


def test_plain_onnx_export_dynamic_batch(as_built, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    x = torch.randn(2, *CLIP)
    program = torch.onnx.export(as_built, (x,), dynamo=True, dynamic_shapes=_batch_dim(), verbose=False)
    path = tmp_path / "as_built.onnx"
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for batch in (1, 3):
        y = torch.randn(batch, *CLIP)
        (got,) = session.run(None, {name: y.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(got), as_built(y), rtol=1e-4, atol=1e-5)


def test_eager_attention_unchanged(as_built):
    """Outside an export, the attention is the fused call it always was (same numbers, same speed)."""
    from video_swin.models import attention

    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    x = torch.randn(1, *CLIP)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(attention.F, "scaled_dot_product_attention", counting)
        as_built(x)  # with gradients, as in training
    assert len(calls) == 6  # one per block


@pytest.mark.slow
def test_torchvision_swin3d_exports_the_same_way():
    """The reference the issue compares with: torchvision's Swin3D, built tiny, passes the same call."""
    pytest.importorskip("onnxscript")
    from torchvision.models.video.swin_transformer import SwinTransformer3d

    model = SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=16, depths=[2, 2, 1, 1], num_heads=[1, 2, 2, 2],
                              window_size=[4, 7, 7], num_classes=5).eval()
    torch.onnx.export(model, (torch.randn(2, *CLIP),), dynamo=True, dynamic_shapes=_batch_dim(), verbose=False)


# -- items 7 and 8a: data.shards: the folder prepare wrote, and one line for every shard mistake ------


@pytest.fixture(scope="module")
def shard_folder(tiny_data, tmp_path_factory):
    """The tiny demo data sharded by prepare --shards (as it is): OUT/shards, the folder its closing line names."""
    from video_swin.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared")
    prepare(tiny_data, out, reencode=False, jobs=2, shards=True, shard_size=4)
    return out / "shards"


def _train_from_shards(capsys, tiny_data, out, shards, **extra):
    sets = tiny_overrides(tiny_data, out, **{"data.shards": shards, "train.max_steps": 1, "eval.final": "false",
                                             "data.num_workers": 1, **extra})
    return run_main(capsys, "train", ["--config", "demo.yaml", "--set", *sets])


def test_data_shards_accepts_the_folder_prepare_wrote(tiny_data, shard_folder, tmp_path, capsys):
    from video_swin.data import ShardSet

    for split in ("train", "val"):
        assert ShardSet.find(str(shard_folder), split) == ShardSet.find(f"{shard_folder}/{{split}}-*.tar", split)
    code, err, _ = _train_from_shards(capsys, tiny_data, tmp_path / "run", str(shard_folder))
    assert code == 0, err
    assert (tmp_path / "run" / "model.safetensors").is_file()


def _one_error_line(err: list[str]) -> str:
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and not any("Traceback" in line for line in err), err
    return errors[0]


def test_data_shards_pointing_nowhere_is_one_line_and_exit_2(tiny_data, tmp_path, capsys):
    for shards in (f"{tmp_path}/nowhere/{{split}}-*.tar", str(tmp_path / "nowhere")):
        code, err, _ = _train_from_shards(capsys, tiny_data, tmp_path / "run", shards)
        assert code == 2 and shards in _one_error_line(err), err


def test_a_truncated_shard_is_one_line_naming_it_and_exit_1(tiny_data, shard_folder, tmp_path, capsys):
    """Found while a DataLoader worker streams it: the data is broken, the run cannot go on (exit 1)."""
    import shutil

    broken = tmp_path / "shards"
    shutil.copytree(shard_folder, broken)
    for shard in broken.glob("train-*.tar"):  # the manifest still lists them whole
        shard.write_bytes(shard.read_bytes()[:3000])
    code, err, _ = _train_from_shards(capsys, tiny_data, tmp_path / "run", str(broken))
    line = _one_error_line(err)
    assert code == 1 and str(broken / "train-") in line and "damaged shard" in line, err


def test_an_unreachable_http_shard_is_one_line_and_exit_2(tiny_data, tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/{{split}}-{{000000..000001}}.tar"  # nobody listens there
    code, err, _ = _train_from_shards(capsys, tiny_data, tmp_path / "run", url)
    line = _one_error_line(err)
    assert code == 2 and "train-000000.tar" in line and "cannot read" in line, err


# -- a folder that is read-only for real ---------------------------------------------------------------


@pytest.fixture
def read_only(tmp_path):
    """A folder no one can write into, holding the user's file ``notes.txt``.

    Tests run as root, who ignores permission bits: the folder is a tmpfs remounted read-only
    (skipped where root may not mount); another user gets a folder without write permission.
    """
    folder = tmp_path / "read_only"
    folder.mkdir()
    if os.geteuid() != 0:
        (folder / "notes.txt").write_bytes(NOTES)
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("root may not mount a tmpfs here, and no other folder is read-only for root")
    try:
        (folder / "notes.txt").write_bytes(NOTES)
        if subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True).returncode:
            pytest.skip("root may not remount a tmpfs read-only here")
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


NOTES = b"the user's own notes\n" * 100


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- item 5: predict checks --out and --features before scoring, writes whole files or .partial ones ----


def _predict(capsys, argv):
    from video_swin.cli import main

    code = main(["predict", *map(str, argv)])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _two_videos(tiny_data):
    return sorted(str(p) for p in (tiny_data / "val").rglob("*.mp4"))[:2]


@pytest.fixture
def no_loading(monkeypatch):
    """Fails the test if the model is loaded: the destinations are checked before that (and any scoring)."""
    import video_swin.engine.predict as predict

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the destinations were checked")

    monkeypatch.setattr(predict, "load_predictor", loaded)


def test_predict_into_a_read_only_folder_is_refused_before_scoring(tiny_checkpoint, tiny_data, tmp_path,
                                                                   read_only, capsys, no_loading):
    weights, _ = tiny_checkpoint
    before = _snapshot(read_only)
    table = tmp_path / "scores.csv"
    for option, target in (("--features", read_only / "feats.safetensors"), ("--features", read_only / "feats"),
                           ("--features", read_only), ("--out", read_only / "scores.csv"),
                           ("--out", read_only / "new" / "scores.jsonl")):
        extra = ["--out", table] if option == "--features" else []
        code, err = _predict(capsys, ["--weights", weights, *_two_videos(tiny_data), *extra, option, target])
        assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {option}:"), (option, target, err)
        assert str(read_only) in err[0] and "read-only" in err[0], err
        assert not table.exists()  # nothing scored, nothing written
    assert _snapshot(read_only) == before


def test_predict_into_the_wrong_kind_of_path_is_refused_and_touches_nothing(tiny_checkpoint, tiny_data, tmp_path,
                                                                            capsys, no_loading):
    weights, _ = tiny_checkpoint
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_bytes(NOTES)
    (mine / "sub" / "scores.csv").write_bytes(NOTES)
    before = _snapshot(mine)
    cases = [("--features", mine / "notes.txt", "is a file"),  # a folder of .npy files is needed
             ("--features", mine / "notes.txt" / "feats", "lies under the file"),
             ("--out", mine / "sub", "is a folder"),
             ("--out", mine / "notes.txt" / "p.csv", "lies under the file")]
    for option, target, words in cases:
        code, err = _predict(capsys, ["--weights", weights, *_two_videos(tiny_data), option, target])
        assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {option}:") and words in err[0], err
    code, err = _predict(capsys, ["--weights", weights, *_two_videos(tiny_data), "--out", mine / "p.csv",
                                  "--features", mine / "p.csv"])
    assert code == 2 and "same path" in err[0], err
    assert _snapshot(mine) == before


def test_predict_writes_whole_files_and_keeps_what_was_scored_when_stopped(tiny_checkpoint, tiny_data, tmp_path,
                                                                           capsys, monkeypatch):
    import csv

    from safetensors.torch import load_file

    import video_swin.engine.predict as predict

    weights, _ = tiny_checkpoint
    videos = _two_videos(tiny_data)
    out = tmp_path / "out"
    args = ["--weights", weights, *videos, "--views", "1x1", "--workers", "0", "--out", out / "p.csv",
            "--features", out / "f.safetensors"]
    code, err = _predict(capsys, args)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["f.safetensors", "p.csv"]  # no temporary file left
    assert sorted(load_file(out / "f.safetensors")) == videos

    real = predict.iter_predictions

    def stopped(*a, **kw):  # the first video scored, then Ctrl-C
        yield next(iter(real(*a, **kw)))
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "iter_predictions", stopped)
    again = tmp_path / "again"
    code, err = _predict(capsys, [*args[:-4], "--out", again / "p.csv", "--features", again / "f.safetensors"])
    assert code == 130
    # never a half-written file under the final names; what was scored is kept, named .partial
    assert sorted(p.name for p in again.iterdir()) == ["f.safetensors.partial", "p.csv.partial"], err
    rows = list(csv.DictReader((again / "p.csv.partial").read_text().splitlines()))
    assert [r["path"] for r in rows] == videos[:1]
    assert sorted(load_file(again / "f.safetensors.partial")) == videos[:1]
    assert any("p.csv.partial" in line for line in err), err


# -- item 7: export --out to a read-only path or to a folder ---------------------------------------------


def test_export_out_read_only_or_a_folder_is_one_line_before_the_export(tmp_path, read_only, capsys, monkeypatch):
    from video_swin import export
    from video_swin.checkpoints import save_checkpoint
    from video_swin.cli import main
    from video_swin.errors import ConfigError

    model = create_model("swin3d_t", num_classes=5, embed_dim=16, depths=(1,), num_heads=(1,), window_size=(2, 3, 3))
    weights = save_checkpoint(model, tmp_path / "small.safetensors")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_bytes(NOTES)
    before, before_ro = _snapshot(mine), _snapshot(read_only)

    def loaded(*args, **kwargs):
        raise AssertionError("the weights were loaded before --out was checked")

    monkeypatch.setattr(export, "load_for_export", loaded)
    for target, words in ((read_only / "small.onnx", "read-only"), (read_only / "new" / "small.pt2", "read-only"),
                          (mine, "is a folder"), (read_only, "is a folder"), (mine / "notes.txt" / "m.pt2", "file")):
        for fmt in ("onnx", "pt2"):
            code = main(["export", "--weights", str(weights), "--format", fmt, "--clip", "4x24x24",
                         "--out", str(target)])
            err = capsys.readouterr().err
            assert code == 2 and err.count("\n") == 1 and err.startswith("error: --out:"), (target, err)
            assert words in err, (target, err)
    assert _snapshot(mine) == before and _snapshot(read_only) == before_ro
    with pytest.raises(ConfigError, match="is a folder"):  # the library call checks it too
        export.export_model(model, "pt2", (1, 3, 4, 24, 24), path=mine)
