"""``video-swin prepare SRC OUT``: check, re-encode and index a video dataset once, before training.

Kinetics as downloaded is ~240,000 files of every size and encoding; the
official recipe trained on videos resized to a short side of 256 (mmaction2
and VideoMAE use 320), and reading is faster and exact-by-construction when
every file is H.264 with a keyframe every few frames. This module:

1. finds the splits of ``SRC`` (``annotations/{train,val,test}.csv`` as the
   common Kinetics download scripts write them, with the videos in split
   folders; or ``{train,val,test}/<class>/...`` class-folder trees; or lists
   given with ``--annotations SPLIT=FILE``: Kinetics CSVs or mmaction lists);
2. handles every video in worker processes (``--jobs``): builds its frame
   index (:mod:`~video_swin.data.frame_index`), re-encodes it with PyAV
   (H.264, short side ``--short-side`` keeping the aspect ratio, a keyframe
   every ``--keyframe-interval`` frames, rotation applied, no audio), checks
   that the new file has as many frames as the old, and stores the new file's
   frame index beside it (``<video>.index.npz``);
3. writes ``OUT/{split}.csv`` in the official Kinetics columns (what the
   training configs read: ``data.root: OUT``), and ``OUT/broken.csv`` (path,
   reason) for the files it could not read;
4. with ``--shards``, also writes WebDataset tar shards of every split,
   ``OUT/shards/{split}-%06d.tar`` (``--shard-size`` videos each, shuffled
   once with a fixed seed) and their manifest ``OUT/shards/{split}.json``
   (:mod:`~video_swin.data.shards`; what ``data.shards`` reads).

A worker that crashes (FFmpeg is native code) or hangs past ``--timeout``
costs its file (listed as broken), not the run. Finished files are journaled
(``OUT/.prepare/journal.jsonl``, keyed by each source's path, size and
modification time), so an interrupted run continues where it stopped and a
finished one does nothing again but rewrite the CSVs; a video that failed is
tried again on the next run (``--skip-failed`` keeps the verdict), and a
replaced or repaired source file is prepared anew. The exit code is 1 when a
video failed for another reason than being a bad video (a timeout, a crashed
worker, an error writing OUT); a full disk stops the run at once, with what is
done kept.

Safety: SRC is only read. OUT must not be SRC, lie inside it or hold it (links
resolved); nothing is written or removed outside OUT (without re-encoding, the
frame indexes go to the project's index cache). One prepare at a time holds
``OUT/.prepare/.lock``. The workers are started by a fork server (a fresh
process, never a fork of the caller: a process that decoded video holds FFmpeg,
OpenMP and torch threads, and a child forked from it can deadlock), end when
the caller ends, however it ends, and hold no other worker's pipe. As with any
spawn-started pool, a script that calls :func:`prepare` keeps its top-level
work under ``if __name__ == "__main__":`` (a notebook or ``python -c`` needs
nothing).
"""

from __future__ import annotations

import csv
import ctypes
import errno
import faulthandler
import hashlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from fractions import Fraction
from multiprocessing.connection import Connection, wait
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import AnnotationError, ConfigError, DecodeError, TrainingError, first_line
from ..outputs import RunLock
from .annotations import read_annotations
from .decoders import _check_file
from .frame_index import FrameIndex, build_frame_index, get_frame_index, save_sidecar
from .processes import worker_context
from .shards import DEFAULT_SHARD_SIZE, write_shards

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "validate", "test")
_KINETICS_NAME = re.compile(r"^(?P<id>.+)_(?P<start>\d{6})_(?P<end>\d{6})$")


@dataclass(frozen=True)
class Job:
    """One source video and where its prepared copy goes."""

    src: str
    dst: str
    split: str
    label: str
    youtube_id: str
    time_start: int
    time_end: int
    size: int = -1  # the source's size and modification time: a changed file is prepared again
    mtime_ns: int = -1


class PrepareStopped(TrainingError):
    """The run cannot go on (the disk of OUT is full, OUT cannot be written); the message says why."""


