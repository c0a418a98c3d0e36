"""Fetching a published file into the cache, once, whole and checked.

Why not ``torch.hub.download_url_to_file``: it does write a temporary file
and rename it, and checks a hash prefix, but it reads the body with
``http.client``'s ``read(n)``, which returns short without an error when
the connection drops before ``Content-Length`` bytes. For the official
Swin files, which have no published hash, a cut download would then sit in
the cache as if complete. The lines below add that length check and a full
sha256; the rest (temporary file in the cache folder, ``os.replace``, tqdm
progress) is the same idea.

What may enter the cache is checked before it is moved there:

* the whole download has a deadline (``VIDEO_SWIN_DOWNLOAD_TIMEOUT`` seconds,
  default 3600) as well as a limit per read (60 s), so a server that drips a
  byte now and then fails instead of hanging forever;
* the announced size (``Content-Length``) must fit the free disk space, stay
  under ``VIDEO_SWIN_DOWNLOAD_MAX_BYTES`` (default 4 GiB) and equal the
  catalog's size where it gives one, before a byte is written; without an
  announced size the stream is cut at the same bounds;
* an HTML page (a server's error or sign-in page sent with status 200) is
  refused; the file must load as weights (safetensors, or
  ``torch.load(weights_only=True)``) and pass the caller's checks (layout).

A cached file that fails its checks is named with the command to remove it;
with ``VIDEO_SWIN_REDOWNLOAD=1`` it is removed and downloaded again, once.
Temporary ``*.partial`` files are removed on every exit path: errors, Ctrl-C,
SIGTERM and SIGHUP (the signal then ends the process as it would have), and
those a killed process left behind are swept by the next download.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import shutil
import signal
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)
_CHUNK = 1 << 20
_TRUE = ("1", "true", "yes", "on")
READ_TIMEOUT = 60.0  # seconds without a byte before a read fails
DEFAULT_DEADLINE = 3600.0  # seconds for a whole download
DEFAULT_MAX_BYTES = 4 << 30  # the largest published file (Swin-L, ImageNet-22K) is under 1 GiB
_FREE_MARGIN = 64 << 20  # what a download leaves free on the cache's disk
# A live download writes at least once per READ_TIMEOUT; a *.partial untouched for this long is a dead one's.
_STALE_PARTIAL = 15 * 60
_WEIGHT_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive; the legacy pickle format


def cache_dir() -> Path:
    """Where downloaded weights live: ``$VIDEO_SWIN_CACHE/weights`` (default ``~/.cache/video-swin/weights``)."""
    root = os.environ.get("VIDEO_SWIN_CACHE") or "~/.cache/video-swin"
    return Path(root).expanduser() / "weights"


def offline() -> bool:
    """True when ``VIDEO_SWIN_OFFLINE`` or ``HF_HUB_OFFLINE`` is set: the network is never used."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("VIDEO_SWIN_OFFLINE", "HF_HUB_OFFLINE"))


def redownload_bad_cache() -> bool:
    """True when ``VIDEO_SWIN_REDOWNLOAD`` is set: a cached file that fails its checks is downloaded again, once."""
    return os.environ.get("VIDEO_SWIN_REDOWNLOAD", "").strip().lower() in _TRUE


def _env_number(name: str, default: float, kind: type = float) -> Any:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = kind(float(value))
    except ValueError:
        number = 0
    if not number > 0:
        raise ConfigError(f"{name}={value!r}: expected a number > 0")
    return number


def download_deadline() -> float:
    """Seconds a whole download may take: ``$VIDEO_SWIN_DOWNLOAD_TIMEOUT``, default 3600."""
    return _env_number("VIDEO_SWIN_DOWNLOAD_TIMEOUT", DEFAULT_DEADLINE)


def max_download_bytes() -> int:
    """The largest file a download accepts: ``$VIDEO_SWIN_DOWNLOAD_MAX_BYTES``, default 4 GiB."""
    return _env_number("VIDEO_SWIN_DOWNLOAD_MAX_BYTES", DEFAULT_MAX_BYTES, int)


