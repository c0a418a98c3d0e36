"""Decoding in a helper process: a decoder that crashes or hangs costs one video, not the run.

FFmpeg (under decord and PyAV) is native code; on a hostile file it can
segfault, abort or loop forever. In a DataLoader worker that kills or stalls
the worker, and with it the run. :class:`IsolatedDecoder` runs another decoder
in a helper process and waits at most ``timeout`` seconds for each video:

* the helper is started on the first read of each process that decodes
  (every DataLoader worker gets its own; a helper inherited through a fork is
  left to its owner) and serves one video after another;
* the helper is a fresh interpreter (spawned, never forked): a process that has
  already decoded holds FFmpeg's, OpenMP's and torch's threads, and a forked
  copy of it can deadlock in them (seen: libswscale's thread teardown inside
  PyAV's ``VideoFrame.reformat``), which would mark a good video as hung;
* a read that does not finish in time kills the helper; a helper that dies
  (signal, ``os._exit``, out of memory) is reaped. Either way the read raises
  :class:`~video_swin.data.DecodeError` naming the file and what happened, and
  the next read starts a fresh helper. The dataset's broken-video handling then
  replaces the video (training) or reports it (evaluation) like any other
  broken file. The helper's start-up (importing torch, about 2 s) is not
  counted against the timeout.

The clip position still comes from the caller's ``select``: a picklable one
(the dataset's) travels with the path and runs in the helper; any other is
asked for the indices once the helper knows the frame count. The frames
(uint8) come back through a socket as raw bytes. The cost is that copy, a few
messages per video and one interpreter start per helper; ``docs/RELIABILITY.md``
gives the measured figures.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.util
import os
import pickle
import signal
import socket
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch

from .decoder_base import DecodeError, Decoder, IndexSelector

logger = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1
_START_TIMEOUT = 300.0  # importing torch on a loaded machine; not counted against decode_timeout


class _HelperLost(Exception):
    """The helper process is gone (crashed or killed after a timeout); ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Abort(Exception):
    """Raised inside the helper when the caller's ``select`` failed."""


def _exit_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by signal {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exit code {os.WEXITSTATUS(status)}" if os.WIFEXITED(status) else f"status {status}"


def _prepare_child(parent_pid: int) -> None:
    """Signal dispositions and lifetime of a freshly started helper."""
    # The owner may ignore or handle these (a DataLoader worker prints a worker error on
    # SIGSEGV); the helper should simply die and let its owner report the file.
    for sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGABRT, signal.SIGTERM):
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the owner, which then closes the socket
    if sys.platform.startswith("linux"):  # die with the owner even while stuck in native code
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the owner died before prctl took effect
        os._exit(0)
    torch.set_num_threads(1)  # one helper per decoding process: keep any tensor op on this thread


def _helper_main(fd: int, owner: int) -> None:
    """The spawned helper's entry point: the decoder arrives first, then one path after another."""
    conn = Connection(fd)
    _prepare_child(owner)
    code = 0
    try:
        decoder = conn.recv()
        conn.send(("ready",))
        _serve(decoder, conn)
    except BaseException:  # noqa: BLE001 - the owner reports how the helper ended
        code = 1
    finally:
        os._exit(code)


def _serve(decoder: Decoder, conn: Connection) -> None:
    """The helper's loop: one path in, frames (or the reason it failed) out."""
    while True:
        try:
            _, path, select = conn.recv()
        except (EOFError, OSError):
            return  # the owner closed the socket or exited

        def remote_select(num_frames: int) -> np.ndarray:
            conn.send(("select", num_frames))
            kind, value = conn.recv()
            if kind != "indices":
                raise _Abort
            return value

        try:
            frames, indices = decoder.read(path, select or remote_select)
            array = np.ascontiguousarray(frames.numpy())  # (N, H, W, 3) uint8
        except _Abort:
            conn.send(("aborted",))
        except DecodeError as exc:
            conn.send(("decode_error", exc.reason))
        except Exception as exc:  # noqa: BLE001 - sent to the owner, which raises it
            conn.send(("error", type(exc).__name__, str(exc)))
        else:
            conn.send(("ok", array.shape, str(array.dtype), indices))
            conn.send_bytes(memoryview(array).cast("B"))  # raw bytes: no pickling of the frames


