"""Hostile ``prepare_one`` stand-ins for the prepare tests.

The workers are started by a fork server, not forked from the test, so a monkeypatched function
reaches them only by name: these live in a module the workers can import.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from video_swin.data.prepare import prepare_one


def crash_or_hang(job, options):
    """Crashes on one file of tests/data/test_prepare.py's layout, hangs on another."""
    if job.src.endswith("abcdefghijk_000010_000020.mp4"):
        os.kill(os.getpid(), signal.SIGSEGV)
    if job.src.endswith("bbbbbbbbbbb_000000_000010.avi"):
        time.sleep(60)
    return prepare_one(job, options)


def slow(job, options):
    """Notes this worker's pid in $PREPARE_PIDS (a folder), then takes a long time."""
    Path(os.environ["PREPARE_PIDS"], str(os.getpid())).touch()
    time.sleep(600)
    return prepare_one(job, options)
