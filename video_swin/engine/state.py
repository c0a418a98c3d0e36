"""Resumable training states: written whole or not at all, found by their contents.

A state is ``checkpoints/step_<N>/``, written first under a hidden temporary
name and renamed only when complete, so a crash mid-save never leaves a folder
that looks usable. The step lives in ``trainer_state.json`` inside the folder
(never parsed out of the name). Older states are pruned only after a newer one
is complete.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)
TRAINER_STATE = "trainer_state.json"


class ResumeError(RuntimeError):
    """A saved state that cannot be restored exactly."""


def _rng_file(folder: Path, rank: int) -> Path:
    return folder / f"rng_state_{rank}.safetensors"


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{i}"] = state
    return tensors


def save_state(accelerator: Accelerator, checkpoints_dir: Path, counters: dict[str, Any], keep_last: int) -> Path:
    """Saves model, optimizer, RNG and ``counters`` as ``step_<counters['step']>``; prunes old states.

    Every process writes its RNG state; the main process does the rename and pruning.
    """
    step = int(counters["step"])
    final = checkpoints_dir / f"step_{step}"
    tmp = checkpoints_dir / f".tmp_step_{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    save_file(_rng_tensors(), str(_rng_file(tmp, accelerator.process_index)))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / TRAINER_STATE).write_text(json.dumps(counters, indent=2))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        complete = sorted(list_states(checkpoints_dir), key=lambda p: p[0])
        for _, old in complete[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def list_states(checkpoints_dir: Path) -> list[tuple[int, Path]]:
    """Complete states as (step, folder); temporary and unreadable folders are skipped with a log line."""
    states = []
    if not checkpoints_dir.is_dir():
        return states
    for folder in checkpoints_dir.iterdir():
        if not folder.is_dir():
            continue
        if folder.name.startswith(".tmp_"):
            log.info("ignoring incomplete state %s (interrupted save)", folder)
            continue
        try:
            counters = json.loads((folder / TRAINER_STATE).read_text())
            states.append((int(counters["step"]), folder))
        except (OSError, ValueError, KeyError) as e:
            log.warning("ignoring unreadable state %s: %s", folder, e)
    return sorted(states)


def latest_state(checkpoints_dir: Path) -> Path | None:
    """The newest complete state folder, or None."""
    states = list_states(checkpoints_dir)
    return states[-1][1] if states else None


def load_state(accelerator: Accelerator, folder: Path) -> dict[str, Any]:
    """Restores model, optimizer and RNG from ``folder``; returns its counters.

    Raises:
        ResumeError: the RNG state of this process is missing or does not restore.
    """
    counters = json.loads((folder / TRAINER_STATE).read_text())
    accelerator.load_state(str(folder))
    rng_path = _rng_file(folder, accelerator.process_index)
    if not rng_path.is_file():
        raise ResumeError(f"{rng_path} is missing: the run cannot resume exactly (was it saved with another world size?)")
    try:
        saved = load_file(str(rng_path))
        torch.set_rng_state(saved["cpu"])
        cuda = [saved[k] for k in sorted(k for k in saved if k.startswith("cuda_"))]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
        if not torch.equal(torch.get_rng_state(), saved["cpu"]):
            raise ResumeError("restored CPU RNG state differs from the saved one")
    except ResumeError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure here breaks exact resume
        raise ResumeError(f"could not restore the RNG state from {rng_path}: {e}") from e
    return counters
