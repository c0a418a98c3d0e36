"""The decoder interface every backend and wrapper implements: frames by index, uint8 RGB.

Backends (:mod:`~video_swin.data.decoders`) and the process isolation wrapper
(:mod:`~video_swin.data.isolated`) both build on this module and on nothing
of each other's, so the two never import one another.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import DecodeError  # noqa: F401  (re-exported: what ``read`` raises)

IndexSelector = Callable[[int], Sequence[int] | np.ndarray]


class Decoder(abc.ABC):
    """Reads chosen frames of a video file as uint8 RGB.

    Subclasses implement :meth:`read`; a decoder holds no open file between calls
    and is cheap to pickle into DataLoader workers.
    """

    name: str = "base"

    @abc.abstractmethod
    def read(self, path: str | Path, select: IndexSelector) -> tuple[torch.Tensor, np.ndarray]:
        """Opens ``path`` once, chooses indices from its frame count, decodes them.

        Args:
            path: Video file.
            select: Called with the number of frames N; returns the frame indices
                to read (any order, repeats allowed, each in [0, N)).

        Returns:
            ``(frames, indices)``: frames ``Tensor[len(indices), H, W, 3]`` uint8 in
            the order of ``indices``, and the indices as an int64 array.

        Raises:
            DecodeError: The file is missing, empty, truncated or not a video.
        """

    def get_frames(self, path: str | Path, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Frames at ``indices``: ``Tensor[len(indices), H, W, 3]`` uint8."""
        return self.read(path, lambda _: indices)[0]

    def num_frames(self, path: str | Path) -> int:
        """Number of frames of ``path``, as this decoder indexes them."""
        count: list[int] = []

        def select(n: int) -> list[int]:
            count.append(n)
            return [0]

        self.read(path, select)
        return count[0]
