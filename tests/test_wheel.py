"""A built wheel, installed in a fresh venv, works from any directory: help, recipes by bare name, a short training run.

The fresh venv gets the wheel only (``--no-deps``); its dependencies come from
this venv's site-packages through PYTHONPATH, which does not process the
editable install's ``.pth`` file, so ``video_swin`` can only come from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOP_LEFT_OUT = {".git", ".venv", "venv", "data", "runs", "outputs", "build", "dist", ".pytest_cache"}  # at the root only
LEFT_OUT = shutil.ignore_patterns("*.egg-info", "__pycache__", "*.pyc")


def _ignore(folder: str, names: list[str]) -> set[str]:
    top = TOP_LEFT_OUT if Path(folder) == REPO else set()
    return (top & set(names)) | LEFT_OUT(folder, names)


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(venv bin folder, environment)`` of a fresh venv holding only the wheel built from this checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    # Build from a copy of the working tree, so the build leaves nothing in the checkout.
    src = tmp / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=_ignore)
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist")], tmp)
    (wheel,) = (tmp / "dist").glob("video_swin-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert {"video_swin/configs/demo.yaml", "video_swin/cli.py", "video_swin/data/__init__.py"} <= set(names)
    assert "video-swin = video_swin.cli:main" in entry_points

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp)
    python = venv / "bin" / "python"
    _run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], tmp)
    env = {**os.environ, "PYTHONPATH": sysconfig.get_path("purelib"), "OMP_NUM_THREADS": "1",
           "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("VIRTUAL_ENV", None)
    return venv / "bin", env


@pytest.mark.slow
def test_wheel_install_trains_from_any_directory(installed, tmp_path):
    bin_dir, env = installed
    work = tmp_path / "elsewhere"  # outside the checkout: nothing here to import or read recipes from
    work.mkdir()

    code = "import video_swin.cli as c, video_swin.config as f; print(c.__file__); print(f.CONFIG_DIR)"
    where = _run([str(bin_dir / "python"), "-c", code], work, env).stdout.split()
    assert all(Path(p).is_relative_to(bin_dir.parent) for p in where), where  # the wheel's copy, not the checkout

    help_text = _run([str(bin_dir / "video-swin"), "--help"], work, env).stdout
    assert all(name in help_text for name in ("train", "evaluate", "predict", "inflate", "make-demo-data"))

    video_swin = str(bin_dir / "video-swin")
    _run([video_swin, "make-demo-data", "--out", "demo", "--train-per-class", "2", "--val-per-class", "1",
          "--workers", "1"], work, env)
    sets = ["train.max_steps=2", "output_dir=run", "data.root=demo", "data.train_annotations=demo/train.csv",
            "data.val_annotations=demo/val.csv", "data.num_workers=0", "train.batch_size=4",
            "train.save_every_steps=2", "eval.views=1x1", "eval.every_epochs=0", "eval.batch_size=5"]
    result = _run([video_swin, "train", "--config", "demo.yaml", "--set", *sets], work, env)
    assert (work / "run" / "model.safetensors").is_file(), result.stderr[-3000:]
    saved = (work / "run" / "config.yaml").read_text()
    assert "max_steps: 2" in saved and "recompute" not in saved

    mistake = subprocess.run([video_swin, "train", "--config", "demo.yaml", "--set", "train.epoch=3"], check=False, cwd=work,
                             env=env, capture_output=True, text=True, timeout=120)
    assert mistake.returncode == 2
    assert mistake.stderr.strip() == "error: unknown key 'train.epoch' (did you mean 'train.epochs'?)"