def source_url(url: str, file: str) -> str:
    """``url``, or ``$VIDEO_SWIN_WEIGHTS_URL`` + ``file`` when a mirror is set."""
    base = os.environ.get("VIDEO_SWIN_WEIGHTS_URL")
    return base.rstrip("/") + "/" + file if base else url


def bad_cache_message(path: Path, why: str) -> str:
    """One line naming a cached file that cannot be used, why, and how to get a good copy."""
    return (f"{path}: the cached weights cannot be used ({why}); remove the file (rm {shlex.quote(str(path))}) "
            f"and run again to download it anew, or set VIDEO_SWIN_REDOWNLOAD=1 to have a bad cached file "
            f"replaced automatically")


def discard_cached(path: Path) -> None:
    """Removes a bad cached file (for ``VIDEO_SWIN_REDOWNLOAD``); a read-only cache is named."""
    log.warning("%s fails its checks; VIDEO_SWIN_REDOWNLOAD is set: downloading it again", path)
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        raise _unwritable(path.parent, e) from None


def fetch(
    url: str,
    file: str,
    sha256: str | None = None,
    *,
    progress: bool = True,
    size: int | None = None,
    verify: Callable[[dict[str, Any], str], None] | None = None,
    deadline: float | None = None,
) -> Path:
    """The cached copy of ``file``, downloaded from ``url`` (or the mirror) first if absent.

    Args:
        url: the publisher's URL (replaced by ``$VIDEO_SWIN_WEIGHTS_URL/file`` when set).
        file: name in the cache.
        sha256: full hex digest or a prefix of it; None when nothing is published.
        progress: show a tqdm bar (when tqdm is installed).
        size: the file's size in bytes when the catalog knows it.
        verify: called with the downloaded state dict and the URL before the file
            enters the cache; raises CheckpointError to refuse it (e.g. another layout).
        deadline: seconds the whole download may take (default :func:`download_deadline`).

    Raises:
        CheckpointError: offline with no cached copy (naming where to put the file),
            a read-only or full cache, a network error, a deadline passed, a body
            too large, short or of another size, a wrong hash, or a file that is
            not weights. Nothing is left in the cache then. A cached file that
            fails its checks is named with the command to remove it.
    """
    path = cache_dir() / file
    if path.is_file():
        problem = cached_file_problem(path, size)
        if problem is None:
            return path
        if not redownload_bad_cache():
            raise CheckpointError(bad_cache_message(path, problem))
        discard_cached(path)
    url = source_url(url, file)
    if offline():
        raise CheckpointError(
            f"offline (VIDEO_SWIN_OFFLINE/HF_HUB_OFFLINE) and {file} is not cached; download {url} "
            f"and place it at {path}"
        )
    deadline = download_deadline() if deadline is None else deadline
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _sweep_dead_partials(folder, file)
        # Same folder as the target, so the final os.replace is atomic.
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{file}.", suffix=".partial")
    except OSError as e:
        raise _unwritable(folder, e) from None
    with _removed_on_signal(tmp):
        try:
            with os.fdopen(fd, "wb") as out:
                digest, got, expected = _stream(url, out, progress, size=size, deadline=deadline, folder=folder)
            if expected is not None and got != expected:
                raise CheckpointError(f"{url}: download cut short ({got:,} of {expected:,} bytes); try again")
            if size is not None and got != size:
                raise CheckpointError(f"{url}: {got:,} bytes, but the catalog's file has {size:,}; not the "
                                      f"published file, not cached")
            if sha256 and not digest.startswith(sha256.lower()):
                raise CheckpointError(f"{url}: sha256 {digest} does not start with the published {sha256}; not used")
            _check_weights(Path(tmp), url, verify)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    log.info("downloaded %s to %s", url, path)
    return path


def _unwritable(folder: Path, error: OSError) -> CheckpointError:
    why = error.strerror or type(error).__name__
    return CheckpointError(f"cannot write to the weights cache {folder} ({why}); set VIDEO_SWIN_CACHE to a "
                           f"writable folder (the weights go into its 'weights' subfolder)")


