"""The project removes only what it wrote (issue 28, item 1), and a run folder's error paths are one line (item 7).

``train --overwrite`` replaces a previous run's own files and refuses a folder of
the user's files, or a run folder holding anything else, naming what it found;
every byte stays. The same rule for state pruning, demo data regeneration,
stale shards and ``export-hub``. An ``output_dir`` that is a file or read-only,
``train.threads=1000``, a stray ``--allow-changes`` and ``plan --gpu-memory nan``
are one line and exit code 2.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.engine.conftest import REPO, tiny_overrides
from video_swin.config import config_from_dict, load_config, to_dict
from video_swin.errors import ConfigError

SHORT = {"train.max_steps": 2, "train.save_every_steps": 1, "train.keep_last": 2, "eval.final": "false"}


def train(sets: list[str], *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "video_swin.cli", "train", "--config", "demo.yaml", "--set", *sets, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "video_swin.cli", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def main_line(capsys, *args: str) -> str:
    """``video-swin ARGS`` in this process (for mistakes found before training starts): its one error line."""
    from video_swin.cli import main

    code = main(list(args))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    return err[0]


def one_error_line(result: subprocess.CompletedProcess, code: int = 2) -> str:
    """The command's only ``error:`` line, also its last, without a traceback, and the exit code."""
    assert result.returncode == code, (result.returncode, result.stdout[-2000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr[-3000:]
    return errors[0]


def snapshot(folder: Path, *, skip: tuple[str, ...] = ()) -> dict[str, bytes | str]:
    """Every file's bytes, every folder and link of ``folder``, by relative path (but ``skip``)."""
    out: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if rel in skip:
            continue
        if path.is_symlink():
            out[rel] = f"link -> {os.readlink(path)}"
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = path.read_bytes()
    return out


def users_folder(root: Path, tiny_data: Path) -> Path:
    """A working folder: a dataset, a thesis, nested notes, and files named like a run's (their own)."""
    root.mkdir(parents=True)
    shutil.copytree(tiny_data / "train" / "zooming in", root / "demo" / "train" / "zooming in")
    shutil.copy(tiny_data / "train.csv", root / "demo" / "train.csv")
    (root / "thesis.tex").write_text("\\documentclass{book}\n\\begin{document}Chapter 1\\end{document}\n")
    (root / "notes" / "ch1").mkdir(parents=True)
    (root / "notes" / "ch1" / "draft.md").write_bytes(os.urandom(2048))
    (root / "config.yaml").write_text("experiment: mine\nlr: 0.1\n")  # the user's own, not a run's
    (root / "metrics.jsonl").write_text('{"step": 1, "mine": true}\n')
    (root / "checkpoints").mkdir()
    (root / "checkpoints" / "best.pt").write_bytes(b"\x80\x04weights")
    return root


# -- item 1: --overwrite and the run marker -----------------------------------------------------------


def test_overwrite_refuses_a_folder_of_the_users_own_files_and_keeps_every_byte(tiny_data, tmp_path):
    work = users_folder(tmp_path / "work", tiny_data)
    before = snapshot(work)
    sets = tiny_overrides(tiny_data, work, **SHORT)

    line = one_error_line(train(sets, "--overwrite"))
    assert f"output_dir {work} is not empty and holds no training run" in line
    assert "thesis.tex" in line and "demo" in line and "nothing was removed" in line
    assert snapshot(work) == before  # every byte, and no lock file or marker left behind

    for args in (("--resume",),):  # nor does a resume write into it
        line = one_error_line(train(sets, *args))
        assert "holds no training run" in line and "thesis.tex" in line
        assert snapshot(work) == before


def test_overwrite_replaces_a_previous_run_and_refuses_a_run_folder_holding_a_users_file(tiny_data, tmp_path):
    out = tmp_path / "run"
    sets = tiny_overrides(tiny_data, out, **SHORT)
    first = train(sets)
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((out / ".video-swin-run").read_text())["written_by"] == "video-swin"
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "checkpoints", "tensorboard", "model.safetensors",
                                              "model.json", "metrics.jsonl", "curves.png", "classes.txt"}
    for folder in ("eval", "eval_1x1"):  # what the final evaluation and `video-swin evaluate` write there
        (out / folder).mkdir()
        for name in ("metrics.json", "predictions.csv", "confusion_matrix.png"):
            (out / folder / name).write_text("{}")

    # A user's file beside the run, and a state copied aside: refused, naming them; nothing removed.
    (out / "thesis.tex").write_text("mine\n")
    shutil.copytree(out / "checkpoints" / "step_1", out / "checkpoints" / "best")
    before = snapshot(out, skip=(".lock",))  # the lock's text names its last holder
    line = one_error_line(train(sets, "--overwrite"))
    assert line.startswith(f"error: --overwrite: output_dir {out} holds a run and files no run wrote (")
    assert "checkpoints/best" in line and "thesis.tex" in line and "nothing was removed" in line
    assert snapshot(out, skip=(".lock",)) == before

    # The same run without them, written before runs had a marker: recognised by its config.yaml, replaced.
    (out / "thesis.tex").unlink()
    shutil.rmtree(out / "checkpoints" / "best")
    (out / ".video-swin-run").unlink()
    replaced = train(tiny_overrides(tiny_data, out, **{**SHORT, "train.max_steps": 1}), "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert "--overwrite: removing the previous run's files" in replaced.stdout
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1]  # the new run's rows only
    assert not (out / "eval_1x1").exists() and not (out / "eval").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_1"]
    assert (out / ".video-swin-run").is_file()


def test_a_marked_folder_left_by_a_run_that_stopped_at_once_takes_a_new_run(tiny_data, tmp_path):
    out = tmp_path / "run"
    (tmp_path / "bad.csv").write_text("nonsense\n")  # stops the run while it reads the data, after the marker
    bad = train(tiny_overrides(tiny_data, out, **{**SHORT, "data.train_annotations": tmp_path / "bad.csv"}))
    one_error_line(bad)
    assert sorted(p.name for p in out.iterdir()) == [".lock", ".video-swin-run"]
    from video_swin.engine.run_dir import prepare_folder

    prepare_folder(out, resume=False, overwrite=False)  # no refusal: the folder holds nothing of a run yet


def test_state_pruning_keeps_a_state_copied_aside(tmp_path):
    torch = pytest.importorskip("torch")
    from accelerate import Accelerator

    from video_swin.engine import state as states

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    checkpoints = tmp_path / "checkpoints"
    states.save_state(accelerator, checkpoints, {"step": 1}, keep_last=1)
    shutil.copytree(checkpoints / "step_1", checkpoints / "best")  # the user's copy: a complete state too
    before = snapshot(checkpoints / "best")
    for step in (2, 3):
        states.save_state(accelerator, checkpoints, {"step": step}, keep_last=1)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best", "step_3"]
    assert snapshot(checkpoints / "best") == before


# -- the same rule elsewhere: demo data, shards, export-hub --------------------------------------------


def test_demo_data_regeneration_and_make_demo_data_never_remove_a_users_file(tmp_path):
    from video_swin.data import demo

    root = tmp_path / "demo"
    root.mkdir()
    (root / demo.DEMO_MARKER).write_text("demo\n")
    (root / "train" / "zooming in").mkdir(parents=True)
    (root / "train" / "zooming in" / "abc_000001_000011.mp4").write_bytes(b"old demo video")
    (root / "my_videos").mkdir()
    (root / "my_videos" / "wedding.mp4").write_bytes(os.urandom(4096))
    before = snapshot(root)
    with pytest.raises(ConfigError, match="my_videos") as info:
        demo.ensure_demo_data(root, annotations=(root / "train.csv",), train_per_class=1, val_per_class=1)
    assert "nothing was removed" in str(info.value)
    assert snapshot(root) == before
    assert demo.foreign_demo_entries(root) == ["my_videos"]

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "train.csv").write_text("label,path\nmine,1\n")
    before = snapshot(mine)
    with pytest.raises(ConfigError, match="is not empty and holds no demo data"):
        demo.make_demo_data(mine, train_per_class=1, val_per_class=1, workers=1)
    assert snapshot(mine) == before


