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
(``OUT/.prepare/journal.jsonl``), so an interrupted run continues where it
stopped and a finished one does nothing again but rewrite the CSVs.
"""

from __future__ import annotations

import csv
import faulthandler
import hashlib
import json
import logging
import multiprocessing
import os
import re
import signal
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from fractions import Fraction
from multiprocessing.connection import Connection, wait
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import AnnotationError, DecodeError
from .annotations import read_annotations
from .frame_index import FrameIndex, build_frame_index, get_frame_index, save_sidecar
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
            jobs.append(Job(record.path, str(dst), split, label, youtube_id, start, end))
    return jobs, missing


def _safe(label: str) -> str:
    return re.sub(r"[/\\\0]", "_", label) or "_"


def prepare_one(job: Job, options: Options) -> dict:
    """Indexes (and re-encodes) one video; returns its journal entry. Never raises for a bad video."""
    entry = {**asdict(job), "broken": None}
    try:
        # without re-encoding, the index goes to the cache (VIDEO_SWIN_INDEX_CACHE): SRC may be read-only
        index = build_frame_index(job.src) if options.reencode else get_frame_index(job.src)
        if options.reencode:
            transcode(job.src, job.dst, index, options)
            prepared = build_frame_index(job.dst)
            if len(prepared) != len(index):
                Path(job.dst).unlink(missing_ok=True)
                raise DecodeError(job.src, f"re-encoding gave {len(prepared)} frames instead of {len(index)}")
            save_sidecar(prepared, job.dst)
            index = prepared
        entry.update(frames=len(index), seconds=float(index.seconds(np.array([len(index) - 1]))[0]))
    except DecodeError as exc:
        entry["broken"] = exc.reason
    except Exception as exc:  # noqa: BLE001  (anything FFmpeg raises about one file is that file's problem)
        entry["broken"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return entry


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
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{dst}.tmp-{os.getpid()}"
    try:
        with av.open(src, metadata_errors="ignore") as inp, av.open(tmp, "w", format="mp4") as out:
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
                    upright = np.ascontiguousarray(np.rot90(frame.to_ndarray(format="rgb24"), k))
                    new = av.VideoFrame.from_ndarray(upright, format="rgb24").reformat(width, height, "yuv420p")
                else:
                    new = frame.reformat(width, height, "yuv420p")
                new.pts = (frame.pts - first) if index.timestamps and frame.pts is not None else count
                new.pict_type = av.video.frame.PictureType.NONE  # the source's I-frames must not force keyframes
                new.time_base = time_base
                out.mux(enc.encode(new))
            out.mux(enc.encode())
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- worker processes: a crash or hang costs one file --------------------------------------------


def _worker(conn: Connection, options: Options) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    faulthandler.disable()  # a crash is reported by the parent in one line, not as a stack dump
    while True:
        job = conn.recv()
        if job is None:
            return
        conn.send(prepare_one(job, options))


class _Pool:
    """``jobs`` worker processes fed one job at a time; a dead or hung worker is replaced."""

    def __init__(self, jobs: int, options: Options, timeout: float) -> None:
        self.ctx = multiprocessing.get_context("fork")
        self.options, self.timeout = options, timeout
        self.workers: list[list] = [self._start() for _ in range(jobs)]  # [process, conn, job, started]

    def _start(self) -> list:
        parent, child = self.ctx.Pipe()
        process = self.ctx.Process(target=_worker, args=(child, self.options), daemon=True)
        process.start()
        child.close()
        return [process, parent, None, 0.0]

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
                    process.kill()
                    process.join()
                    self.workers[i] = self._start()
                    busy -= 1
                    yield {**asdict(job), "broken": reason}

    def close(self) -> None:
        for _, conn, *_ in self.workers:
            try:
                conn.send(None)
            except OSError:
                pass
        for process, *_ in self.workers:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()


# -- the command ---------------------------------------------------------------------------------


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
) -> dict[str, int]:
    """Prepares ``src`` into ``out`` (see the module's docstring); returns counts per outcome.

    With ``shards``, the counts also hold ``shards``: the number of shard files written or kept.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise AnnotationError(f"{src}: not a folder")
    if short_side < 2 or keyframe_interval < 1:
        raise ValueError("--short-side must be >= 2 and --keyframe-interval >= 1")
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    splits = find_splits(src, annotations)
    all_jobs, missing = plan_jobs(src, out if reencode else src, splits)
    journal_file = out / ".prepare" / "journal.jsonl"
    journal_file.parent.mkdir(parents=True, exist_ok=True)
    settings = {"short_side": short_side, "keyframe_interval": keyframe_interval, "reencode": reencode}
    done = _read_journal(journal_file, settings)
    todo = [job for job in all_jobs if _key(job) not in done]
    options = Options(short_side=short_side, keyframe_interval=keyframe_interval, reencode=reencode)
    if todo:
        logger.info("%d videos to prepare (%d already done) with %s", len(todo), len(all_jobs) - len(todo),
                    f"{jobs or os.cpu_count()} processes")  # fmt: skip
        pool = _Pool(max(1, min(jobs or os.cpu_count() or 1, len(todo))), options, timeout)
        try:
            with open(journal_file, "a", encoding="utf-8") as journal:
                if journal.tell() == 0:
                    journal.write(json.dumps({"settings": settings}) + "\n")
                for entry in tqdm(pool.run(todo), total=len(todo), desc="prepare", unit="video"):
                    journal.write(json.dumps(entry) + "\n")
                    journal.flush()
                    done[_key(entry)] = entry
        finally:
            pool.close()
    entries = [done[_key(job)] for job in all_jobs]
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


def _key(job: Job | dict) -> str:
    src = job.src if isinstance(job, Job) else job["src"]
    return src


def _read_journal(path: Path, settings: dict) -> dict[str, dict]:
    if not path.exists():
        return {}
    done: dict[str, dict] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interruption: that video is done again
            if n == 0 and "settings" in entry:
                if entry["settings"] != settings:
                    raise AnnotationError(
                        f"{path.parent.parent} was prepared with {entry['settings']}, now {settings}: "
                        "use another output folder or delete it"
                    )
                continue
            done[entry["src"]] = entry
    return done


def _write_tables(out: Path, entries: list[dict], missing: list[tuple[str, str]], splits: dict) -> dict[str, int]:
    counts = {"prepared": 0, "broken": len(missing)}
    for split in splits:
        rows = [e for e in entries if e["split"] == split and not e["broken"]]
        counts["prepared"] += len(rows)
        _write_csv(out / f"{split}.csv", ["label", "youtube_id", "time_start", "time_end", "split"],
                   [[e["label"], e["youtube_id"], e["time_start"], e["time_end"], split] for e in rows])  # fmt: skip
    broken = [(e["src"], e["broken"]) for e in entries if e["broken"]] + missing
    counts["broken"] = len(broken)
    _write_csv(out / "broken.csv", ["path", "reason"], [list(b) for b in broken])
    return counts


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)
