"""WebDataset tar shards: writing them (``video-swin prepare --shards``) and streaming them (``data.shards``).

A shard is a tar file written with the ``webdataset`` library, one sample per
video: ``<key>.mp4`` (the encoded video as prepared), ``<key>.index.npz`` (its
frame index, :mod:`~video_swin.data.frame_index`, so reading never rebuilds
it) and ``<key>.json`` (label name, relative path, youtube_id, times, frame
count). ``OUT/shards/{split}.json`` (the manifest, written last) lists the
shards with their samples' keys, paths and labels.

Reading (:class:`ShardDataset`) is deterministic by construction:

* **Training**, per (seed, epoch): the shards are permuted with a seeded RNG
  and their samples concatenated into one global sequence of N samples. Rank
  ``r`` of ``world`` gets the contiguous slice ``[r L, (r + 1) L)`` with
  ``L = batches_per_rank * B``, ``batches_per_rank = floor(N / (world B
  grad_accum)) * grad_accum`` (the rest is dropped, like ``drop_last``; the
  permutation changes every epoch, so other samples are dropped each time).
  Within a rank, DataLoader worker role ``w`` of ``nw`` gets a contiguous run
  of whole batches (the lower roles one more where they differ), and torch's
  DataLoader yields the rank's batch ``k`` from role ``k % nw``: the rank's
  batch order is a function of (seed, epoch, rank, world, B, nw) only. Each
  role passes its samples through a shuffle buffer (raw bytes, seeded by
  (seed, epoch, rank, role)); decoding comes after the buffer.
* **Resume after K batches of an epoch**: worker ``w`` of the new loader
  plays role ``(w + K) % nw`` and each role drops, undecoded, the
  ``K // nw + (role < K % nw)`` batches it had produced: the remaining
  batches are those of the uninterrupted run.
* **Per-sample randomness** (clip position, augmentation) is
  :class:`~video_swin.data.VideoDataset`'s, seeded by (seed, epoch, the
  video's stable index): the index of the video in the manifest's order,
  the same whatever the rank, worker or shard permutation.
* **Evaluation**: no permutation; rank ``r`` gets a contiguous slice of the
  stable order, every rank yields the same number of batches (the slice is
  padded with repeats of its last video, which evaluation counts once by
  ``"index"``), so collective gathers never wait for a rank that has finished.

Shard locations (``data.shards``) are the folder ``prepare --shards`` wrote
(``OUT/shards``: each split's ``{split}-NNNNNN.tar`` are found in it), local paths, brace patterns
(``/data/shards/{split}-{000000..000099}.tar``, ``{split}`` being ``train``
or ``val``), local glob patterns, ``pipe:`` commands and URLs: those
``webdataset``'s ``gopen`` opens (``http(s)://``, ``gs://``, ``hf://``, ...),
and any other scheme (``s3://``, ...) through ``fsspec``.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..config import is_shard_folder
from ..errors import ConfigError, ResumeError, ShardError, ShardLocationError, first_line
from .broken import FAILURES, DecodeFailure
from .dataset import read_views  # VideoDataset's sampling and transform, shared
from .decoder_base import DecodeError, Decoder
from .decoders import get_decoder
from .frame_index import SIDECAR_SUFFIX, build_frame_index, save_sidecar
from .transforms import ClipTransform

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1
DEFAULT_SHARD_SIZE = 256
SHUFFLE_SEED = 20240  # the order of the samples in the shards prepare writes
INDEX_EXT = "index.npz"  # the sidecar's member name in a sample: <key>.index.npz
_MTIME = 0.0  # tar member times: the same bytes on every run


# -- writing -----------------------------------------------------------------------------------


def write_shards(out: str | Path, split: str, entries: Sequence[dict], *, root: str | Path,
                 shard_size: int = DEFAULT_SHARD_SIZE, seed: int = SHUFFLE_SEED,
                 settings: dict | None = None) -> dict:
    """Writes ``out/{split}-%06d.tar`` and ``out/{split}.json``; returns the manifest.

    Args:
        out: The shard folder (``OUT/shards``).
        split: The split name.
        entries: The split's prepared videos: dicts with ``path`` (the video file),
            ``label``, ``youtube_id``, ``time_start``, ``time_end``, ``frames`` and
            ``src`` (the original file).
        root: What the ``path`` of a sample's metadata is relative to.
        shard_size: Samples per shard (the last one may hold fewer).
        seed: Seed of the order of the samples (shuffled once, here).
        settings: More settings to record in the manifest (how the videos were prepared).

    The shards are written under temporary names and renamed, the manifest
    last; a rerun with the same inputs and settings finds the manifest and
    its shards as they were and writes nothing.
    """
    import webdataset as wds  # only prepare and shard reading need it

    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    out, root = Path(out), Path(root)
    entries = sorted(entries, key=lambda e: str(e["path"]))
    order = np.random.default_rng(seed).permutation(len(entries))
    entries = [entries[i] for i in order]
    stats = [(str(e["path"]), os.path.getsize(e["path"]), os.stat(e["path"]).st_mtime_ns) for e in entries]
    settings = {**(settings or {}), "shard_size": shard_size, "seed": seed}
    fingerprint = hashlib.sha256(json.dumps([stats, settings]).encode()).hexdigest()
    manifest_file = out / f"{split}.json"
    old = _read_json(manifest_file)
    if old and old.get("fingerprint") == fingerprint and all(
            (out / s["name"]).is_file() and (out / s["name"]).stat().st_size == s["bytes"] for s in old["shards"]):
        return old
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = []
    for number, first in enumerate(range(0, len(entries), shard_size)):
        name = f"{split}-{number:06d}.tar"
        tmp = out / f".{name}.tmp-{os.getpid()}"
        info: dict[str, list] = {"keys": [], "paths": [], "labels": []}
        try:
            with open(tmp, "wb") as f, wds.TarWriter(f, encoder=False, mtime=_MTIME) as tar:
                for position, entry in enumerate(entries[first:first + shard_size], start=first):
                    key = f"{position:09d}"
                    rel = os.path.relpath(entry["path"], root)
                    meta = {"label": entry["label"], "path": rel, "source": entry.get("src"),
                            "youtube_id": entry.get("youtube_id"), "time_start": entry.get("time_start"),
                            "time_end": entry.get("time_end"), "frames": entry.get("frames"), "split": split}
                    tar.write({"__key__": key, "mp4": Path(entry["path"]).read_bytes(),
                               INDEX_EXT: _sidecar_bytes(entry["path"]), "json": json.dumps(meta).encode()})
                    info["keys"].append(key)
                    info["paths"].append(rel)
                    info["labels"].append(entry["label"])
            os.replace(tmp, out / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        shards.append({"name": name, "count": len(info["keys"]), "bytes": (out / name).stat().st_size, **info})
    manifest = {"version": MANIFEST_VERSION, "split": split, "total": len(entries), "num_shards": len(shards),
                "settings": settings, "fingerprint": fingerprint,
                "classes": sorted({e["label"] for e in entries}), "shards": shards}
    _write_json(manifest_file, manifest)
    written = {s["name"] for s in shards}
    # left by an earlier, larger run: only the shards its manifest lists (a tar of the same pattern that
    # no manifest lists was not written here, and is left alone)
    earlier = {s.get("name") for s in old.get("shards", []) if isinstance(s, dict)} if isinstance(old, dict) else set()
    for stale in out.glob(f"{split}-[0-9][0-9][0-9][0-9][0-9][0-9].tar"):
        if stale.name not in written and stale.name in earlier and not stale.is_symlink():
            stale.unlink()
    return manifest


def _sidecar_bytes(video: str | Path) -> bytes:
    """The bytes of ``video``'s frame index sidecar (built in a temporary folder where there is none)."""
    sidecar = Path(f"{video}{SIDECAR_SUFFIX}")
    if sidecar.is_file():
        return sidecar.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        build_frame_index(video).save(Path(tmp) / "index.npz", video_size=os.path.getsize(video))
        return (Path(tmp) / "index.npz").read_bytes()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


