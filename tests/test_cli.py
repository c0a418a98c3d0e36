"""The ``video-swin`` command: its help, one exit-code mapping for every subcommand, and the shims agreeing with it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from video_swin import cli
from video_swin.errors import ResumeError, TooManyBrokenVideos, TrainingError

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ["train", "evaluate", "predict", "inflate", "make-demo-data"]
SCRIPTS = {"train": "train", "evaluate": "evaluate", "predict": "predict", "inflate": "inflate",
           "make-demo-data": "make_demo_data"}


def _run(cmd: list[str], cwd: Path = REPO, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=cwd, env=env, timeout=300, **kwargs)


def _in_process(capsys, argv: list[str]) -> tuple[int, list[str]]:
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse: --help and bad options
        code = e.code
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_help_lists_every_command_on_one_line(tmp_path):
    result = _run([sys.executable, "-m", "video_swin.cli", "--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in COMMANDS:
        (line,) = [line for line in lines if line.split()[:1] == [name]]
        assert len(line.split()) > 2, line  # the name and its help, on one line


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("video-swin")
    assert script.is_file(), "reinstall the package: pip install -e ."
    result = _run([str(script), "--help"])
    assert result.returncode == 0 and "make-demo-data" in result.stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([name, "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and out.startswith(f"usage: video-swin {name}") and "--help" in out


def test_train_help_names_the_shipped_recipes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "demo.yaml" in out and "k400_swin_t.yaml" in out


def test_no_command_is_a_usage_error(capsys):
    code, err = _in_process(capsys, [])
    assert code == 2 and len(err) == 1 and "required: COMMAND" in err[0]


CONFIG_MISTAKES = [
    (["--config", "demo.yaml", "--set", "train.epoch=3"], "unknown key 'train.epoch' (did you mean 'train.epochs'?)"),
    (["--config", "no_such.yaml"], "config file not found: no_such.yaml"),
    (["--config", "demo.yaml", "--set", "model.recompute_qkv=false"], "unknown key 'model.recompute_qkv'"),
    ([], "the following arguments are required: --config"),
]


@pytest.mark.parametrize("args, words", CONFIG_MISTAKES, ids=["key", "file", "removed-key", "argparse"])
def test_cli_and_shim_give_the_same_exit_code_and_message(capsys, args, words):
    code, err = _in_process(capsys, ["train", *args])
    shim = _run([sys.executable, str(REPO / "scripts" / "train.py"), *args])
    module = _run([sys.executable, "-m", "video_swin.cli", "train", *args])
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    for result in (shim, module):
        assert (result.returncode, result.stderr.strip().splitlines()) == (code, err), result.stderr


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_shims_are_thin(name):
    text = (REPO / "scripts" / f"{SCRIPTS[name]}.py").read_text()
    assert f'cli(["{name}"' in text and len(text.splitlines()) < 30


@pytest.mark.parametrize("error, code, words", [
    (TrainingError("3 consecutive non-finite losses"), 1, "error: 3 consecutive non-finite losses"),
    (TooManyBrokenVideos(["a.mp4", "b.mp4"], 4, 0.05), 1, "error: 2 of 4 videos could not be decoded"),
    (ResumeError("the saved state\nwas written by another run"), 2, "error: the saved state was written by another run"),
    (FileNotFoundError("data/x.csv"), 2, "error: data/x.csv"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_one_mapping_from_exceptions_to_exit_codes(monkeypatch, capsys, error, code, words):
    import video_swin.engine

    def train(cfg, resume=False, **options):
        raise error

    monkeypatch.setattr(video_swin.engine, "train", train)
    got, err = _in_process(capsys, ["train", "--config", "demo.yaml"])
    assert got == code and err[0].startswith(words), err
    if code != 1:  # run errors may list files, one a line; the others are one line
        assert len(err) == 1, err


def test_a_bug_is_not_hidden_as_a_usage_error(monkeypatch):
    import video_swin.engine

    def train(cfg, resume=False, **options):
        raise ValueError("a bug")

    monkeypatch.setattr(video_swin.engine, "train", train)
    with pytest.raises(ValueError, match="a bug"):  # a traceback, not "error: ..." with exit 2
        cli.main(["train", "--config", "demo.yaml"])


def test_train_passes_config_and_resume(monkeypatch, capsys):
    import video_swin.engine

    seen = {}
    monkeypatch.setattr(video_swin.engine, "train", lambda cfg, resume=False, **options: seen.update(cfg=cfg, resume=resume))
    assert cli.main(["train", "--config", "demo.yaml", "--set", "train.epochs=3", "--set", "seed=7", "--resume"]) == 0
    assert (seen["cfg"].train.epochs, seen["cfg"].seed, seen["resume"]) == (3, 7, True)


@pytest.mark.slow
def test_accelerate_launch_runs_the_module(tmp_path):
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    result = _run([accelerate, "launch", "--cpu", "--num_processes", "1", "-m", "video_swin.cli", "train",
                   "--config", "demo.yaml", "--set", "train.epoch=3"], cwd=tmp_path)
    assert result.returncode != 0
    assert "error: unknown key 'train.epoch' (did you mean 'train.epochs'?)" in result.stderr.splitlines()