def cached_file_problem(path: Path, size: int | None = None) -> str | None:
    """Why a cached file cannot be weights, from its size and first/last bytes (no loading), or None.

    Catches what a poisoned or broken cache holds: an HTML page or other text,
    an empty or cut file (a zip archive without its directory, a safetensors
    file shorter than its header says), a size other than the catalog's.
    """
    import zipfile

    from ..checkpoints.io import content_kind  # imports torch: on use (this package stays torch-free)

    got = path.stat().st_size
    if got == 0:
        return "the file is empty"
    if size is not None and got != size:
        return f"{got:,} bytes, but the published file has {size:,}"
    with open(path, "rb") as f:
        head = f.read(4096)
    kind = content_kind(head)
    if kind is not None:
        return f"the file is {kind}, not weights"
    if path.suffix == ".safetensors":
        return _safetensors_problem(path, head, got)
    if head.startswith(_WEIGHT_MAGIC[0]):
        return None if zipfile.is_zipfile(path) else "a zip archive without its end (cut short?)"
    if head.startswith(_WEIGHT_MAGIC[1]):
        return None
    return "neither a PyTorch zip archive nor a pickle"


def _safetensors_problem(path: Path, head: bytes, got: int) -> str | None:
    """Checks a safetensors header (8-byte length, JSON) against the file's size, without reading tensors."""
    import json

    if got < 8:
        return "shorter than a safetensors header"
    n = int.from_bytes(head[:8], "little")
    if n > got - 8:
        return "a safetensors header longer than the file (cut short?)"
    with open(path, "rb") as f:
        f.seek(8)
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return "a safetensors header that is not JSON"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2]
    if not ends:
        return "a safetensors file without tensors"
    if 8 + n + max(ends) != got:
        return f"{got:,} bytes, but its safetensors header describes {8 + n + max(ends):,} (cut short?)"
    return None


def _check_weights(tmp: Path, url: str, verify: Callable[[dict[str, Any], str], None] | None) -> None:
    """Refuses a download that is not weights: an HTML page, text, a refused pickle, no tensors, ``verify``."""
    from ..checkpoints.io import content_kind, read_state_dict  # imports torch: on use

    with open(tmp, "rb") as f:
        kind = content_kind(f.read(4096))
    if kind == "an HTML page":
        raise CheckpointError(f"{url}: the server sent an HTML page, not weights (an error or sign-in page?); "
                              f"nothing was cached; check the address (or VIDEO_SWIN_WEIGHTS_URL)")
    if kind is not None:
        raise CheckpointError(f"{url}: the server sent {kind}, not weights; nothing was cached")
    state = read_state_dict(tmp, name=url)
    if verify is not None:
        verify(state, url)


def _sweep_dead_partials(folder: Path, file: str) -> None:
    """Removes the ``*.partial`` of ``file`` that a killed download (kill -9, power loss) left behind."""
    now = time.time()
    for stale in folder.glob(f".{file}.*.partial"):
        try:
            if now - stale.stat().st_mtime > _STALE_PARTIAL:
                stale.unlink()
        except OSError:  # another process's, or gone already
            continue


