"""The run folder (``output_dir``) on a shared cluster: one run at a time, nothing overwritten by accident.

* :class:`RunLock` (:mod:`video_swin.outputs`, below data and engine, which both use it): an exclusive lock on ``output_dir/.lock`` for as long as a
  run trains. A second run on the same folder is refused, naming the
  holder's host and pid. The lock is a POSIX record lock (``lockf``, also
  honoured by NFS), so a run that died (kill -9, a lost node) holds nothing
  and the next one takes over; the lock file's text only says who held it
  last. Unlike ``flock``, it is not inherited by forked processes, so a
  killed run's DataLoader workers, still exiting, do not keep it.
* :func:`prepare_folder`: every run marks its folder (``.video-swin-run``).
  A folder that already holds a run is refused unless the new run resumes it
  (``--resume``) or replaces it (``--overwrite``, which removes the old run's
  own files with a line naming them). A folder holding no run, or a run plus
  files no run wrote, is refused with what was found, and nothing is removed:
  ``--overwrite`` never deletes a user's files. Runs written before the
  marker are recognised by their resolved ``config.yaml``.
* :func:`check_resume_config`: before resuming, the saved resolved config is
  compared with the new one; a change that would make the resumed run differ
  from an uninterrupted one is refused with a one-line diff, unless named in
  ``--allow-changes``.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from accelerate import Accelerator
from accelerate.utils import gather_object

from .._version import __version__
from ..config import Config, to_dict
from ..errors import ConfigError
from ..outputs import LOCK_FILE, RunLock  # noqa: F401  (RunLock lives with the other output checks; named here too)

log = logging.getLogger(__name__)
# Written by every run at its start: marks the folder as a run folder (see prepare_folder).
MARKER = ".video-swin-run"
# What a run writes in its folder (see foreign_entries).
_RUN_FILES = frozenset({LOCK_FILE, MARKER, "config.yaml", "classes.txt", "metrics.jsonl", "model.safetensors",
                        "model.json", "curves.png", "batch_plan.json"})  # fmt: skip
_TMP_WEIGHTS = re.compile(r"\.model\.(safetensors|json)\.[^/]+\.tmp")  # checkpoints.io's atomic writes
_STATE_FOLDER = re.compile(r"(\.tmp_|\.old_)?step_\d+")  # .state
_SPLIT_FILES = frozenset({"train.txt", "val.txt", "classes.txt"})  # ..data.split
_EVAL_FOLDER = re.compile(r"eval(_\d+x\d+)?")
_EVAL_FILES = frozenset({"metrics.json", "predictions.csv", "confusion_matrix.png"})  # .evaluate.write_report
_TENSORBOARD_FILE = re.compile(r"events\.out\.tfevents\..+|hparams\.yml")

# Keys whose change leaves the weights of a resumed run those of an uninterrupted one:
# where things are written and how often, loader parallelism, evaluation, limits on
# broken data, the pretrained files (a resumed run takes its weights from the state),
# and how the same model is run (threads, torch.compile: equal within float rounding).
SAFE_CHANGES = (
    "output_dir", "data.num_workers", "data.shm_slots", "data.decode_timeout", "data.max_bad_fraction",
    "data.generate_demo", "train.log_every_steps", "train.save_every_steps", "train.keep_last",
    "train.max_nonfinite_steps", "train.threads", "train.compile", "model.pretrained_image", "model.pretrained_video", "eval",
)  # fmt: skip
# Written beside the config by the trainer, compared like config keys.
RUN_KEYS = ("world_size",)


def on_main(accelerator: Accelerator, work: Callable[[], None]) -> None:
    """Runs ``work`` on the main process; if it raises ConfigError, every process raises it.

    Without the exchange the other processes would wait forever at the next
    barrier while the main process exits with the error.
    """
    failure = None
    if accelerator.is_main_process:
        try:
            work()
        except ConfigError as e:
            failure = str(e)
    failures = gather_object([failure]) if accelerator.num_processes > 1 else [failure]
    message = next((f for f in failures if f), None)
    if message is not None:
        raise ConfigError(message)


def _names(paths: Iterable[Path | str], limit: int = 6) -> str:
    names = [str(p) for p in paths]
    return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def _write_marker(folder: Path) -> None:
    """Marks ``folder`` as a run folder (kept when it is already marked)."""
    marker = folder / MARKER
    if marker.is_file():
        return
    try:
        marker.write_text(json.dumps({"written_by": "video-swin", "version": __version__,
                                      "created": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")  # fmt: skip
    except OSError as e:
        raise ConfigError(f"output_dir {folder}: cannot write in it ({e.strerror}); choose a writable folder") from e


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a training run: its marker, or (runs written before the marker) the run's
    resolved ``config.yaml``, which holds ``world_size`` beside the config's sections."""
    if (folder / MARKER).is_file():
        return True
    saved = folder / "config.yaml"
    if not saved.is_file() or saved.is_symlink():
        return False
    try:
        data = yaml.safe_load(saved.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return isinstance(data, Mapping) and all(k in data for k in ("world_size", "model", "train", "output_dir"))


def foreign_entries(folder: Path) -> list[str]:
    """The entries of ``folder`` (relative paths, sorted) that are not files a training run writes.

    A run writes, in its folder: the lock and the marker, ``config.yaml``,
    ``classes.txt``, ``metrics.jsonl``, ``model.safetensors`` with its
    ``model.json`` (and their temporary names while being written),
    ``curves.png``, ``batch_plan.json`` (``train.batch_size: auto``), ``split/`` (``train.txt``,
    ``val.txt``, ``classes.txt``: the held-out videos of ``data.val_annotations: null``), ``checkpoints/step_<N>`` (``.tmp_``/``.old_`` while being
    saved), ``eval/`` and ``video-swin evaluate``'s ``eval_<CLIPS>x<CROPS>/``
    (``metrics.json``, ``predictions.csv``, ``confusion_matrix.png``) and
    ``tensorboard/`` (event files, ``hparams.yml``). Links are never a run's.
    """
    found: list[str] = []
    for path in sorted(folder.iterdir()):
        name = path.name
        if path.is_symlink():
            found.append(name)
        elif path.is_file():
            if name not in _RUN_FILES and not _TMP_WEIGHTS.fullmatch(name):
                found.append(name)
        elif not path.is_dir():
            found.append(name)
        elif name == "checkpoints":
            found += [f"{name}/{p.name}" for p in sorted(path.iterdir())
                      if p.is_symlink() or not p.is_dir() or not _STATE_FOLDER.fullmatch(p.name)]  # fmt: skip
        elif _EVAL_FOLDER.fullmatch(name):
            found += [f"{name}/{p.name}" for p in sorted(path.iterdir())
                      if p.is_symlink() or not p.is_file() or p.name not in _EVAL_FILES]  # fmt: skip
        elif name == "split":  # data.split: the held-out videos of a run without validation annotations
            found += [f"{name}/{p.name}" for p in sorted(path.iterdir())
                      if p.is_symlink() or not p.is_file() or p.name not in _SPLIT_FILES]  # fmt: skip
        elif name == "tensorboard":
            found += [str(p.relative_to(folder)) for p in sorted(path.rglob("*"))
                      if p.is_symlink() or (not p.is_dir() and not _TENSORBOARD_FILE.fullmatch(p.name))]  # fmt: skip
        else:
            found.append(name)
    return found


def prepare_folder(folder: Path, *, resume: bool, overwrite: bool) -> None:
    """Checks ``output_dir`` for a new or resumed run and marks it as a run folder.

    A folder holding files is refused unless the run resumes the run it holds
    (``resume``) or replaces it (``overwrite``). ``overwrite`` removes only a
    previous run's own files (:func:`foreign_entries`), and refuses a folder
    that holds no run (:func:`is_run_folder`) or holds anything else, naming
    what it found; nothing is removed then.

    Raises:
        ConfigError: ``output_dir`` is a file, cannot be written, or is refused as above.
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output_dir {folder} is a file, not a folder; choose a folder for the run")
    if not folder.is_dir():  # the run creates it
        folder.mkdir(parents=True, exist_ok=True)
        _write_marker(folder)
        return
    if not os.access(folder, os.W_OK | os.X_OK):  # before anything: a resumed run would fail at its first write
        raise ConfigError(f"output_dir {folder}: cannot write in it (no write permission); choose a writable folder")
    # a run that stopped before writing anything else (a config mistake) leaves only these
    existing = sorted(p for p in folder.iterdir() if p.name not in (LOCK_FILE, MARKER))
    names = _names(p.name for p in existing)
    # A folder of saved states alone (copied in to resume them) is a run to --resume: nothing in it is
    # someone else's, and the run writes its config beside them.
    run = bool(existing) and (is_run_folder(folder) or (
        resume and not (folder / "config.yaml").exists() and not foreign_entries(folder)))
    if existing and not run:
        what = "--overwrite only replaces the files of a previous run" if overwrite else (
            "--resume only continues a run" if resume else "a new run needs an empty or new folder")
        raise ConfigError(
            f"output_dir {folder} is not empty and holds no training run (found: {names}); {what}: choose an "
            f"empty or new output_dir (nothing was removed)"
        )
    if existing and not resume:
        if not overwrite:
            raise ConfigError(
                f"output_dir {folder} already holds a run ({names}); continue it with --resume, replace it with "
                f"--overwrite, or choose another output_dir"
            )
        foreign = foreign_entries(folder)
        if foreign:
            raise ConfigError(
                f"--overwrite: output_dir {folder} holds a run and files no run wrote ({_names(foreign)}); "
                f"move them out or choose another output_dir (nothing was removed)"
            )
        print(f"--overwrite: removing the previous run's files in {folder}: {names}", flush=True)
        for path in existing:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    _write_marker(folder)


def flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _covered(key: str, names: Iterable[str]) -> bool:
    """Whether ``key`` is one of ``names`` or lies in a section named there (``eval`` covers ``eval.views``)."""
    return any(key == n or key.startswith(n + ".") for n in names)


def config_changes(saved: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, new value)`` for every config or run key that differs (nested data in, dotted keys out).

    A key that the saved config lacks (written by a version before the key existed) and that the new
    config leaves at its default is no change: every new key's default keeps the earlier behaviour.
    """
    a, b, defaults = flat(saved), flat(new), flat(to_dict(Config()))
    keys = [k for k in dict.fromkeys([*a, *b]) if _covered(k, ("seed", "model", "data", "train", "optim", "sched",
                                                                "eval", "output_dir", *RUN_KEYS))]  # fmt: skip
    return [(k, a.get(k), b.get(k)) for k in keys
            if a.get(k) != b.get(k) and not (k not in a and k in defaults and b.get(k) == defaults[k])]


def check_allow_changes(allow: Iterable[str], config: Mapping[str, Any], resume: bool | str) -> None:
    """Refuses ``--allow-changes`` without ``--resume`` (it would be ignored) or naming no config key or section.

    ``config``: the run's config as plain data (``to_dict(cfg)``).
    """
    allow = list(allow)
    if not allow:
        return
    if not resume:
        raise ConfigError(f"--allow-changes {' '.join(allow)}: only used with --resume (it accepts config changes "
                          f"against the resumed run); drop it, or add --resume")
    keys = [*flat(config), *RUN_KEYS]
    known = set(keys) | {k.rsplit(".", i)[0] for k in keys for i in range(1, k.count(".") + 1)}
    for name in allow:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else " (e.g. train.epochs, or a section such as optim)"
            raise ConfigError(f"--allow-changes: {name!r} is not a config key or section{hint}")


def check_resume_config(saved_file: Path, new: Mapping[str, Any], allow: Iterable[str] = ()) -> list[str]:
    """Refuses to resume with a config that breaks exactness; returns the accepted changes as text.

    Args:
        saved_file: ``config.yaml`` of the run folder (what the interrupted run trained with).
        new: the new resolved config with the run keys (``world_size``).
        allow: keys or sections (``--allow-changes``) whose change is accepted knowingly.

    Raises:
        ConfigError: a change to the model, data, batch size, accumulation,
            world size, schedule, optimizer or seed that ``allow`` does not
            name; or an unreadable saved config.
    """
    try:
        saved = yaml.safe_load(saved_file.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{saved_file}: cannot read the saved config to compare it ({' '.join(str(e).split())})") from e
    if not isinstance(saved, Mapping):
        raise ConfigError(f"{saved_file}: the saved config is not a mapping")
    allow = list(allow)
    refused, accepted = [], []
    for key, old, value in config_changes(saved, new):
        text = f"{key} {old!r} -> {value!r}"
        if _covered(key, SAFE_CHANGES) or _covered(key, allow):
            accepted.append(text)
        else:
            refused.append((key, text))
    if refused:
        keys = " ".join(dict.fromkeys(k for k, _ in refused))
        raise ConfigError(
            f"--resume: the config differs from the one the run was trained with ({saved_file}) in what changes "
            f"the result: {'; '.join(t for _, t in refused)}; restore those values, or accept the change knowingly "
            f"with --allow-changes {keys}"
        )
    return accepted
