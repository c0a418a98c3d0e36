"""One entry point for the two dataset pipelines (config key ``data.pipeline``)."""

from __future__ import annotations

from torch.utils.data import Dataset, IterableDataset

from .dataset import VideoDataset

PIPELINES = ("native", "pytorchvideo")
# Decoding options of VideoDataset that pytorchvideo, decoding on its own, has no use for.
_NATIVE_ONLY = ("max_bad_fraction", "max_attempts", "decoder_threads", "decode_timeout")


def build_video_dataset(*args, pipeline: str = "native", **kwargs) -> Dataset | IterableDataset:
    """Builds the dataset with the chosen pipeline.

    Args:
        *args: Passed to the dataset (see :class:`~video_swin.data.VideoDataset`).
        pipeline: "native" (:class:`~video_swin.data.VideoDataset`, map-style) or
            "pytorchvideo" (:class:`~video_swin.data.pytorchvideo_pipeline.PytorchvideoDataset`,
            iterable; ``decoder``, ``max_bad_fraction``, ``max_attempts``,
            ``decoder_threads`` and ``decode_timeout`` do not apply to it and are ignored).
        **kwargs: Passed to the dataset, e.g. ``transform=ClipTransform(...)``.

    Returns:
        The dataset; both yield the same sample dicts.
    """
    if pipeline == "native":
        return VideoDataset(*args, **kwargs)
    if pipeline == "pytorchvideo":
        from .pytorchvideo_pipeline import PytorchvideoDataset  # noqa: PLC0415  (imports pytorchvideo)

        for key in _NATIVE_ONLY:
            kwargs.pop(key, None)
        return PytorchvideoDataset(*args, **kwargs)
    raise ValueError(f"unknown data pipeline {pipeline!r}; expected one of {PIPELINES}")