def test_writing_fewer_shards_removes_only_stale_shards_of_its_own_manifest(tiny_data, tmp_path):
    pytest.importorskip("webdataset")
    from video_swin.data.shards import write_shards

    videos = sorted((tiny_data / "val").rglob("*.mp4"))[:3]
    entries = [{"path": str(v), "label": v.parent.name} for v in videos]
    out = tmp_path / "shards"
    write_shards(out, "val", entries, root=tiny_data, shard_size=1)  # val-000000..000002
    out.joinpath("val-000007.tar").write_bytes(b"someone else's shard")  # listed in no manifest
    write_shards(out, "val", entries[:1], root=tiny_data, shard_size=1, seed=1)
    assert sorted(p.name for p in out.glob("*.tar")) == ["val-000000.tar", "val-000007.tar"]
    assert out.joinpath("val-000007.tar").read_bytes() == b"someone else's shard"


def test_export_hub_never_replaces_a_readme_or_config_it_did_not_write(tiny_checkpoint, tmp_path, capsys):
    from video_swin.cli import main

    run_dir = Path(tiny_checkpoint[0]).parent
    repo = tmp_path / "hub_repo"
    repo.mkdir()
    (repo / "README.md").write_text("# my model\nhand-written card\n")
    (repo / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    before = snapshot(repo)
    assert main(["export-hub", str(run_dir), str(repo)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "README.md that no export wrote" in err[0] and "nothing was written" in err[0]
    assert snapshot(repo) == before

    fresh = tmp_path / "export"
    assert main(["export-hub", str(run_dir), str(fresh)]) == 0
    (fresh / "notes.txt").write_text("kept\n")
    assert main(["export-hub", str(run_dir), str(fresh)]) == 0  # an earlier export is replaced, other files kept
    assert (fresh / "notes.txt").read_text() == "kept\n"
    capsys.readouterr()


# -- item 7's run-folder parts: output_dir a file or read-only ---------------------------------------


def test_output_dir_that_is_a_file_is_one_line(tiny_data, tmp_path):
    file = tmp_path / "results.txt"
    file.write_text("my results\n")
    line = one_error_line(train(tiny_overrides(tiny_data, file, **SHORT)))
    assert line == f"error: output_dir {file} is a file, not a folder; choose a folder for the run"
    assert file.read_text() == "my results\n"
    line = one_error_line(train(tiny_overrides(tiny_data, file / "run", **SHORT)))  # under a file
    assert f"output_dir {file / 'run'}: cannot write in it (" in line and "choose a writable folder" in line


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder on a tmpfs remounted read-only: read-only for root too (tests run as root here)."""
    point = tmp_path / f"ro_{uuid.uuid4().hex[:6]}"
    point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(point)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount): {done.stderr.strip()}")
    try:
        (point / "old_run").mkdir()
        (point / "old_run" / ".lock").write_text("")
        ro = subprocess.run(["mount", "-o", "remount,ro", str(point)], capture_output=True, text=True)
        if ro.returncode != 0:
            pytest.skip(f"cannot remount the tmpfs read-only: {ro.stderr.strip()}")
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_read_only_output_dir_is_one_line(tiny_data, read_only_folder):
    for out in (read_only_folder / "new_run", read_only_folder / "old_run"):  # to create; holding a lock file
        line = one_error_line(train(tiny_overrides(tiny_data, out, **SHORT)))
        assert line.startswith(f"error: output_dir {out}: cannot ") and "Read-only file system" in line, line


# -- the smaller items: train.threads, --allow-changes, plan ------------------------------------------


def test_train_threads_is_bounded_by_the_machine(tiny_data, tmp_path, capsys):
    cpus = os.cpu_count() or 1
    limit = 2 * cpus
    sets = tiny_overrides(tiny_data, tmp_path / "run", **{**SHORT, "train.threads": 1000})
    line = main_line(capsys, "train", "--config", "demo.yaml", "--set", *sets)
    assert line == (f"error: train.threads: 1000 is more than twice the {cpus} CPUs of this machine "
                    f"(at most {limit}); use auto or a count up to {limit}")
    assert not (tmp_path / "run").exists()
    assert load_config("demo.yaml", [f"train.threads={limit}"]).train.threads == str(limit)
    # the config a checkpoint carries from a larger machine still loads (predict does not run its threads)
    saved = to_dict(load_config("demo.yaml"))
    saved["train"]["threads"] = "1000"
    assert config_from_dict(saved).train.threads == "1000"


def test_allow_changes_needs_resume_and_a_known_key(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--config", "demo.yaml", "--set", *tiny_overrides(tiny_data, out, **SHORT)]
    line = main_line(capsys, *args, "--allow-changes", "train.epochs")
    assert line.startswith("error: --allow-changes train.epochs: only used with --resume")
    assert not out.exists()
    line = main_line(capsys, *args, "--resume", "--allow-changes", "train.epochz")
    assert line == "error: --allow-changes: 'train.epochz' is not a config key or section (did you mean 'train.epochs'?)"
    assert not out.exists()

    from video_swin.engine.run_dir import check_allow_changes

    cfg = to_dict(load_config("demo.yaml"))
    check_allow_changes(["optim", "train.max_steps", "eval", "world_size", "model.window_size"], cfg, True)
    with pytest.raises(ConfigError, match="'nonsense' is not a config key"):
        check_allow_changes(["nonsense"], cfg, "auto")


@pytest.mark.parametrize("args, words", [
    (["--gpu-memory", "nan"], "gpu_memory (--gpu-memory) must be a finite size in GiB > 0, got nan"),
    (["--gpu-memory", "inf"], "gpu_memory (--gpu-memory) must be a finite size in GiB > 0, got inf"),
    (["--gpu-memory", "-8"], "gpu_memory (--gpu-memory) must be a finite size in GiB > 0, got -8.0"),
    (["--num-classes", "0"], "num_classes (--num-classes) must be >= 1, got 0"),
    (["--num-classes", "-3"], "num_classes (--num-classes) must be >= 1, got -3"),
    (["--gpus", "0"], "gpus (--gpus) must be >= 1, got 0"),
])  # fmt: skip
def test_plan_refuses_non_finite_and_non_positive_values(capsys, args, words):
    from video_swin.cli import main

    assert main(["plan", "--model", "swin3d_t", "--clip", "8x64x64", *args]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [f"error: {words}"]