@contextmanager
def _removed_on_signal(tmp: str) -> Iterator[None]:
    """Removes ``tmp`` if SIGTERM or SIGHUP ends the process during the block.

    Their default action ends the process without running ``finally``; here the
    file is removed first and the signal then takes its course (the process ends
    by it, with the usual status). A handler the program installed itself is
    left in charge (it may raise, which the caller's ``finally`` cleans up after).
    Only the main thread can set handlers; elsewhere the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        before = previous.get(signum)
        if callable(before):
            before(signum, frame)
            return
        if before == signal.SIG_IGN:
            return
        try:
            os.remove(tmp)
        except OSError:
            pass
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before if before is not None else signal.SIG_DFL)


def _stream(url: str, out, progress: bool, *, size: int | None, deadline: float, folder: Path
            ) -> tuple[str, int, int | None]:
    """Copies the body of ``url`` into ``out``: (sha256 hex, bytes written, Content-Length or None)."""
    request = urllib.request.Request(url, headers={"User-Agent": "video-swin"})
    sha = hashlib.sha256()
    got = 0
    end = time.monotonic() + deadline

    def left() -> float:
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise CheckpointError(
                f"{url}: the download did not finish within {deadline:g} s ({got:,} bytes received); nothing "
                f"was cached; allow longer with VIDEO_SWIN_DOWNLOAD_TIMEOUT (seconds) or use a faster mirror "
                f"(VIDEO_SWIN_WEIGHTS_URL)"
            )
        return remaining

    try:
        with urllib.request.urlopen(request, timeout=min(READ_TIMEOUT, left())) as response:
            ctype = response.headers.get_content_type()
            if ctype in ("text/html", "application/xhtml+xml"):
                raise CheckpointError(
                    f"{url}: the server sent an HTML page, not weights (HTTP {response.status}, Content-Type "
                    f"{ctype}); nothing was cached; check the address (or VIDEO_SWIN_WEIGHTS_URL)"
                )
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            bound = _size_bound(url, expected, size, folder)
            # One bar per machine: only the first process of a distributed launch draws it.
            main = os.environ.get("LOCAL_RANK", "0") == "0"
            bar = _progress_bar(expected, url.rsplit("/", 1)[-1]) if progress and main else None
            sock = getattr(getattr(response.fp, "raw", None), "_sock", None)
            try:
                while True:
                    if sock is not None:  # no single read may outlast the deadline
                        sock.settimeout(min(READ_TIMEOUT, left()))
                    # read1: returns what one receive brings, so a dripping server meets the deadline
                    # check between reads rather than filling a whole chunk first.
                    chunk = response.read1(_CHUNK)
                    if not chunk:
                        break
                    if got + len(chunk) > bound:
                        raise CheckpointError(
                            f"{url}: the server sent more than {bound:,} bytes, the most allowed "
                            f"({_bound_reason(size, folder)}); nothing was cached"
                        )
                    try:
                        out.write(chunk)
                    except OSError as e:
                        raise _unwritable(folder, e) from None
                    sha.update(chunk)
                    got += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                    left()
            finally:
                if bar is not None:
                    bar.close()
    except CheckpointError:
        raise
    except (TimeoutError, urllib.error.URLError, OSError) as e:
        if time.monotonic() >= end:
            left()  # raises the deadline's message
        raise CheckpointError(f"{url}: download failed ({e}); set VIDEO_SWIN_WEIGHTS_URL to a mirror, "
                              f"or place the file in {cache_dir()}") from e
    return sha.hexdigest(), got, expected


def _size_bound(url: str, expected: int | None, size: int | None, folder: Path) -> int:
    """The most bytes the body may have; refuses an announced size that is wrong or cannot fit."""
    limit = max_download_bytes()
    free = shutil.disk_usage(folder).free - _FREE_MARGIN
    if expected is not None and size is not None and expected != size:
        raise CheckpointError(f"{url}: the server announces {expected:,} bytes, but the catalog's file has "
                              f"{size:,}; not the published file, nothing was downloaded")
    needed = expected if expected is not None else size
    if needed is not None:
        said = "the server announces" if expected is not None else "the catalog gives the file"
        if needed > limit:
            raise CheckpointError(f"{url}: {said} {needed:,} bytes, more than the {limit:,} allowed "
                                  f"(VIDEO_SWIN_DOWNLOAD_MAX_BYTES); nothing was downloaded")
        if needed > free:
            raise CheckpointError(f"{url}: {said} {needed:,} bytes, but the disk of {folder} has "
                                  f"{max(free, 0):,} free (after a 64 MiB margin); free some space or set "
                                  f"VIDEO_SWIN_CACHE to another disk; nothing was downloaded")
        return needed
    return min(limit, max(free, 0))


def _bound_reason(size: int | None, folder: Path) -> str:
    if size is not None:
        return "the catalog's size of the file"
    return f"VIDEO_SWIN_DOWNLOAD_MAX_BYTES={max_download_bytes():,} or the free space of {folder}, whichever is less"


def _progress_bar(total: int | None, name: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress is a nicety; tqdm is optional here
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, leave=False)
