"""Resumable training states: written whole or not at all, found by their contents.

A state is ``checkpoints/step_<N>/``, written first under a hidden temporary
name, flushed to disk (fsync) and renamed only when complete, so a crash or
power loss mid-save never leaves a folder that looks usable; hidden folders
are never picked, and ``--resume`` removes them with a log line. The step lives
in ``trainer_state.json`` inside the folder (never parsed out of the name).
Older states are pruned only after a newer one is complete, so a save that
fails (disk full, read-only folder) stops the run with the earlier states intact.
Every file of a state is read safely: tensors through safetensors, the rest
through ``torch.load(weights_only=True)``; a pickle that would build other
objects is refused with the file named.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from accelerate.utils import load as accelerate_load
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoints.io import torch_reason, unpickling_detail
from ..errors import CheckpointError, ResumeError, TrainingError
from .sharding import load_shards, save_shards

log = logging.getLogger(__name__)
TRAINER_STATE = "trainer_state.json"


def _rng_file(folder: Path, rank: int) -> Path:
    return folder / f"rng_state_{rank}.safetensors"


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{i}"] = state
    return tensors


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(folder: Path) -> None:
    """Flushes every file of ``folder`` and the folder itself to disk."""
    for path in folder.rglob("*"):
        if path.is_file():
            _fsync(path)
    _fsync(folder)


def describe_error(error: BaseException) -> str:
    """An exception on one line: an OSError's cause and errno name, else its type and first line.

    Libraries report a full disk in their own words (``SafetensorError: ... No
    space left on device``, torch's writer a ``RuntimeError``); the first line
    keeps the cause.
    """
    if isinstance(error, OSError):
        return _describe(error)
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__


# Below this much free space a failed write is put down to a full disk (torch's writer reports one
# as "[enforce fail at inline_container.cc] unexpected pos", without the cause).
LOW_SPACE_BYTES = 64 * 2**20


def _space_hint(folder: Path) -> str:
    """`` (only N MiB free on that disk: it is full)`` when the disk holding ``folder`` is nearly full, else ""."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f" (only {free / 2**20:.1f} MiB free on that disk: it is full)" if free < LOW_SPACE_BYTES else ""


def _describe(error: OSError) -> str:
    name = errno.errorcode.get(error.errno, "") if error.errno else ""
    where = f" ({error.filename})" if error.filename else ""
    return f"{error.strerror or error}" + (f" [{name}]" if name else "") + where


def _step_together(accelerator: Accelerator, work: Callable[[], None], what: str, tmp: Path, checkpoints_dir: Path,
                   step: int) -> None:
    """Runs one phase of a save on every process; if it failed anywhere, all processes stop with its cause.

    An OSError on one process must not leave the others waiting at the next
    barrier, so every phase ends with a vote: the processes exchange what went
    wrong (nothing, usually) and all raise the same error when anything did.
    """
    failure: str | None = None
    try:
        work()
    except OSError as e:
        failure = _describe(e)
    except Exception as e:  # noqa: BLE001 - a library's own error for a failed write (safetensors, torch's writer)
        failure = describe_error(e) + _space_hint(checkpoints_dir)
    failures = gather_object([failure]) if accelerator.num_processes > 1 else [failure]  # one entry per process
    if not any(failures):
        return
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    kept = ", ".join(p.name for _, p in list_states(checkpoints_dir)) or "none"
    rank, cause = next((r, f) for r, f in enumerate(failures) if f)
    by = f" in process {rank}" if accelerator.num_processes > 1 else ""
    raise TrainingError(
        f"could not save the training state of step {step} ({what}{by}): {cause}; "
        f"earlier states are kept ({kept} in {checkpoints_dir}). Free disk space or fix the folder's "
        f"permissions, then continue with --resume"
    )


def save_state(accelerator: Accelerator, checkpoints_dir: Path, counters: dict[str, Any], keep_last: int, *,
               shards: tuple[nn.Module, torch.optim.Optimizer] | None = None) -> Path:
    """Saves model, optimizer, RNG and ``counters`` as ``step_<counters['step']>``; prunes old states.

    Every process writes its RNG state; the main process does the rename and pruning.
    ``shards``: a sharded model and its optimizer (``train.distributed: fsdp``),
    which accelerate does not hold: every process writes its own shards of
    them (:func:`.sharding.save_shards`).

    Raises:
        TrainingError: a write failed (disk full, read-only folder, ...) on any
            process; the partial folder is removed and no earlier state is pruned.
    """
    step = int(counters["step"])
    final = checkpoints_dir / f"step_{step}"
    tmp = checkpoints_dir / f".tmp_step_{step}"
    main = accelerator.is_main_process

    def prepare() -> None:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)

    def write() -> None:
        accelerator.save_state(str(tmp), safe_serialization=True)
        if shards is not None:
            save_shards(*shards, tmp, accelerator.process_index)
        save_file(_rng_tensors(), str(_rng_file(tmp, accelerator.process_index)))

    def publish() -> None:
        if not main:
            return
        (tmp / TRAINER_STATE).write_text(json.dumps(counters, indent=2))
        _sync_tree(tmp)  # complete on disk before it gets its visible name
        if final.exists():  # re-saving a step: set the old one aside until the new one is in place
            old = checkpoints_dir / f".old_step_{step}"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        _fsync(checkpoints_dir)

    _step_together(accelerator, prepare, "creating the folder", tmp, checkpoints_dir, step)
    _step_together(accelerator, write, "writing", tmp, checkpoints_dir, step)
    _step_together(accelerator, publish, "finishing", tmp, checkpoints_dir, step)
    if main:
        # only the folders save_state names: a state copied aside under another name is the user's
        complete = sorted((s for s in list_states(checkpoints_dir) if re.fullmatch(r"step_\d+", s[1].name)),
                          key=lambda p: p[0])  # fmt: skip
        for _, old in complete[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _scan(checkpoints_dir: Path) -> tuple[list[tuple[int, Path]], list[tuple[Path, str]]]:
    """Complete states as sorted (step, folder), and visible state folders whose step cannot be read, with why."""
    states, unreadable = [], []
    if not checkpoints_dir.is_dir():
        return states, unreadable
    for folder in checkpoints_dir.iterdir():
        if not folder.is_dir():
            continue
        if folder.name.startswith("."):
            log.info("ignoring incomplete state %s (interrupted save)", folder)
            continue
        try:
            counters = json.loads((folder / TRAINER_STATE).read_text())
            states.append((int(counters["step"]), folder))
        except (OSError, ValueError, KeyError, TypeError) as e:
            unreadable.append((folder, f"{type(e).__name__}: {' '.join(str(e).split())}"))
    return sorted(states), unreadable


def list_states(checkpoints_dir: Path) -> list[tuple[int, Path]]:
    """Complete states as (step, folder); hidden (interrupted) and unreadable folders are skipped with a log line."""
    states, unreadable = _scan(checkpoints_dir)
    for folder, why in unreadable:
        log.warning("ignoring unreadable state %s: %s", folder, why)
    return states


def remove_incomplete(checkpoints_dir: Path) -> list[Path]:
    """Deletes the hidden folders interrupted saves left behind, with a warning each; returns them."""
    removed = []
    if checkpoints_dir.is_dir():
        for folder in sorted(checkpoints_dir.iterdir()):
            if folder.is_dir() and folder.name.startswith((".tmp_step_", ".old_step_")):
                log.warning("removing %s: an interrupted save left it incomplete", folder)
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


def latest_state(checkpoints_dir: Path) -> Path | None:
    """The newest complete state folder, or None.

    Raises:
        ResumeError: the newest state folder cannot be read; the message names
            it and the state before it, which ``--resume FOLDER`` continues from.
            (Falling back to the older state silently would drop every step and
            metrics row since.)
    """
    states, unreadable = _scan(checkpoints_dir)
    newest = states[-1] if states else None
    newer = []
    for folder, why in unreadable:
        # Its step is what cannot be read, so the name we gave it (step_<N>) orders it.
        match = re.fullmatch(r"step_(\d+)", folder.name)
        if match is not None and (newest is None or int(match[1]) > newest[0]):
            newer.append((int(match[1]), folder, why))
        else:
            log.warning("ignoring unreadable state %s: %s", folder, why)
    if newer:
        _, folder, why = max(newer)
        before = (f"continue from the newest readable state with --resume {newest[1]}" if newest is not None
                  else "no readable state is older; move it away to start over")  # fmt: skip
        raise ResumeError(f"{folder / TRAINER_STATE}: the newest training state cannot be read ({why}); {before}")
    return newest[1] if newest else None


def _unsafe_pickle(folder: Path) -> tuple[Path, pickle.UnpicklingError] | None:
    """The first pickle of ``folder`` that holds more than tensors and plain data, with the unpickler's error."""
    for path in sorted(folder.iterdir()):
        if path.suffix in (".bin", ".pkl", ".pt", ".pth") and path.is_file():
            try:
                accelerate_load(path, map_location="cpu")  # weights_only=True, numpy arrays allowed
            except pickle.UnpicklingError as e:
                return path, e
            except Exception:  # noqa: BLE001 - unreadable for another reason: reported by the caller
                continue
    return None


def _refuse(path: Path, error: pickle.UnpicklingError) -> CheckpointError:
    detail = unpickling_detail(error)  # torch's advice to retry with weights_only=False left out
    if "global" not in detail.lower():  # not a pickle asking for objects: a damaged or foreign file
        return CheckpointError(
            f"{path}: not a readable training state (the weights-only unpickler stopped: {detail}); move this "
            f"state folder away to resume from the one before it"
        )
    return CheckpointError(
        f"{path}: refused to unpickle: the file holds Python objects other than tensors, which could run code "
        f"when loaded; this state cannot be trusted (details: {detail})"
    )


def load_state(accelerator: Accelerator, folder: Path, *,
               shards: tuple[nn.Module, torch.optim.Optimizer] | None = None) -> dict[str, Any]:
    """Restores model, optimizer and RNG from ``folder``; returns its counters.

    ``shards``: the sharded model and optimizer that :func:`save_state` was given.

    Raises:
        CheckpointError: a file of the state is a pickle that would run code
            (refused, nothing of it executed).
        ResumeError: the state is unreadable or incomplete, or the RNG state
            of this process is missing or does not restore.
    """
    try:
        counters = json.loads((folder / TRAINER_STATE).read_text())
    except (OSError, ValueError) as e:
        raise ResumeError(f"{folder / TRAINER_STATE}: unreadable ({e})") from e
    # accelerate reads its RNG pickle inside a blanket try/except; check it here so a
    # hostile one is reported rather than silently skipped.
    rng_pickle = folder / f"random_states_{accelerator.process_index}.pkl"
    if rng_pickle.is_file():
        try:
            accelerate_load(rng_pickle, map_location="cpu")
        except pickle.UnpicklingError as e:
            raise _refuse(rng_pickle, e) from None
        except Exception as e:  # noqa: BLE001
            raise ResumeError(f"{rng_pickle}: unreadable ({torch_reason(e)})") from e
    try:
        accelerator.load_state(str(folder))
    except pickle.UnpicklingError as e:
        found = _unsafe_pickle(folder)
        raise (_refuse(*found) if found else _refuse(folder, e)) from None
    except Exception as e:  # noqa: BLE001 - truncated or missing files: name the folder, not a library frame
        first = torch_reason(e)
        raise ResumeError(
            f"{folder}: the saved state cannot be restored ({type(e).__name__}: {first}); "
            f"move this folder away to resume from the state before it"
        ) from e
    if shards is not None:
        load_shards(*shards, folder, accelerator.process_index)
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