class _Helper:
    """One spawned helper process and the owner's end of its socket."""

    def __init__(self, decoder: Decoder) -> None:
        ours, theirs = socket.socketpair()
        parent = os.getpid()
        # The child sees its end as descriptor 3 (dup2 clears close-on-exec there only); it finds the
        # package (and the decoder's classes) on the owner's sys.path.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        code = f"from video_swin.data.isolated import _helper_main; _helper_main(3, {parent})"
        try:
            pid = os.posix_spawn(sys.executable, [sys.executable, "-c", code], env,
                                 file_actions=[(os.POSIX_SPAWN_DUP2, theirs.fileno(), 3)])
        finally:
            theirs.close()
        self.pid, self.conn, self.owner = pid, Connection(ours.detach()), parent
        # Reap the helper when the owner exits: DataLoader workers leave through
        # multiprocessing's exit hooks (not atexit), which run these finalizers.
        self._finalizer = multiprocessing.util.Finalize(self, _stop, args=(self.conn, pid), exitpriority=10)
        try:
            self.conn.send(decoder)
            ready = self.conn.poll(_START_TIMEOUT) and self.conn.recv() == ("ready",)
        except (EOFError, OSError):
            ready = False
        if not ready:
            status = _stop(self.conn, pid)
            self._finalizer.cancel()
            how = _exit_status(status) if status is not None else "gone"
            raise _HelperLost(f"the decoder helper process did not start ({how}); skipped")

    def read(self, path: str, select: IndexSelector, timeout: float) -> tuple[torch.Tensor, np.ndarray]:
        deadline = time.monotonic() + timeout
        error: Exception | None = None
        try:
            try:  # a picklable selector runs in the helper: one round trip per video
                self.conn.send(("read", path, select))
            except (pickle.PicklingError, AttributeError, TypeError):  # a closure: the helper asks for indices
                self.conn.send(("read", path, None))
        except OSError:
            self._lost("the decoder helper process died before this video; skipped")
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.conn.poll(remaining):
                self._lost(f"decoding did not finish within {timeout:g} s (data.decode_timeout); skipped")
            try:
                message = self.conn.recv()
                kind = message[0]
                if kind == "ok":
                    _, shape, dtype, indices = message
                    buffer = bytearray(int(np.prod(shape)) * np.dtype(dtype).itemsize)
                    self.conn.recv_bytes_into(buffer)  # sent right after the header, no copy after this one
                    return torch.from_numpy(np.frombuffer(buffer, dtype=dtype).reshape(shape)), indices
            except (EOFError, OSError):
                self._lost(None)
            if kind == "select":
                try:
                    indices = np.asarray(select(message[1]), dtype=np.int64)
                except Exception as exc:  # noqa: BLE001 - raised below, once the helper is idle again
                    error = exc
                    self.conn.send(("abort", None))
                else:
                    self.conn.send(("indices", indices))
                continue
            if kind == "aborted":
                raise error if error is not None else RuntimeError(f"{path}: decoding aborted")
            if kind == "decode_error":
                raise DecodeError(path, message[1])
            # Not a broken file but a bug or a bad argument: raised as decoding in this process would.
            error_type = ValueError if message[1] == "ValueError" else RuntimeError
            raise error_type(f"{message[2]} (raised in the decoder helper: {message[1]})")

    def _lost(self, reason: str | None) -> NoReturn:
        """Stops and reaps the helper; raises _HelperLost with ``reason`` (default: how it died)."""
        status = _stop(self.conn, self.pid)
        self._finalizer.cancel()
        if reason is None:
            reason = f"the decoder crashed ({_exit_status(status)}); skipped" if status is not None else (
                "the decoder helper process vanished; skipped")
        raise _HelperLost(reason)

    def alive(self) -> bool:
        """Whether the helper still runs; a helper found dead between videos is reaped here."""
        try:
            return os.waitpid(self.pid, os.WNOHANG)[0] == 0
        except ChildProcessError:
            return False

    def forget(self) -> None:
        """Drops this end without touching the process: a copy inherited through a fork, or a reaped helper."""
        self._finalizer.cancel()
        with contextlib.suppress(OSError):
            self.conn.close()


def _stop(conn: Connection, pid: int) -> int | None:
    """Closes the socket, kills and reaps the helper; returns its wait status (None if already reaped)."""
    with contextlib.suppress(OSError):
        conn.close()
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            # Give a helper that is dying anyway (it closed its end) a moment to report why.
            for _ in range(20):
                time.sleep(0.005)
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
        if done == 0:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        return status
    except ChildProcessError:
        return None


def isolate(decoder: Decoder, timeout: float | None) -> Decoder:
    """``decoder`` behind an :class:`IsolatedDecoder` with ``timeout``; itself when the timeout is None.

    Where ``os.posix_spawn`` does not exist (Windows), decoding stays in the
    calling process, with a warning.
    """
    if timeout is None:
        return decoder
    if not hasattr(os, "posix_spawn"):
        logger.warning("data.decode_timeout needs os.posix_spawn, which this platform lacks; decoding in process")
        return decoder
    return IsolatedDecoder(decoder, timeout)


class IsolatedDecoder(Decoder):
    """Runs ``decoder`` in a helper process with a per-video ``timeout``.

    Args:
        decoder: The decoder doing the work (e.g. ``get_decoder("decord")``).
        timeout: Seconds one video may take, open to last frame.

    A crash or timeout raises :class:`DecodeError` for that file only; the
    next read starts a new helper. Needs ``os.posix_spawn`` (Linux, macOS).
    """

    def __init__(self, decoder: Decoder, timeout: float) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if not hasattr(os, "posix_spawn"):
            raise RuntimeError("decoding in a helper process (data.decode_timeout) needs os.posix_spawn; set it to null")
        self.decoder, self.timeout = decoder, float(timeout)
        self.name = decoder.name
        self._helper: _Helper | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_helper"] = None  # a helper belongs to the process that started it
        return state

    def read(self, path: str | Path, select: IndexSelector) -> tuple[torch.Tensor, np.ndarray]:
        helper = self._helper
        # A helper inherited through a fork belongs to the parent; one that died
        # between videos (e.g. its thread ended) is no video's fault. Start anew.
        if helper is not None and (helper.owner != os.getpid() or not helper.alive()):
            helper.forget()
            helper = None
        try:
            if helper is None:
                helper = self._helper = _Helper(self.decoder)
            return helper.read(str(path), select, self.timeout)
        except _HelperLost as exc:
            self._helper = None
            raise DecodeError(path, exc.reason) from None

    def close(self) -> None:
        """Stops this process's helper (a later read starts a new one)."""
        helper, self._helper = self._helper, None
        if helper is not None and helper.owner == os.getpid():
            helper._finalizer()
