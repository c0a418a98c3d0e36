"""``scripts/train.py`` with one injected fault, for the reliability tests (never used by the library).

Usage: ``VIDEO_SWIN_FAULT=<fault> python tests/reliability/faulty_train.py <train.py arguments>``

Faults (N is an optimizer step, RANK a process index; without RANK every process):

* ``kill_at_step:N[:RANK]``: SIGKILL this process while computing step N (after the
  forward/backward of its batch, before the optimizer update), i.e. with steps
  1..N-1 done; DataLoader workers are left to notice on their own.
* ``signal_at_batch:K:SIGNAME[:RANK]``: this process sends itself the signal
  (``SIGTERM``, ``SIGINT``, ``SIGUSR1``) as the K-th training batch of the run
  starts (counted from 1 over the whole run, the batches of the run it
  resumes included); with one batch a step, while step K is computed.
* ``signal_in_save:N:SIGNAME``: the same signal again while the state of step N
  is written (where ``kill_in_save`` kills), sent after the window in which
  the trainer takes a repeat for the launcher's copy of the first.
* ``kill_in_save:N``: SIGKILL while the state of step N is being written: the
  model and optimizer files are in ``.tmp_step_N``, the RNG file and
  ``trainer_state.json`` are not.
* ``oserror_in_save:N:ERRNO[:RANK]``: the write of the state of step N fails
  with ``OSError(ERRNO)`` (e.g. ``ENOSPC``: disk full, ``EROFS``: read-only
  folder), in every process or only in process RANK.
* ``nan_loss:A-B``: the loss of optimizer steps A..B (with one batch a step)
  is NaN.
* ``hostile_decoder``: the decoders segfault on any file whose name holds
  ``CRASH`` and never return on one holding ``HANG`` (``broken_videos.HostileDecoder``
  around every decoder ``get_decoder`` makes).
* ``sleep_at_start:S[:RANK]``: this process waits S seconds before it starts
  (so before it joins the process group).

A fault ending in ``@A`` applies only in elastic attempt A
(``TORCHELASTIC_RESTART_COUNT``, which torchrun sets; 0 when unset), e.g.
``kill_at_step:7:1@0`` kills process 1 at step 7 of the first attempt only.

The faults are monkeypatches applied before ``scripts/train.py`` runs, so the
code under test is the code users run.
"""

from __future__ import annotations

import errno
import os
import runpy
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _this_rank(rank: str | None) -> bool:
    return rank is None or int(rank) == int(os.environ.get("RANK", "0"))


def _install(fault: str) -> None:
    fault, _, attempt = fault.partition("@")
    if attempt and int(attempt) != int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")):
        return
    kind, *args = fault.split(":")
    if kind == "kill_at_step":
        import video_swin.engine.trainer as trainer

        target, original = int(args[0]), trainer.lr_factor
        here = _this_rank(args[1] if len(args) > 1 else None)

        def lr_factor(step: int, *rest):
            if step + 1 == target and here:  # called with the number of steps done so far
                _kill()
            return original(step, *rest)

        trainer.lr_factor = lr_factor
    elif kind == "signal_at_batch":
        import video_swin.engine.trainer as trainer

        target, signum, original = int(args[0]), getattr(signal, args[1]), trainer._forward_backward
        here = _this_rank(args[2] if len(args) > 2 else None)

        def forward_backward(run, batch, stats):
            counters = run.counters  # the epoch and the batches consumed in it survive a resume
            if counters["epoch"] * len(run.train_loader) + counters["batches_in_epoch"] + 1 == target and here:
                os.kill(os.getpid(), signum)
            return original(run, batch, stats)

        trainer._forward_backward = forward_backward
    elif kind == "signal_in_save":
        import video_swin.engine.preemption as preemption
        import video_swin.engine.state as state

        folder, signum, original = f".tmp_step_{int(args[0])}", getattr(signal, args[1]), state.save_file

        def save_file(tensors, path, *rest, **kwargs):
            if folder in str(path):
                time.sleep(preemption.REPEAT_WINDOW_S + 0.2)
                os.kill(os.getpid(), signum)
            return original(tensors, path, *rest, **kwargs)

        state.save_file = save_file
    elif kind in ("kill_in_save", "oserror_in_save"):
        import video_swin.engine.state as state

        folder, original = f".tmp_step_{int(args[0])}", state.save_file

        only_rank = int(args[2]) if len(args) > 2 else None
        rank = int(os.environ.get("RANK", "0"))

        def save_file(tensors, path, *rest, **kwargs):
            if folder in str(path) and only_rank in (None, rank):
                if kind == "kill_in_save":
                    _kill()
                code = getattr(errno, args[1])
                raise OSError(code, os.strerror(code), str(path))
            return original(tensors, path, *rest, **kwargs)

        state.save_file = save_file
    elif kind == "nan_loss":
        import torch
        import torch.nn.functional as F

        first, last = map(int, args[0].split("-"))
        original, calls = F.cross_entropy, [0]

        def cross_entropy(*a, **k):
            calls[0] += 1  # one call per batch, in training only
            loss = original(*a, **k)
            return loss * torch.nan if first <= calls[0] <= last else loss

        F.cross_entropy = cross_entropy
    elif kind == "hostile_decoder":
        # The decoder object itself is wrapped, so that the fault travels with it into the decoder helpers
        # (fresh interpreters, data.decode_timeout) as well as into forked DataLoader workers.
        sys.path.insert(0, str(REPO))
        from tests.reliability.broken_videos import HostileDecoder
        from video_swin.data import decoders

        original_isolate = decoders.isolate  # get_decoder's last step, with or without a timeout
        decoders.isolate = lambda decoder, timeout: original_isolate(HostileDecoder(decoder), timeout)
    elif kind == "sleep_at_start":
        if _this_rank(args[1] if len(args) > 1 else None):
            time.sleep(float(args[0]))
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    for fault in filter(None, os.environ.get("VIDEO_SWIN_FAULT", "").split(",")):
        _install(fault)
    script = str(REPO / "scripts" / "train.py")
    sys.argv = [script, *sys.argv[1:]]
    sys.path.insert(0, str(REPO / "scripts"))
    runpy.run_path(script, run_name="__main__")