# What a failed video's journal entry says in ``kind``: a bad video (the file's own problem) or
# anything else (a timeout, a crashed worker, an error writing OUT), which makes the run exit 1.
BAD_VIDEO, FAILED = "bad video", "failed"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class _OutputError(Exception):
    """An OSError while writing OUT (not the source's fault); ``errno`` kept to recognise a full disk."""

    def __init__(self, path: str, exc: OSError) -> None:
        super().__init__(f"cannot write {path}: {exc.strerror or first_line(exc)}")
        self.errno = exc.errno


@dataclass(frozen=True)
class Options:
    short_side: int = 320
    keyframe_interval: int = 16
    crf: int = 23
    reencode: bool = True


def find_splits(src: Path, annotations: dict[str, str] | None = None) -> dict[str, tuple[Path, Path]]:
    """``{split: (annotations, root)}`` for the layouts in the module's docstring."""
    if annotations:
        return {split: (Path(file), src) for split, file in annotations.items()}
    found: dict[str, tuple[Path, Path]] = {}
    for split in SPLITS:
        csv_file = src / "annotations" / f"{split}.csv"
        folder = src / split
        if csv_file.is_file():
            found[split] = (csv_file, folder if folder.is_dir() else src)
        elif folder.is_dir() and any(p.is_dir() for p in folder.iterdir()):
            found[split] = (folder, folder)
    if not found:
        raise AnnotationError(
            f"{src}: no splits found: expected annotations/{{train,val,test}}.csv, "
            "or {train,val,test}/<class>/ folders, or --annotations SPLIT=FILE"
        )
    return found


def plan_jobs(src: Path, out: Path, splits: dict[str, tuple[Path, Path]]) -> tuple[list[Job], list[tuple[str, str]]]:
    """The jobs for every split, and (name, reason) of listed videos that are not there."""
    jobs: list[Job] = []
    missing: list[tuple[str, str]] = []
    for split, (listing, root) in splits.items():
        parsed = read_annotations(listing, root)
        missing += [(name, f"listed in {listing} but not found under {root}") for name in parsed.missing]
        taken: set[str] = set()
        for record in parsed.records:
            label = parsed.classes[record.label] if isinstance(record.label, int) else str(record.label)
            stem = Path(record.path).stem
            match = _KINETICS_NAME.match(stem)
            youtube_id, start, end = (match["id"], int(match["start"]), int(match["end"])) if match else (stem, 0, 0)
            if stem in taken:  # one name per split: the CSV finds files by name
                stem = f"{stem}-{hashlib.sha1(record.path.encode()).hexdigest()[:8]}"
                youtube_id, start, end = stem, 0, 0
            taken.add(stem)
            dst = out / split / _safe(label) / f"{stem}.mp4"
            source = os.path.abspath(record.path)
            try:
                stat = os.stat(source)
                size, mtime_ns = stat.st_size, stat.st_mtime_ns
            except OSError:
                size = mtime_ns = -1  # the worker reports why
            jobs.append(Job(source, str(dst), split, label, youtube_id, start, end, size, mtime_ns))
    return jobs, missing


def _safe(label: str) -> str:
    """A folder name for ``label`` that stays inside its split folder (no separators, never ``.`` or ``..``)."""
    name = re.sub(r"[/\\\0]", "_", label)
    return "_" * max(1, len(name)) if set(name) <= {"."} else name


def prepare_one(job: Job, options: Options) -> dict:
    """Indexes (and re-encodes) one video; returns its journal entry. Never raises for a bad video."""
    entry = {**asdict(job), "broken": None}
    try:
        _check_file(job.src)  # a device or a pipe is never opened: /dev/zero never ends, a pipe blocks
        # without re-encoding, the index goes to the cache (VIDEO_SWIN_INDEX_CACHE): SRC may be read-only
        index = build_frame_index(job.src) if options.reencode else get_frame_index(job.src)
        if options.reencode:
            transcode(job.src, job.dst, index, options)
            prepared = build_frame_index(job.dst)
            if len(prepared) != len(index):
                _output(Path(job.dst).unlink, job.dst, missing_ok=True)
                raise DecodeError(job.src, f"re-encoding gave {len(prepared)} frames instead of {len(index)}")
            _output(save_sidecar, job.dst, prepared, job.dst)
            index = prepared
        entry.update(frames=len(index), seconds=float(index.seconds(np.array([len(index) - 1]))[0]))
    except _OutputError as exc:
        entry.update(broken=str(exc), kind=FAILED, errno=exc.errno)
    except DecodeError as exc:
        entry.update(broken=exc.reason, kind=BAD_VIDEO)
    except Exception as exc:  # noqa: BLE001  (anything FFmpeg raises about one file is that file's problem)
        text = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        entry.update(broken=text, kind=BAD_VIDEO)
    return entry


