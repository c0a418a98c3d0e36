"""Stop requests by signal: finish the optimizer step, save a state, exit with a code that says so.

Clusters preempt a job with SIGTERM (SLURM, Kubernetes, torchrun's agent
forwarding its own), SLURM can send SIGUSR1 ahead of time (``--signal``), and
users press Ctrl-C (SIGINT). During training :class:`StopSignals` turns each
of them into a request that the loop reads after every optimizer step; all
processes agree on it (:meth:`StopSignals.agreed`, one small all-reduce per
step), save the same step through :func:`.state.save_state` and stop with
:class:`~video_swin.errors.Preempted`, which the command turns into exit code
``128 + signal`` (143 SIGTERM, 130 SIGINT, 138 SIGUSR1) after one line.

A second signal stops the process at once, without saving, with the same
exit code. Launchers repeat signals: Ctrl-C reaches both ``torchrun`` and its
workers, and the agent then forwards it; SLURM signals every process of a
step, the agent included. So a repeat within :data:`REPEAT_WINDOW_S` of the
first counts as the same request. The time left for the save is the
launcher's: torchrun kills its workers ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT``
seconds (30 by default) after it forwards a signal, SLURM ``KillWait`` after
its SIGTERM. torchrun's agent forwards SIGTERM and SIGINT but dies of
SIGUSR1 unless ``TORCHELASTIC_SIGNALS_TO_HANDLE`` names it
(``SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1``).

Processes forked while the handlers are installed (DataLoader workers, the
decoder helpers of ``data.decode_timeout``) inherit them; there the handler
does nothing, so a signal sent to the whole process group leaves the workers
to be shut down by the main process as usual.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
# A signal repeated sooner than this after the first is the launcher's copy of it, not a user insisting.
REPEAT_WINDOW_S = 1.0


def exit_code(signum: int) -> int:
    """The shell's code for a process ended by ``signum``: 128 + the signal number."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _say(line: str) -> None:
    # os.write, not print: a handler may run while the main thread is inside a write to stderr,
    # and a buffered stream refuses reentrant calls.
    try:
        os.write(2, line.encode())
    except OSError:
        pass


class StopSignals:
    """Installs handlers for :data:`SIGNALS` while it is entered; remembers the first signal received.

    Only the main thread can install signal handlers; elsewhere (training
    driven from a thread) it installs nothing and never reports a signal, but
    :meth:`agreed` still takes part in the agreement so the processes stay in step.

    Args:
        below_bar: Start each message on a new line: a progress bar on
            stderr holds the current one.

    Attributes:
        signum: The signal this process received, or None.
    """

    def __init__(self, *, below_bar: bool = False) -> None:
        self.signum: int | None = None
        self._start = "\n" if below_bar else ""
        self._received_at = 0.0
        self._pid = os.getpid()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            # None: a handler installed from C, which Python cannot reinstall; the default is the closest.
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker or decoder helper: the main process decides
            return
        now, name = time.monotonic(), signal_name(signum)
        if self.signum is None:
            self.signum, self._received_at = signum, now
            _say(f"{self._start}received {name}: saving a state after the current optimizer step "
                 f"(send it again to stop at once without saving)\n")  # fmt: skip
        elif now - self._received_at >= REPEAT_WINDOW_S:
            _say(f"{self._start}received {name} again: stopping now, without saving\n")
            os._exit(exit_code(signum))

    def agreed(self, accelerator: Any) -> int:
        """The signal any process received (0 if none), the same value in every process.

        A collective: every process must call it at the same point of the loop.
        When several processes received different signals, the highest number wins.
        """
        mine = self.signum or 0
        if accelerator.num_processes == 1:
            return mine
        import torch

        flag = torch.tensor([mine], dtype=torch.int64, device=accelerator.device)
        return int(accelerator.reduce(flag, reduction="max").item())