# -- locating and opening shards ---------------------------------------------------------------

# Schemes webdataset 1.0.2's gopen opens itself; for any other, its default handler only
# raises ("no gopen handler defined"), so those go through fsspec (s3://, az://, ...).
_GOPEN_SCHEMES = {"", "file", "pipe", "http", "https", "sftp", "ftps", "scp", "gs", "ais", "htgs", "hf"}


def open_url(url: str):
    """A binary stream of ``url``: webdataset's ``gopen``, or fsspec for the schemes gopen lacks."""
    scheme = urlparse(url).scheme
    if len(scheme) <= 1 or scheme in _GOPEN_SCHEMES:  # "C:" is a drive, not a scheme
        from webdataset.gopen import gopen

        return gopen(url, "rb")
    import fsspec

    return fsspec.open(url, "rb").open()


def split_pattern(shards: str) -> str:
    """``data.shards`` as a pattern holding ``{split}``: a folder becomes ``FOLDER/{split}-NNNNNN.tar``
    (the names :func:`write_shards` gives); a pattern or URL is returned as it is."""
    if not is_shard_folder(shards):
        return shards
    return os.path.join(glob.escape(os.path.expanduser(shards)), "{split}-" + "[0-9]" * 6 + ".tar")


def expand_pattern(pattern: str, split: str) -> list[str]:
    """The shard URLs of ``split``: ``{split}`` replaced, braces expanded, local globs resolved.

    ``pattern`` may also be the folder ``prepare --shards`` wrote (see :func:`split_pattern`).

    Raises:
        ShardLocationError: The pattern (or folder) names no shard, or local files that do not exist.
    """
    from braceexpand import braceexpand

    if is_shard_folder(pattern) and not os.path.isdir(os.path.expanduser(pattern)):
        what = "a file, not" if os.path.exists(os.path.expanduser(pattern)) else "not"
        raise ShardLocationError(f"data.shards: {pattern!r} is {what} a folder of shards; give the folder "
                                 f"video-swin prepare --shards wrote (OUT/shards) or a pattern holding {{split}}")
    urls: list[str] = []
    for url in braceexpand(split_pattern(pattern).replace("{split}", split)):
        local = not urlparse(url).scheme or len(urlparse(url).scheme) == 1
        if local and glob.has_magic(url):
            urls += sorted(glob.glob(os.path.expanduser(url)))
        else:
            urls.append(os.path.expanduser(url) if local else url)
    if not urls and is_shard_folder(pattern):
        raise ShardLocationError(f"data.shards: the folder {pattern!r} holds no shard of the {split} split "
                                 f"({split}-000000.tar, ... as video-swin prepare --shards writes them)")
    if not urls:
        raise ShardLocationError(f"data.shards: {pattern!r} matches no shard of the {split} split; give the "
                                 "folder video-swin prepare --shards wrote or a pattern of existing shards")
    missing = [u for u in urls if (not urlparse(u).scheme or len(urlparse(u).scheme) == 1) and not os.path.isfile(u)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ShardLocationError(f"data.shards: {pattern!r}: no shard {missing[0]}{more} for the {split} split")
    return urls


def manifest_url(shard_url: str, split: str) -> str | None:
    """Where the manifest of a split lies: the shard's file name in the URL (or command) replaced by ``{split}.json``."""
    matches = list(re.finditer(r"[^/\s'\"]+\.tar\b", shard_url))
    if not matches:
        return None
    m = matches[-1]
    return shard_url[:m.start()] + f"{split}.json" + shard_url[m.end():]


def _basename(url: str) -> str:
    matches = list(re.finditer(r"[^/\s'\"]+\.tar\b", url))
    return matches[-1].group(0) if matches else url


def read_shard(url: str, expected: int | None = None) -> Iterator[dict]:
    """The raw samples of one shard, in file order: dicts of ``__key__`` and bytes per extension.

    Raises:
        ShardError: The shard cannot be opened or read (naming it and why), a
            sample lacks its ``mp4`` or ``json``, or the shard holds another
            number of samples than ``expected``.
    """
    from webdataset.tariterators import group_by_keys, tar_file_expander

    try:
        stream = _Counted(open_url(url))
    except Exception as exc:
        raise _unreadable(url, exc) from exc
    count = 0
    try:
        for sample in group_by_keys(tar_file_expander([{"url": url, "stream": stream}])):
            missing = [ext for ext in ("mp4", "json") if ext not in sample]
            if missing:
                raise ShardError(f"{url}: damaged shard: sample {sample.get('__key__')!r} has no "
                                 f"{' or '.join(missing)} (or not a shard video-swin prepare wrote){_REWRITE}")
            count += 1
            yield sample
    except ShardError:
        raise
    except Exception as exc:
        if stream.bytes == 0:  # not a damaged shard: nothing came (unreachable, a failed command, empty)
            raise _unreadable(url, exc, nothing=True) from exc
        raise ShardError(f"{url}: damaged shard after {count} samples ({first_line(exc)}){_REWRITE}") from exc
    finally:
        try:
            stream.close()
        except Exception as exc:  # noqa: BLE001  (a pipe closed early may report its status; what was read is good)
            logger.debug("closing %s: %s", url, exc)
    if expected is not None and count != expected:
        raise ShardError(f"{url}: {count} samples where the manifest lists {expected}: the shard is damaged "
                         f"or was replaced since the manifest was written{_REWRITE}")


_REWRITE = "; write the shards again (video-swin prepare --shards)"


class _Unreadable(ShardError):
    """Nothing could be read from a shard: not reachable, or empty (a location error when a run starts)."""


class _Counted:
    """A binary stream that counts the bytes read from it (an unreachable URL gives none: curl failed)."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.bytes = stream, 0

    def read(self, *args: Any) -> bytes:
        data = self.stream.read(*args)
        self.bytes += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _unreadable(url: str, exc: BaseException, nothing: bool = False) -> ShardError:
    reason = "no data came: unreachable, a failed command or an empty file" if nothing else first_line(exc)
    return _Unreadable(f"{url}: cannot read this shard ({reason})")


@dataclasses.dataclass(frozen=True)
class ShardRecord:
    """One video of a shard set, in the stable order (the manifest's)."""

    path: str  # the relative path the metadata gives (what reports name)
    label: str
    key: str


@dataclasses.dataclass(frozen=True)
class ShardSet:
    """The shards of one split and what is in them, in the order of the pattern."""

    urls: tuple[str, ...]
    counts: tuple[int, ...]
    records: tuple[ShardRecord, ...]

    @property
    def offsets(self) -> np.ndarray:
        """Stable index of each shard's first sample: ``int64[len(urls) + 1]``."""
        return np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)])

    @property
    def fingerprint(self) -> str:
        """What identifies the set for a resume: shard names and counts."""
        return hashlib.sha256(json.dumps([[_basename(u), c] for u, c in zip(self.urls, self.counts)]).encode()
                              ).hexdigest()[:16]

    @classmethod
    def find(cls, pattern: str, split: str) -> ShardSet:
        """Expands ``pattern`` for ``split`` and reads the manifest beside the shards (one pass over them without)."""
        urls = expand_pattern(pattern, split)
        where = manifest_url(urls[0], split)
        manifest = None
        if where is not None:
            try:
                with open_url(where) as f:
                    manifest = json.loads(f.read())
            except Exception as exc:  # noqa: BLE001  (no manifest: counted below)
                logger.debug("no manifest at %s (%s)", where, exc)
        by_name = {s["name"]: s for s in (manifest or {}).get("shards", [])}
        if manifest and all(_basename(u) in by_name for u in urls):
            shards = [by_name[_basename(u)] for u in urls]
            records = tuple(ShardRecord(p, lab, k) for s in shards
                            for p, lab, k in zip(s["paths"], s["labels"], s["keys"]))
            return cls(tuple(urls), tuple(s["count"] for s in shards), records)
        logger.warning("no manifest for the %s shards of %s (looked for %s); counting their samples in one pass",
                       split, pattern, where)
        counts, records = [], []
        for url in urls:
            n = 0
            for sample in _located(read_shard(url), pattern, split):
                meta = json.loads(sample["json"])
                records.append(ShardRecord(meta.get("path") or sample["__key__"], meta["label"], sample["__key__"]))
                n += 1
            counts.append(n)
        return cls(tuple(urls), tuple(counts), tuple(records))


