"""Fetching a published file into the cache, once, whole and checked.

Why not ``torch.hub.download_url_to_file``: it does write a temporary file
and rename it, and checks a hash prefix, but it reads the body with
``http.client``'s ``read(n)``, which returns short without an error when
the connection drops before ``Content-Length`` bytes. For the official
Swin files, which have no published hash, a cut download would then sit in
the cache as if complete. The few lines below add that length check and a
full sha256; the rest (temporary file in the cache folder, ``os.replace``,
tqdm progress) is the same idea.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import CheckpointError

log = logging.getLogger(__name__)
_CHUNK = 1 << 20
_TRUE = ("1", "true", "yes", "on")


def cache_dir() -> Path:
    """Where downloaded weights live: ``$VIDEO_SWIN_CACHE/weights`` (default ``~/.cache/video-swin/weights``)."""
    root = os.environ.get("VIDEO_SWIN_CACHE") or "~/.cache/video-swin"
    return Path(root).expanduser() / "weights"


def offline() -> bool:
    """True when ``VIDEO_SWIN_OFFLINE`` or ``HF_HUB_OFFLINE`` is set: the network is never used."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("VIDEO_SWIN_OFFLINE", "HF_HUB_OFFLINE"))


def source_url(url: str, file: str) -> str:
    """``url``, or ``$VIDEO_SWIN_WEIGHTS_URL`` + ``file`` when a mirror is set."""
    base = os.environ.get("VIDEO_SWIN_WEIGHTS_URL")
    return base.rstrip("/") + "/" + file if base else url


def fetch(url: str, file: str, sha256: str | None = None, *, progress: bool = True) -> Path:
    """The cached copy of ``file``, downloaded from ``url`` (or the mirror) first if absent.

    Args:
        url: the publisher's URL (replaced by ``$VIDEO_SWIN_WEIGHTS_URL/file`` when set).
        file: name in the cache.
        sha256: full hex digest or a prefix of it; None when nothing is published.
        progress: show a tqdm bar (when tqdm is installed).

    Raises:
        CheckpointError: offline with no cached copy (naming where to put the file),
            a network error, a short body or a wrong hash. Nothing is left in the cache then.
    """
    path = cache_dir() / file
    if path.is_file():
        return path
    url = source_url(url, file)
    if offline():
        raise CheckpointError(
            f"offline (VIDEO_SWIN_OFFLINE/HF_HUB_OFFLINE) and {file} is not cached; download {url} "
            f"and place it at {path}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder as the target, so the final os.replace is atomic; a crash leaves only a *.partial.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{file}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out:
            digest, size, expected = _stream(url, out, progress)
        if expected is not None and size != expected:
            raise CheckpointError(f"{url}: download cut short ({size:,} of {expected:,} bytes); try again")
        if sha256 and not digest.startswith(sha256.lower()):
            raise CheckpointError(f"{url}: sha256 {digest} does not start with the published {sha256}; not used")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    log.info("downloaded %s to %s", url, path)
    return path


def _stream(url: str, out, progress: bool) -> tuple[str, int, int | None]:
    """Copies the body of ``url`` into ``out``: (sha256 hex, bytes written, Content-Length or None)."""
    request = urllib.request.Request(url, headers={"User-Agent": "video-swin"})
    sha = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            # One bar per machine: only the first process of a distributed launch draws it.
            main = os.environ.get("LOCAL_RANK", "0") == "0"
            bar = _progress_bar(expected, url.rsplit("/", 1)[-1]) if progress and main else None
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    sha.update(chunk)
                    size += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
    except (urllib.error.URLError, OSError) as e:
        raise CheckpointError(f"{url}: download failed ({e}); set VIDEO_SWIN_WEIGHTS_URL to a mirror, "
                              f"or place the file in {cache_dir()}") from e
    return sha.hexdigest(), size, expected


def _progress_bar(total: int | None, name: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress is a nicety; tqdm is optional here
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, leave=False)
