"""Features of a newer torch than the floor (FSDP2) are imported where used: an older torch trains without them
and is told which torch a request for one needs."""

import os
import subprocess
import sys
from pathlib import Path

from .conftest import tiny_overrides

REPO = Path(__file__).resolve().parents[2]

# torch.distributed.fsdp as torch 2.4 has it: FSDP1 only, no fully_shard/MixedPrecisionPolicy (torch >= 2.6).
OLD_FSDP = """
import sys, types
import torch.distributed, torch.distributed.fsdp as real
old = types.ModuleType("torch.distributed.fsdp")
old.__path__ = real.__path__
old.FullyShardedDataParallel = real.FullyShardedDataParallel
sys.modules["torch.distributed.fsdp"] = torch.distributed.fsdp = old
"""


def _run(code, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", OLD_FSDP + code, *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_package_imports_without_fsdp2():
    result = _run(
        "import video_swin, video_swin.cli, video_swin.engine.trainer, video_swin.engine.state\n"
        "from video_swin.engine import sharding\n"
        "try:\n    sharding.check_can_shard()\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
    )
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith("ConfigError train.distributed: fsdp needs torch >= 2.6"), line
    assert "\n" not in line and "upgrade torch, or use train.distributed: ddp" in line


def test_fsdp_request_on_old_torch_is_one_line_config_error(tiny_data, tmp_path):
    """``video-swin train`` with ``train.distributed=fsdp`` on a torch without FSDP2: exit 2, one line naming
    the torch needed, before anything is trained or written."""
    sets = tiny_overrides(tiny_data, tmp_path / "run", **{"train.distributed": "fsdp"})
    result = _run("from video_swin.cli import main\nsys.exit(main(sys.argv[1:]))",
                  "train", "--config", "demo.yaml", "--set", *sets)  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "fsdp needs torch >= 2.6" in lines[0], result.stderr
    assert not (tmp_path / "run" / "model.safetensors").exists()