def _located(samples: Iterator[dict], pattern: str, split: str) -> Iterator[dict]:
    """``samples``, a shard that gives no data at all reported as ``data.shards``'s mistake (exit 2)."""
    try:
        yield from samples
    except _Unreadable as exc:
        raise ShardLocationError(f"data.shards: {pattern!r}: {exc}; check the {split} split's location "
                                 "(path, URL, server)") from exc


# -- the plan: which samples each rank and worker role reads -----------------------------------


def batches_per_rank(num_samples: int, world: int, batch_size: int, grad_accum: int = 1) -> int:
    """Training batches each rank yields per epoch (a multiple of ``grad_accum``; the remainder is dropped)."""
    return num_samples // (world * batch_size * grad_accum) * grad_accum


def role_batches(num_batches: int, num_roles: int, role: int) -> tuple[int, int]:
    """``[first, stop)`` of the rank's batches that ``role`` yields: contiguous, the lower roles one more."""
    base, extra = divmod(num_batches, num_roles)
    first = role * base + min(role, extra)
    return first, first + base + (role < extra)


def skipped_batches(done: int, num_roles: int, role: int) -> int:
    """Batches ``role`` yielded among the rank's first ``done`` (torch takes batch k from role k % num_roles)."""
    return done // num_roles + (role < done % num_roles)


