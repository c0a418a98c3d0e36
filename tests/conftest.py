"""Session-wide: caches (frame indexes, downloads) go to a temporary folder, never to ~/.cache."""

import os
import tempfile

# Set at import, before any test or subprocess runs; subprocesses inherit it.
os.environ.setdefault("VIDEO_SWIN_CACHE", tempfile.mkdtemp(prefix="video-swin-test-cache-"))
