"""Predicting the classes of one's own video files, many at a time.

Files go through exactly the evaluation's test-mode pipeline (decoder, clip
sampling, crops, normalisation: :func:`~video_swin.engine.build.build_test_dataset`),
read by a DataLoader whose worker processes decode the next videos while the
model scores the current batch (each video decoded once for all its views, the
views of a whole batch scored together, as
:func:`~video_swin.engine.evaluate.score_views` does). Results stream out in
input order, one :class:`VideoPrediction` per file; a file that cannot be read
gets its reason and the others go on. Writing them (CSV, JSONL, features) is
:mod:`.predict_output`.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..checkpoints import CheckpointError
from ..checkpoints.io import read_sidecar
from ..config import Config, ConfigError, Views, config_from_dict, parse_views
from ..data import clips_to_float
from ..data.annotations import read_class_file, scan_videos
from ..data.collate import collate
from ..data.processes import worker_context
from ..factory import create_model
from ..models.kernels import machine  # its functions looked up when called (tests replace cpu_profile)
from ..pretrained import PretrainedWeights, get_pretrained, is_pretrained_name
from .build import (
    build_test_dataset,
    for_device,
    load_trained_weights,
    model_from_config,
    set_torch_threads,
)

log = logging.getLogger(__name__)

# ``--precision``: the dtype of the model's weights and inputs while predicting.
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
_warned_bf16 = False  # the emulated-bf16 warning, once per process


@dataclass
class VideoPrediction:
    """The top classes of one file, or why it could not be scored.

    Attributes:
        path: the file, as given or as found under a given folder.
        top: ``(class name, probability)`` pairs, most likely first; empty on error.
        error: None, or the reason the file could not be decoded.
        features: with ``features=True``: the pooled backbone features averaged
            over the views, Tensor[C_last] float32 on the CPU; else None.
        stage_features: with ``feature_stages``: ``{stage i: Tensor[C_i]}``, stage i's
            map of :meth:`~video_swin.models.SwinTransformer.forward_intermediates`
            average-pooled over T, H, W and averaged over the views (float32, CPU); else None.
    """

    path: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    features: torch.Tensor | None = field(default=None, repr=False)
    stage_features: dict[int, torch.Tensor] | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {"path": self.path, "top": [{"class": c, "probability": p} for c, p in self.top], "error": self.error}


def find_videos(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """The video files of ``inputs``: files as given, folders searched recursively, glob patterns expanded.

    A folder contributes its files with a video extension
    (:data:`~video_swin.data.annotations.VIDEO_EXTENSIONS`) in sorted order; a
    path that is neither a folder nor matches a pattern is kept as given, so
    that a missing file is reported with the others' results.

    Raises:
        ConfigError: a folder without any video file in it.
    """
    found: list[str] = []
    for item in map(str, inputs):
        if os.path.isdir(item):
            index = scan_videos(item, refresh=True)  # absolute paths under the folder's real path
            videos = sorted(p for paths in index.by_name.values() for p in paths)
            if not videos:
                raise ConfigError(f"{item}: no video files under this folder")
            found += [os.path.join(item, os.path.relpath(p, index.root)) for p in videos]  # as the user named it
        elif not os.path.exists(item) and glob.has_magic(item):
            found += sorted(glob.glob(item, recursive=True)) or [item]
        else:
            found.append(item)
    return found


def registry_config(entry: PretrainedWeights) -> Config:
    """Test-time data settings of a published file: the publisher's clip length, sampling, views and crops.

    torchvision's entries state a frame rate (15 fps) instead of an interval;
    the Kinetics videos' 30 fps make that every 2nd frame. SSv2's uniform
    sampling is approximated by every 2nd frame too.
    """
    e = entry.eval
    views = e.get("views") or f"{e.get('clips_per_video', 4)}x1"
    return config_from_dict({
        "model": {"name": entry.model},
        "data": {"clip_len": e["clip_len"], "frame_interval": e.get("frame_interval", 2),
                 "crop_size": e["crop_size"], "test_short_side": e["short_side"], "decoder": "auto"},
        "eval": {"views": views},
    })  # fmt: skip


def load_predictor(
    weights: str | os.PathLike,
    *,
    cfg: Config | None = None,
    classes: Sequence[str] | str | os.PathLike | None = None,
) -> tuple[nn.Module, Config, list[str] | None]:
    """The model, its config and class names for :func:`predict_videos`.

    ``weights`` is a registry name (:func:`video_swin.list_pretrained`, e.g.
    ``"swin3d_t.k400"``: downloaded once, the publisher's evaluation settings
    and class list) or a file. A file's config (model architecture and
    test-time data settings) is ``cfg`` if given, else the one the training
    run saved in its sidecar. Class names are ``classes`` (names, or a file with
    one per line) if given, else those the weights carry (the catalog's list,
    the sidecar's), else None: the caller then shows class indices.

    Returns:
        ``(model in eval mode, config, class names or None)``.

    Raises:
        CheckpointError: unreadable file, missing weights, no config for it,
            an image model, or ``classes`` of another count than the head's.
        ConfigError: a saved config that no longer matches the schema.
    """
    if isinstance(classes, (str, os.PathLike)):
        classes = read_class_file(classes)
    if is_pretrained_name(str(weights)) and not Path(weights).exists():
        entry = get_pretrained(str(weights))
        model = create_model(entry.model, pretrained=entry.name)
        cfg = cfg or registry_config(entry)
        names = classes or getattr(model, "classes", None)
    else:
        meta = read_sidecar(weights) or {}
        if cfg is None:
            if not isinstance(meta.get("config"), dict):
                raise CheckpointError(
                    f"{weights}: no training config saved beside it (sidecar 'config'); "
                    f"pass the config it was trained with (--config)"
                )
            try:
                cfg = config_from_dict(meta["config"])
            except ConfigError as e:
                raise ConfigError(f"{weights}: the saved config is not valid any more ({e}); pass --config") from e
        names = classes or meta.get("classes")
        if not names and not cfg.model.num_classes:
            raise CheckpointError(f"{weights}: neither class names nor a class count saved with it; "
                                  f"pass a class file (--classes) or model.num_classes in --config")
        model = model_from_config(cfg, len(names) if names else cfg.model.num_classes)
        load_trained_weights(model, weights)
    if len(model.patch_embed.patch_size) != 3:
        raise CheckpointError(f"{weights}: {model.config['name']} is an image model; predict needs a video model")
    if names and len(names) != model.head.out_features:
        raise CheckpointError(f"{len(names)} class names for a head of {model.head.out_features} classes")
    return model.eval(), cfg, list(names) if names else None


def parse_feature_stages(text: str | None, num_stages: int) -> list[int] | None:
    """``--feature-stages``: ``none`` (None), ``all``, ``last``, or stage numbers ``0,1,2,3`` (negative from the end).

    Returns:
        The sorted distinct stage numbers in ``[0, num_stages)``, or None for ``none``/None.

    Raises:
        ConfigError: anything else, or a stage the model does not have.
    """
    if text is None or text.strip().lower() in ("", "none"):
        return None
    word = text.strip().lower()
    if word == "all":
        return list(range(num_stages))
    if word == "last":
        return [num_stages - 1]
    try:
        given = [int(part) for part in word.split(",")]
    except ValueError:
        raise ConfigError(f"--feature-stages: expected all, last, none or stage numbers like 0,2,3; got {text!r}"
                          ) from None
    bad = [i for i in given if not -num_stages <= i < num_stages]
    if bad:
        raise ConfigError(f"--feature-stages: stage {bad[0]} does not exist; the model has stages "
                          f"0..{num_stages - 1}")
    return sorted({i % num_stages for i in given})


def default_workers() -> int:
    """DataLoader worker processes: one per CPU, at most 4 (decoding short clips needs few)."""
    return min(4, os.cpu_count() or 1)


def _score_and_pool(model: nn.Module, videos: torch.Tensor, max_views: int, average: str,
                    stages: Sequence[int] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor] | None]:
    """Class scores, pooled features and (optionally) pooled per-stage features of multi-view samples.

    The same scores as :func:`~video_swin.engine.evaluate.score_views`, with the
    pooled features of the same forward. With ``stages``, that forward is
    :meth:`~video_swin.models.SwinTransformer.forward_intermediates` (the same
    blocks; its final output is :meth:`forward_features`'s), and each listed
    stage's map is average-pooled over T, H, W.

    Args:
        videos: Tensor[B, V, 3, T, H, W].
        stages: stage numbers (ascending) whose pooled maps to return, or None.

    Returns:
        ``(scores Tensor[B, K], features Tensor[B, C_last], [Tensor[B, C_i] per stage] or None)``,
        float32, averaged over the V views.
    """
    b, v = videos.shape[:2]
    flat = videos.flatten(0, 1)  # (B*V, 3, T, H, W)
    pooled, per_stage = [], []
    for chunk in flat.split(max_views):
        if stages:
            final, maps = model.forward_intermediates(chunk, indices=list(stages))  # maps: (n, C_i, T_i, H_i, W_i)
            per_stage.append([m.flatten(2).mean(-1) for m in maps])  # [(n, C_i)]
        else:
            final = model.forward_features(chunk)
        pooled.append(model.forward_head(final, pre_logits=True))  # (n, C_last)
    pooled = torch.cat(pooled)  # (B*V, C_last), in the model's dtype
    logits = model.head(pooled).float()  # (B*V, K); the head's dropout is off in eval
    pooled = pooled.float()
    per_view = logits.softmax(-1) if average == "prob" else logits
    stage_means = [torch.cat(parts).float().view(b, v, -1).mean(1) for parts in zip(*per_stage)] if stages else None
    return per_view.view(b, v, -1).mean(1), pooled.view(b, v, -1).mean(1), stage_means  # (B, K), (B, C), [(B, C_i)]


@torch.inference_mode()
def iter_predictions(
    model: nn.Module,
    cfg: Config,
    classes: Sequence[str] | None,
    paths: Sequence[str | os.PathLike],
    *,
    views: Views | str | None = None,
    top_k: int = 5,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    features: bool = False,
    feature_stages: Sequence[int] | None = None,
    progress: bool = False,
    precision: str = "fp32",
) -> Iterator[VideoPrediction]:
    """Top-k classes of each file, with probabilities, in input order, as the batches come.

    Args:
        model: video classifier.
        cfg: data settings (``data.*``) and scoring settings (``eval.*``).
        classes: class names, index i = logit i; None: the indices as names.
        paths: video files (see :func:`find_videos` for folders).
        views: clips x crops (or ``"CLIPSxCROPS"``), default ``cfg.eval.views``.
        top_k: classes listed per file (at most the class count).
        device: where the model runs; default CUDA if available.
        batch_size: videos per forward (default ``eval.batch_size``); their
            views go through the model ``eval.max_views_per_forward`` at a time.
        workers: DataLoader worker processes decoding ahead (default
            :func:`default_workers`; 0 decodes in this process). On CPU,
            torch's thread count of this process is then set by
            ``cfg.train.threads`` (:func:`~.build.set_torch_threads`).
        features: also return each video's pooled features (``VideoPrediction.features``).
        feature_stages: also return these stages' pooled maps
            (``VideoPrediction.stage_features``; see :func:`parse_feature_stages`).
        progress: a progress bar on stderr (only when it is a terminal).
        precision: ``"fp32"`` or ``"bf16"``: the model's floating-point
            parameters and buffers are cast to this dtype (in place, as the
            move to ``device`` is; integer buffers such as the
            relative-position indices stay integer) and so are the input
            clips; logits go back to float32 before the softmax, and the
            returned features are float32 either way. On a CPU without
            AVX512-BF16/AMX, bf16 is emulated and slower than fp32 (one
            warning, see :func:`bf16_cpu_warning`).

    Yields:
        One :class:`VideoPrediction` per path. Probabilities are the
        view-averaged softmax (``eval.average=prob``) or the softmax of the
        view-averaged logits (``logit``).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # The CPU fast paths take float32 only; bf16 weights run the reference modules (they check per call).
    model = for_device(model.to(device=device, dtype=dtype).eval(), device)
    if dtype == torch.bfloat16 and device.type == "cpu":
        _warn_emulated_bf16()
    views = parse_views(views, key="views") if isinstance(views, str) else views
    names = list(classes) if classes else [str(i) for i in range(model.head.out_features)]
    paths = [str(p) for p in paths]
    workers = default_workers() if workers is None else workers
    set_torch_threads(cfg, cpu=device.type == "cpu", workers=min(workers, len(paths)))  # train.threads' rule
    if feature_stages is not None:  # stage order, as forward_intermediates returns them
        feature_stages = sorted({i % len(model.layers) for i in feature_stages}) or None
    dataset = build_test_dataset(cfg, names, views, videos=paths)
    num_workers = min(workers, len(paths))
    loader = DataLoader(dataset, batch_size=batch_size or cfg.eval.batch_size, num_workers=num_workers,
                        collate_fn=collate, pin_memory=device.type == "cuda",
                        multiprocessing_context=worker_context() if num_workers else None)
    k = min(top_k, len(names))
    with tqdm(total=len(paths), unit="video", desc="predict", leave=False,
              disable=None if progress else True) as bar:  # None: shown on a terminal only
        for batch in loader:
            valid = batch["valid"]  # (B,) bool
            reasons = iter(batch["failures"])  # in test mode: one record per invalid sample, in order
            if valid.any():
                videos = clips_to_float(batch["video"][valid].to(device, non_blocking=True))  # (B', V, 3, T, S, S)
                videos = videos.to(dtype)  # no copy in fp32
                scores, pooled, stage_means = _score_and_pool(model, videos, cfg.eval.max_views_per_forward,
                                                              cfg.eval.average, feature_stages)
                probs = (scores if cfg.eval.average == "prob" else scores.softmax(-1)).cpu()  # (B', K)
                top = probs.topk(k)
                pooled = pooled.cpu()
                stage_means = [s.cpu() for s in stage_means] if stage_means else None
            row = 0
            for index, ok in zip(batch["index"].tolist(), valid.tolist()):
                if not ok:
                    yield VideoPrediction(paths[index], error=next(reasons).reason)
                    continue
                ranked = [(names[j], float(p)) for p, j in zip(top.values[row], top.indices[row].tolist())]
                stage = {i: s[row].clone() for i, s in zip(feature_stages, stage_means)} if stage_means else None
                yield VideoPrediction(paths[index], ranked, features=pooled[row].clone() if features else None,
                                      stage_features=stage)
                row += 1
            bar.update(len(valid))


def bf16_cpu_warning() -> str | None:
    """The warning for bf16 weights on a CPU that emulates bf16 (no AVX512-BF16/AMX), or None: the
    trainer's (:func:`~video_swin.models.kernels.machine.bf16_warning`), naming ``--precision fp32``."""
    return machine.bf16_warning(machine.cpu_profile(), faster="--precision fp32")


def _warn_emulated_bf16() -> None:
    global _warned_bf16
    if not _warned_bf16:
        _warned_bf16 = True
        warning = bf16_cpu_warning()
        if warning:
            log.warning(warning)


def predict_videos(
    model: nn.Module,
    cfg: Config,
    classes: Sequence[str] | None,
    paths: Sequence[str | os.PathLike],
    **kwargs,
) -> list[VideoPrediction]:
    """:func:`iter_predictions` as a list (same arguments)."""
    return list(iter_predictions(model, cfg, classes, paths, **kwargs))


def format_prediction(r: VideoPrediction) -> str:
    """Plain text of one result: the file, then its classes with probabilities (or its error)."""
    lines = [r.path]
    if r.error is not None:
        lines.append(f"    error: {r.error}")
    width = max((len(c) for c, _ in r.top), default=0)
    lines += [f"  {rank:>2}. {name:<{width}}  {prob:6.1%}" for rank, (name, prob) in enumerate(r.top, 1)]
    return "\n".join(lines)


def format_predictions(results: Sequence[VideoPrediction]) -> str:
    """A plain-text table: each file, then its classes with probabilities (or its error)."""
    return "\n".join(map(format_prediction, results))