def shard_order(num_shards: int, seed: int, epoch: int) -> np.ndarray:
    """The training permutation of the shards in ``epoch``: ``int64[num_shards]``."""
    return np.random.default_rng([seed, epoch, 4]).permutation(num_shards)


# -- reading -----------------------------------------------------------------------------------


class ShardDataset(IterableDataset):
    """Samples streamed from WebDataset shards, for training or evaluation (see the module's docstring).

    Samples are those of :class:`~video_swin.data.VideoDataset`: ``{"video":
    Tensor[3, T, S, S] (train) or Tensor[V, 3, T, S, S] (val/test), "label":
    int, "index": int (stable index), "path": str (relative path), "valid":
    bool, "failures": list[DecodeFailure]}``.

    A training sample that cannot be decoded is replaced by the previous good
    sample of its worker role (or, for the role's first samples, the next
    good one), logged and listed in the replacement's ``"failures"``; in
    val/test it comes back with ``"valid": False`` and a zero video.

    Args:
        shards: The split's :class:`ShardSet`.
        mode: "train", "val" or "test".
        transform: The spatial recipe (a :class:`ClipTransform` of the mode).
        classes: Class names; a label outside them is an error.
        clip_len, frame_interval, num_clips: As in VideoDataset.
        decoder: Decoder name or instance; ``decode_timeout`` as in VideoDataset.
        seed: Base seed.
        rank, world: This process and the number of processes.
        batch_size: Samples per batch (of each rank).
        grad_accum: Batches per optimizer step (training).
        shuffle_buffer: Raw samples each worker role shuffles among (training; 0 or 1: off).
        max_bad_fraction: As in VideoDataset.
    """

    def __init__(self, shards: ShardSet, mode: str, transform: ClipTransform, classes: Sequence[str], *,
                 clip_len: int = 32, frame_interval: int = 2, num_clips: int = 1,
                 decoder: str | Decoder = "decord", decoder_threads: int = 1, decode_timeout: float | None = None,
                 seed: int = 0, rank: int = 0, world: int = 1, batch_size: int = 1, grad_accum: int = 1,
                 shuffle_buffer: int = 0, max_bad_fraction: float = 0.05) -> None:
        if mode not in ("train", "val", "test"):
            raise ValueError(f"mode must be 'train', 'val' or 'test', got {mode!r}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside a world of {world}")
        self.shards, self.mode, self.transform = shards, mode, transform
        self.classes = list(classes)
        lookup = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted({r.label for r in shards.records} - lookup.keys())
        if unknown:
            raise ConfigError(f"data.shards: labels not in the class list: {', '.join(unknown[:5])}")
        self.labels = [lookup[r.label] for r in shards.records]
        self.records = list(shards.records)
        self.clip_len, self.frame_interval = clip_len, frame_interval
        self.num_clips = 1 if mode == "train" else num_clips
        self.num_crops, self.crop_size = transform.num_views_per_clip, transform.crop_size
        self.seed, self.epoch, self.resume_batches = seed, 0, 0
        self.rank, self.world, self.batch_size, self.grad_accum = rank, world, batch_size, grad_accum
        self.shuffle_buffer, self.max_bad_fraction = shuffle_buffer, max_bad_fraction
        self.decoder = get_decoder(decoder, num_threads=decoder_threads, timeout=decode_timeout)
        if mode == "train" and self.num_batches == 0:
            raise ConfigError(
                f"data.shards: {len(self)} training samples are fewer than one step of every process "
                f"({world} processes x batch {batch_size} x {grad_accum} accumulation steps)")

    def __len__(self) -> int:
        """Videos in the shard set (N)."""
        return len(self.records)

    @property
    def num_views(self) -> int:
        return 1 if self.mode == "train" else self.num_clips * self.num_crops

    @property
    def num_batches(self) -> int:
        """Batches this rank yields per epoch (the same on every rank)."""
        if self.mode == "train":
            return batches_per_rank(len(self), self.world, self.batch_size, self.grad_accum)
        per_rank = -(-len(self) // self.world)
        return -(-per_rank // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_resume(self, batches_done: int) -> None:
        """The next iteration starts after the rank's first ``batches_done`` batches of the epoch."""
        if self.mode != "train" and batches_done:
            raise ValueError("only training resumes mid-epoch")
        if not 0 <= batches_done <= self.num_batches:
            raise ResumeError(f"cannot resume after {batches_done} batches of an epoch of {self.num_batches}")
        self.resume_batches = int(batches_done)

    # -- iteration --

    def __iter__(self) -> Iterator[dict]:
        # The resume point is read now, not when the generator first runs (later, without workers).
        return self._iterate(self.resume_batches)

    def _iterate(self, resume_batches: int) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_roles = (info.id, info.num_workers) if info is not None else (0, 1)
        tmp = tempfile.mkdtemp(prefix="video-swin-shard-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        try:
            if self.mode == "train":
                role = (worker + resume_batches) % num_roles
                yield from self._train_role(role, num_roles, skipped_batches(resume_batches, num_roles, role), tmp)
            else:
                yield from self._eval_role(worker, num_roles, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _segments(self, order: Sequence[int], start: int, stop: int) -> Iterator[tuple[int, dict]]:
        """Raw samples at positions ``[start, stop)`` of the concatenation of the shards in ``order``,
        with their stable indices; only the shards overlapping the range are read."""
        offsets, counts = self.shards.offsets, self.shards.counts
        position = 0
        for shard in order:
            count = counts[shard]
            if position + count > start and position < stop:
                skip, take = max(0, start - position), min(count, stop - position)
                for offset, sample in enumerate(read_shard(self.shards.urls[shard], count)):
                    if offset >= take:
                        break
                    if offset >= skip:
                        yield int(offsets[shard]) + offset, sample
            position += count
            if position >= stop:
                return

    def _train_role(self, role: int, num_roles: int, skip_batches: int, tmp: str) -> Iterator[dict]:
        b = self.batch_size
        first, stop = role_batches(self.num_batches, num_roles, role)
        rank_start = self.rank * self.num_batches * b
        order = shard_order(len(self.shards.urls), self.seed, self.epoch)
        raw = self._segments(order, rank_start + first * b, rank_start + stop * b)
        raw = _shuffled(raw, self.shuffle_buffer, np.random.default_rng([self.seed, self.epoch, self.rank, role, 5]))
        skipped: collections.deque = collections.deque(maxlen=8)  # the last raw samples dropped by a resume
        for _ in range(skip_batches * b):
            skipped.append(next(raw))
        last_good: dict | None = None
        waiting: list[DecodeFailure] = []  # failures before the role's first good sample
        for stable, sample in raw:
            try:
                out = self._decode(stable, sample, tmp)
            except DecodeError as exc:
                failure = self._failure(stable, exc)
                if last_good is None and skipped:  # resumed: the uninterrupted run's last good sample
                    last_good = self._last_good(skipped, tmp)
                    skipped.clear()
                if last_good is None:
                    waiting.append(failure)
                    continue
                yield {**last_good, FAILURES: [failure]}
                continue
            for failure in waiting:
                yield {**out, FAILURES: [failure]}
            waiting = []
            last_good = out
            skipped.clear()
            yield out
        if waiting:  # no video of this role could be decoded
            zero = self._zero_video()[0]
            for failure in waiting[:-1]:
                yield self._sample(-1, zero, valid=False, failures=[failure])
            yield self._sample(-1, zero, valid=False, failures=[dataclasses.replace(waiting[-1], gave_up=True)])

    def _last_good(self, skipped: collections.deque, tmp: str) -> dict | None:
        for stable, sample in reversed(skipped):
            try:
                return self._decode(stable, sample, tmp)
            except DecodeError:
                continue
        return None

    def _eval_role(self, role: int, num_roles: int, tmp: str) -> Iterator[dict]:
        n, b = len(self), self.batch_size
        rank_start, rank_stop = self.rank * n // self.world, (self.rank + 1) * n // self.world
        first, stop = role_batches(self.num_batches, num_roles, role)
        start, end = rank_start + first * b, rank_start + stop * b  # positions; past rank_stop: padding
        if start >= end:
            return
        real_stop = min(end, rank_stop)
        if start < real_stop:
            read, pad = (start, real_stop), end - real_stop
        else:  # only padding: the rank's last video (or the set's, for a rank without videos)
            last = rank_stop - 1 if rank_stop > rank_start else n - 1
            read, pad = (last, last + 1), end - start - 1
        out = None
        for stable, sample in self._segments(range(len(self.shards.urls)), *read):
            try:
                out = self._decode(stable, sample, tmp)
            except DecodeError as exc:
                out = self._sample(stable, self._zero_video(), valid=False, failures=[self._failure(stable, exc)])
            yield out
        for _ in range(pad):
            yield out

    # -- decoding --

    def _decode(self, stable: int, sample: dict, tmp: str) -> dict:
        """Decodes one raw sample through a temporary file (and its sidecar index)."""
        video = os.path.join(tmp, f"{sample['__key__']}-{stable}.mp4")
        with open(video, "wb") as f:
            f.write(sample["mp4"])
        sidecar = f"{video}{SIDECAR_SUFFIX}"
        try:
            if INDEX_EXT in sample:
                with open(sidecar, "wb") as f:
                    f.write(sample[INDEX_EXT])
            else:  # index it here, beside the file: never into the disk cache of indexes
                save_sidecar(build_frame_index(video), video)
            train = self.mode == "train"
            views = read_views(self.decoder, video, self.transform, train=train, clip_len=self.clip_len,
                               frame_interval=self.frame_interval, num_clips=self.num_clips,
                               sample_seed=(self.seed, self.epoch, stable, 0) if train else None)
        except DecodeError as exc:
            raise DecodeError(self.records[stable].path, exc.reason) from exc
        finally:
            for path in (video, sidecar):
                try:
                    os.unlink(path)
                except OSError:
                    pass
        return self._sample(stable, views[0] if train else views)

    def _failure(self, stable: int, exc: DecodeError) -> DecodeFailure:
        action = "replaced by another sample" if self.mode == "train" else "reported as not scored"
        log = logger.info if get_worker_info() is not None else logger.warning
        log("cannot decode %s (%s); %s", exc.path, exc.reason, action)
        return DecodeFailure(self.records[stable].path, exc.reason)

    def _zero_video(self) -> torch.Tensor:
        shape = (self.num_views, 3, self.clip_len, self.crop_size, self.crop_size)
        return torch.zeros(shape, dtype=torch.uint8 if self.transform.output == "uint8" else torch.float32)

    def _sample(self, stable: int, video: torch.Tensor, valid: bool = True,
                failures: Sequence[DecodeFailure] = ()) -> dict:
        return {"video": video, "label": self.labels[stable] if stable >= 0 else -1, "index": stable,
                "path": self.records[stable].path if stable >= 0 else "", "valid": valid, FAILURES: list(failures)}

    def resume_info(self) -> dict[str, Any]:
        """What a mid-epoch resume must find unchanged (saved with the training state)."""
        return {"world": self.world, "batch_size": self.batch_size, "grad_accum": self.grad_accum,
                "shards": self.shards.fingerprint}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(mode={self.mode!r}, videos={len(self)}, shards={len(self.shards.urls)}, "
                f"rank={self.rank}/{self.world}, batches={self.num_batches}x{self.batch_size})")


def _shuffled(samples: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """``samples`` through a shuffle buffer of ``size`` (deterministic for a given ``rng``; size <= 1: unchanged)."""
    if size <= 1:
        yield from samples
        return
    buffer: list = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = int(rng.integers(size))
        buffer[i], sample = sample, buffer[i]
        yield sample
    for i in rng.permutation(len(buffer)):
        yield buffer[i]


# -- the loader ----------------------------------------------------------------------------------


class ShardLoader:
    """A DataLoader over a :class:`ShardDataset`, batches moved to ``device``; not for ``accelerator.prepare``.

    accelerate's ``prepare_data_loader`` wraps an IterableDataset in
    ``IterableDatasetShard``, which makes every process read the whole
    dataset and keep its share of each batch; the ShardDataset splits the
    shards between processes itself, so its loader stays unprepared and this
    wrapper does the one thing ``prepare`` would still do: move batches to
    the device.

    Args:
        loader: The DataLoader of a ShardDataset, with the dataset's batch size.
        device: Where batches go (None: left where they are).
    """

    def __init__(self, loader: torch.utils.data.DataLoader, device: torch.device | str | None = None) -> None:
        if not isinstance(loader.dataset, ShardDataset) or loader.batch_size != loader.dataset.batch_size:
            raise ValueError("ShardLoader: expected a DataLoader of a ShardDataset with the dataset's batch size")
        self.loader, self.device = loader, device
        self.dataset: ShardDataset = loader.dataset

    def __len__(self) -> int:
        return self.dataset.num_batches

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def resume_info(self) -> dict[str, Any]:
        return {**self.dataset.resume_info(), "num_workers": self.loader.num_workers}

    def check_resume(self, saved: dict[str, Any] | None) -> None:
        """Refuses a mid-epoch resume whose world size, workers, batch size or shard set changed.

        Raises:
            ResumeError: naming what changed.
        """
        now = self.resume_info()
        if saved is None:
            raise ResumeError("the state to resume from was not saved while training from shards; "
                              "a mid-epoch resume from shards needs one that was")
        changed = [f"{k} {saved.get(k)} -> {v}" for k, v in now.items() if saved.get(k) != v]
        if changed:
            raise ResumeError("cannot resume in the middle of an epoch of shards with other settings: "
                              + "; ".join(changed) + " (resume with the saved ones, or from a state at an epoch's end)")

    def resume_at(self, batches_done: int) -> ShardLoader:
        """This loader, its next iteration starting after the epoch's first ``batches_done`` batches
        (instead of accelerate's ``skip_first_batches``: nothing skipped is decoded)."""
        self.dataset.set_resume(batches_done)
        return self

    def __iter__(self) -> Iterator[Any]:
        from accelerate.utils import send_to_device

        try:
            it = iter(self.loader)  # the workers copy the dataset, resume point included, here
        finally:
            self.dataset.resume_batches = 0  # applies to one iteration
        try:
            for batch in it:
                yield send_to_device(batch, self.device) if self.device is not None else batch
        except ShardError as exc:  # from a worker: torch's message holds the worker's traceback
            raise _from_worker(exc) from None


def _from_worker(exc: ShardError) -> ShardError:
    """The worker's own one-line message of a ShardError that a DataLoader re-raised (``Caught ShardError in
    DataLoader worker process 0.`` and the traceback, the error's line last)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if len(lines) < 2 or not lines[0].startswith("Caught "):
        return exc
    last = re.match(r"[\w.]+: (.*)", lines[-1])  # "video_swin.errors.ShardError: <message>"
    return ShardError(last.group(1) if last else lines[-1])