def _output(write, path: str, *args, **kwargs):
    """``write(*args, **kwargs)``, an OSError becoming an :class:`_OutputError` naming ``path``."""
    try:
        return write(*args, **kwargs)
    except OSError as exc:
        raise _OutputError(path, exc) from exc


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side ``short_side`` (never enlarged), aspect kept, both even."""
    scale = min(1.0, short_side / min(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def transcode(src: str, dst: str, index: FrameIndex, options: Options) -> None:
    """Writes ``src`` as H.264 MP4 to ``dst`` (atomically), frames shown upright, timestamps kept."""
    import av  # noqa: PLC0415

    quarter = (index.rotation // 90) % 2 == 1
    shown_w, shown_h = (index.height, index.width) if quarter else (index.width, index.height)
    width, height = output_size(shown_w, shown_h, options.short_side)
    k = (index.rotation // 90) % 4
    _output(Path(dst).parent.mkdir, dst, parents=True, exist_ok=True)
    tmp = f"{dst}.tmp-{os.getpid()}"
    try:
        with av.open(src, metadata_errors="ignore") as inp, _output(av.open, dst, tmp, "w", format="mp4") as out:
            stream = inp.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate or Fraction(30)
            time_base = Fraction(stream.time_base) if index.timestamps else 1 / Fraction(rate)
            enc = out.add_stream("libx264", rate=rate)
            enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
            enc.codec_context.time_base = time_base
            g = str(options.keyframe_interval)
            enc.options = {"crf": str(options.crf), "preset": "veryfast", "g": g, "keyint_min": g,
                           "threads": "1", "x264-params": "scenecut=0:open-gop=0"}  # fmt: skip
            first = int(index.pts[0]) if index.timestamps else 0
            for count, frame in enumerate(inp.decode(stream)):
                if k:
                    upright = np.ascontiguousarray(np.rot90(frame.to_ndarray(format="rgb24", threads=1), k))
                    new = av.VideoFrame.from_ndarray(upright, format="rgb24").reformat(width, height, "yuv420p", threads=1)
                else:
                    new = frame.reformat(width, height, "yuv420p", threads=1)
                new.pts = (frame.pts - first) if index.timestamps and frame.pts is not None else count
                new.pict_type = av.video.frame.PictureType.NONE  # the source's I-frames must not force keyframes
                new.time_base = time_base
                _output(out.mux, dst, enc.encode(new))
            _output(out.mux, dst, enc.encode())
            _output(out.close, dst)  # writes the index: a full disk shows here
        _output(os.replace, dst, tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- worker processes: a crash or hang costs one file --------------------------------------------
#
# Workers are started by a fork server (spawn where there is none), never forked from the caller: a
# process that has decoded video holds FFmpeg, OpenMP and torch threads, and a child forked from it
# can deadlock in a lock one of them held (libswscale's thread teardown in ``reformat`` did). The
# fork server (:func:`~video_swin.data.processes.worker_context`, shared by the project's pools) is a
# fresh interpreter that imported the data package once (torch included: about 2-3 s, paid once per
# process, not per worker); forking it is cheap and safe.


def _die_with_parent(main_pid: int) -> None:
    """Ends this worker when the process that started it ends (SIGTERM, kill -9, a crash)."""
    parent = os.getppid()  # the fork server (or the caller, with spawn); it exits when the caller does
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch() -> None:  # where prctl is missing, and for a parent that died before prctl ran
        while True:
            try:
                os.kill(main_pid, 0)
                gone = os.getppid() != parent
            except ProcessLookupError:
                gone = True
            except OSError:
                gone = False
            if gone:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True, name="prepare-parent-watch").start()


def _worker(conn: Connection, options: Options, work, main_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    faulthandler.disable()  # a crash is reported by the parent in one line, not as a stack dump
    _die_with_parent(main_pid)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):  # the parent's end is closed: it is gone
            return
        if job is None:
            return
        conn.send(work(job, options))


class _Pool:
    """``jobs`` worker processes fed one job at a time; a dead or hung worker is replaced.

    ``work(job, options)`` runs in the workers; it must be importable by name (it is pickled).
    """

    def __init__(self, jobs: int, options: Options, timeout: float, work=None) -> None:
        self.ctx = worker_context()  # a fork server: see video_swin.data.processes
        self.options, self.timeout = options, timeout
        self.work = work or prepare_one
        self.workers: list[list] = [self._start() for _ in range(jobs)]  # [process, conn, job, started]

    def _start(self) -> list:
        parent, child = self.ctx.Pipe()
        process = self.ctx.Process(target=_worker, args=(child, self.options, self.work, os.getpid()), daemon=True)
        process.start()
        child.close()
        return [process, parent, None, 0.0]

    def _kill(self, worker: list) -> None:
        process, conn, job = worker[0], worker[1], worker[2]
        process.kill()
        process.join()
        conn.close()
        if job is not None:  # its half-written file, inside OUT (see transcode)
            Path(f"{job.dst}.tmp-{process.pid}").unlink(missing_ok=True)

    def run(self, jobs: Iterable[Job]) -> Iterable[dict]:
        pending = list(jobs)[::-1]
        busy = 0
        while pending or busy:
            for worker in self.workers:
                if worker[2] is None and pending:
                    worker[2], worker[3] = pending.pop(), time.monotonic()
                    worker[1].send(worker[2])
                    busy += 1
            conns = [w[1] for w in self.workers if w[2] is not None]
            ready = wait(conns + [w[0].sentinel for w in self.workers if w[2] is not None], timeout=1.0)
            for i, worker in enumerate(self.workers):
                process, conn, job, started = worker
                if job is None:
                    continue
                if conn in ready:
                    try:
                        entry = conn.recv()
                    except (EOFError, OSError):
                        entry = None
                    if entry is not None:
                        worker[2] = None
                        busy -= 1
                        yield entry
                        continue
                reason = None
                if not process.is_alive():
                    code = process.exitcode or 0
                    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                    reason = f"the decoder crashed ({how})"
                elif time.monotonic() - started > self.timeout:
                    reason = f"took longer than {self.timeout:g} s"
                if reason is not None:
                    self._kill(worker)
                    self.workers[i] = self._start()
                    busy -= 1
                    yield {**asdict(job), "broken": reason, "kind": FAILED}

    def close(self, now: bool = False) -> None:
        """Ends the workers: after their current video, or at once (``now``)."""
        if not now:
            for _, conn, *_ in self.workers:
                try:
                    conn.send(None)
                except OSError:
                    pass
            for process, *_ in self.workers:
                process.join(timeout=5)
        for worker in self.workers:
            if worker[0].is_alive() or now:
                self._kill(worker)


# -- the command ---------------------------------------------------------------------------------


def check_folders(src: Path, out: Path) -> None:
    """Refuses an OUT that is SRC, lies inside SRC or holds SRC (links resolved), or is not a folder.

    Prepare writes into OUT and reads SRC: with one inside the other, its outputs would replace or
    become sources (a second run would read its own copies as new videos).
    """
    if not src.is_dir():
        raise AnnotationError(f"{src}: not a folder")
    real_src, real_out = src.resolve(), out.resolve()
    if real_out == real_src:
        raise ConfigError(f"prepare: OUT {out} is SRC {src}; write the prepared copy to a folder outside SRC")
    if real_src in real_out.parents:
        raise ConfigError(f"prepare: OUT {out} lies inside SRC {src} (at {real_out}); choose an OUT outside SRC")
    if real_out in real_src.parents:
        raise ConfigError(f"prepare: SRC {src} lies inside OUT {out} (at {real_src}); choose an OUT outside SRC")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"prepare: OUT {out} is a file, not a folder; choose a folder (new or one prepare wrote)")


def _check_split(split: str) -> None:
    if not re.fullmatch(r"[\w.-]+", split) or set(split) <= {"."}:
        raise ConfigError(f"--annotations: the split name {split!r} is not a plain name (e.g. train, val)")


def prepare(
    src: str | Path,
    out: str | Path,
    *,
    short_side: int = 320,
    keyframe_interval: int = 16,
    jobs: int | None = None,
    reencode: bool = True,
    annotations: dict[str, str] | None = None,
    timeout: float = 600.0,
    shards: bool = False,
    shard_size: int = DEFAULT_SHARD_SIZE,
    skip_failed: bool = False,
) -> dict[str, int]:
    """Prepares ``src`` into ``out`` (see the module's docstring); returns counts per outcome.

    The counts are ``prepared``, ``broken`` (every video listed in broken.csv) and ``failed`` (those
    of them that failed for another reason than being a bad video: a timeout, a crashed worker, an
    error writing OUT). Videos that failed in an earlier run are tried again unless ``skip_failed``.
    With ``shards``, the counts also hold ``shards``: the number of shard files written or kept.

    Raises:
        ConfigError: OUT is SRC, inside it or around it; OUT is a file or cannot be written; another
            prepare holds OUT.
        PrepareStopped: the disk of OUT filled up (what is done stays done: run again with space).
    """
    src, out = Path(src), Path(os.path.abspath(out))
    check_folders(src, out)
    if short_side < 2 or keyframe_interval < 1:
        raise ValueError("--short-side must be >= 2 and --keyframe-interval >= 1")
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    for split in annotations or {}:
        _check_split(split)
    splits = find_splits(src, annotations)
    try:
        (out / ".prepare").mkdir(parents=True, exist_ok=True)
        lock = RunLock(out / ".prepare", subject=f"prepare OUT {out}", advice="choose another OUT")
        lock.acquire()
    except OSError as e:
        raise ConfigError(f"prepare: cannot write to OUT {out} ({e.strerror or e}); choose a writable folder") from e
    try:
        return _prepare_locked(src, out, splits, short_side=short_side, keyframe_interval=keyframe_interval,
                               jobs=jobs, reencode=reencode, timeout=timeout, shards=shards, shard_size=shard_size,
                               skip_failed=skip_failed)  # fmt: skip
    except OSError as e:
        if e.errno in _DISK_FULL:
            raise PrepareStopped(f"prepare: the disk of {out} is full ({first_line(e)}); free space and run "
                                 "prepare again: what is done stays done") from e
        raise ConfigError(f"prepare: cannot write to OUT {out} ({first_line(e)}); choose a writable folder") from e
    finally:
        lock.release()


def _prepare_locked(src: Path, out: Path, splits: dict, *, short_side: int, keyframe_interval: int,
                    jobs: int | None, reencode: bool, timeout: float, shards: bool, shard_size: int,
                    skip_failed: bool) -> dict[str, int]:
    all_jobs, missing = plan_jobs(src, out if reencode else src, splits)
    journal_file = out / ".prepare" / "journal.jsonl"
    settings = {"short_side": short_side, "keyframe_interval": keyframe_interval, "reencode": reencode}
    done = _read_journal(journal_file, settings)

    def finished(job: Job) -> bool:
        entry = done.get(_key(job))
        if entry is None:
            return False
        if entry["broken"]:
            return skip_failed
        return not reencode or Path(job.dst).is_file()  # a prepared copy deleted since: made again

    todo = [job for job in all_jobs if not finished(job)]
    options = Options(short_side=short_side, keyframe_interval=keyframe_interval, reencode=reencode)
    if todo:
        logger.info("%d videos to prepare (%d already done) with %s", len(todo), len(all_jobs) - len(todo),
                    f"{jobs or os.cpu_count()} processes")  # fmt: skip
        pool = _Pool(max(1, min(jobs or os.cpu_count() or 1, len(todo))), options, timeout, prepare_one)
        stopped = True
        try:
            with open(journal_file, "a", encoding="utf-8") as journal:
                if journal.tell() == 0:
                    journal.write(json.dumps({"settings": settings}) + "\n")
                for entry in tqdm(pool.run(todo), total=len(todo), desc="prepare", unit="video"):
                    if entry.get("errno") in _DISK_FULL:  # not the video's fault: it stays to do
                        raise OSError(entry["errno"], f"{os.strerror(entry['errno'])}; writing {entry['dst']}")
                    journal.write(json.dumps(entry) + "\n")
                    journal.flush()
                    done[_key(entry)] = entry
            stopped = False
        finally:
            pool.close(now=stopped)
    job_fields = ("src", "dst", "split", "label", "youtube_id", "time_start", "time_end")
    entries = [{**done[_key(job)], **{f: getattr(job, f) for f in job_fields}} for job in all_jobs]
    counts = _write_tables(out, entries, missing, splits)
    if shards:
        counts["shards"] = _write_all_shards(src, out, entries, splits, settings, shard_size)
    return counts


def _write_all_shards(src: Path, out: Path, entries: list[dict], splits: dict, settings: dict,
                      shard_size: int) -> int:
    """The shards of every split (see :func:`~video_swin.data.shards.write_shards`); returns how many."""
    reencode = settings["reencode"]
    root = out if reencode else src
    total = 0
    for split in splits:
        rows = [{**e, "path": e["dst"] if reencode else e["src"]}
                for e in entries if e["split"] == split and not e["broken"]]
        manifest = write_shards(out / "shards", split, rows, root=root, shard_size=shard_size, settings=settings)
        logger.info("%s: %d videos in %d shards under %s", split, manifest["total"], manifest["num_shards"],
                    out / "shards")
        total += manifest["num_shards"]
    return total


def _key(job: Job | dict) -> tuple[str, int, int]:
    """A video is known by its path, size and modification time: a replaced or repaired file is new."""
    if isinstance(job, Job):
        return job.src, job.size, job.mtime_ns
    return job["src"], job.get("size", -1), job.get("mtime_ns", -1)


_ENTRY_KEYS = {"src": str, "dst": str, "split": str, "label": str, "youtube_id": str}


def _read_journal(path: Path, settings: dict) -> dict[tuple, dict]:
    """The entries of ``path`` by key; a line that is not an entry is skipped with a warning naming it."""
    if not path.exists():
        return {}
    done: dict[tuple, dict] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ConfigError(f"prepare: cannot read the journal {path} ({e.strerror or e}); delete it to start again")
    for n, line in enumerate(lines):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry = None
        if n == 0 and isinstance(entry, dict) and "settings" in entry:
            if entry["settings"] != settings:
                raise AnnotationError(
                    f"{path.parent.parent} was prepared with {entry['settings']}, now {settings}: "
                    "use another output folder or delete it"
                )
            continue
        valid = isinstance(entry, dict) and all(isinstance(entry.get(k), t) for k, t in _ENTRY_KEYS.items())
        valid = valid and (entry.get("broken") is None or isinstance(entry["broken"], str))
        valid = valid and (entry.get("broken") is not None or isinstance(entry.get("frames"), int))
        if not valid:  # e.g. a line cut by an interruption: that video is done again
            logger.warning("%s, line %d: not a journal entry (%s), skipped: that video is prepared again",
                           path, n + 1, line[:60] + ("..." if len(line) > 60 else ""))
            continue
        entry.setdefault("kind", BAD_VIDEO if entry["broken"] else None)
        done[_key(entry)] = entry
    return done


def _write_tables(out: Path, entries: list[dict], missing: list[tuple[str, str]], splits: dict) -> dict[str, int]:
    counts = {"prepared": 0, "broken": len(missing), "failed": 0}
    for split in splits:
        rows = [e for e in entries if e["split"] == split and not e["broken"]]
        counts["prepared"] += len(rows)
        _write_csv(out / f"{split}.csv", ["label", "youtube_id", "time_start", "time_end", "split"],
                   [[e["label"], e["youtube_id"], e["time_start"], e["time_end"], split] for e in rows])  # fmt: skip
    broken = [(e["src"], e["broken"]) for e in entries if e["broken"]] + missing
    counts["broken"] = len(broken)
    counts["failed"] = sum(1 for e in entries if e["broken"] and e.get("kind") == FAILED)
    _write_csv(out / "broken.csv", ["path", "reason"], [list(b) for b in broken])
    return counts


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)
