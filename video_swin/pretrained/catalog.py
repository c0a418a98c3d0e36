"""The published weights this package knows by name (``MODEL.TAG``), with where each fact comes from.

Nothing here is measured by us: every URL, file name, hash and accuracy is
copied from the publisher, and the source is named beside it. A field we
could not find a published value for is ``None``; it is never guessed.

Sources (read in these versions):

* ``[VST]`` SwinTransformer/Video-Swin-Transformer, README.md "Results and
  Models" (commit db018fb, 2021-07-28): file URLs, acc@1/acc@5 on the
  validation set; ``configs/recognition/swin/<file stem>.py`` of the same
  commit: ``test_pipeline`` (views, resize, crop) and ``img_norm_cfg``.
* ``[TV]`` torchvision 0.29, ``torchvision/models/video/swin_transformer.py``,
  ``Swin3D_{T,S,B}_Weights``: URLs, transforms, ``_metrics``. The 8 hex digits
  after the dash in each file name are the start of the file's sha256
  (torchvision's convention, checked by ``torch.hub``'s ``check_hash``).
* ``[MS]`` microsoft/Swin-Transformer, MODELHUB.md (commit f82860b,
  2024-07-15): ImageNet file URLs and acc@1/acc@5; ``configs/swin*/<stem>.yaml``
  and ``data/build.py`` for image size, class count (21841 for ImageNet-22K)
  and the test transform.

None of the publishers lists a sha256 for its ``.pth`` files except
torchvision (prefix in the name), so official files are checked by layout and
shapes only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

VST_BASE = "https://github.com/SwinTransformer/storage/releases/download/v1.0.4/"
TV_BASE = "https://download.pytorch.org/models/"
MS_V1_BASE = "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/"
MS_V1_22K_BASE = "https://github.com/SwinTransformer/storage/releases/download/v1.0.8/"
MS_V2_BASE = "https://github.com/SwinTransformer/storage/releases/download/v2.0.0/"

# Evaluation of the official Video Swin Kinetics models ([VST] test_pipeline):
# 32 frames every 2nd frame, 4 clips x 3 crops, short side resized to 224, three 224 crops,
# ImageNet mean/std on 0-255 pixels (123.675, 116.28, 103.53) / (58.395, 57.12, 57.375).
_VST_KINETICS_EVAL = {
    "clip_len": 32, "frame_interval": 2, "views": "4x3", "short_side": 224, "crop_size": 224,
    "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
}
# [TV] transforms: VideoClassification(resize_size=(256,), crop_size=(224, 224)), ImageNet mean/std;
# accuracy "estimated on video-level with parameters frame_rate=15, clips_per_video=12, and clip_len=32" ([TV] _docs).
_TV_EVAL = {
    "clip_len": 32, "frame_rate": 15, "clips_per_video": 12, "short_side": 256, "crop_size": 224,
    "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
}


def _ms_eval(size: int) -> dict[str, Any]:
    # [MS] data/build.py with TEST.CROP=True: bicubic resize of the short side to size*256/224, center crop.
    return {"image_size": size, "short_side": int(size * 256 / 224), "crop_size": size,
            "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


@dataclass(frozen=True)
class PretrainedWeights:
    """One published checkpoint.

    Attributes:
        name: ``MODEL.TAG``, e.g. ``"swin3d_t.k400"``.
        model: the preset the file fits (:func:`video_swin.list_models`).
        file: the publisher's file name, also the name in the cache and under a mirror.
        url: where the publisher serves it; a URL ending in ``/`` is the folder
            that holds ``file`` (the entry's URL is then that folder + ``file``).
        layout: what :func:`video_swin.checkpoints.detect_layout` must find in it
            (``official_video``: mmaction ``backbone.*``/``cls_head.*``;
            ``torchvision_video``; ``ours``: the official Microsoft 2D names).
        num_classes: outputs of the file's classifier.
        classes: shipped class list (``video_swin/labels/<classes>.txt``), or None.
        sha256: the file's sha256, or its published prefix; None when unpublished.
        model_args: preset arguments the file needs (e.g. the SSv2 window).
        eval: how the publisher evaluated it (views, resize, crop, normalisation).
        accuracy: the publisher's figures for this very file, e.g. ``{"acc@1": 78.8, ...}``.
        source: where the facts above come from (see the module docstring).
        notes: anything a user should know before relying on it.
        size: the file's size in bytes as its publisher gives it, or None (none of
            the publishers above lists exact sizes); a download or cached copy of
            another size is refused.
    """

    name: str
    model: str
    file: str
    url: str
    layout: str
    num_classes: int
    classes: str | None
    sha256: str | None
    source: str
    model_args: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] | None = None
    accuracy: dict[str, Any] | None = None
    notes: str = ""
    size: int | None = None

    def __post_init__(self) -> None:
        if self.url.endswith("/"):  # the publisher's folder: the file name is not written twice
            object.__setattr__(self, "url", self.url + self.file)

    @property
    def tag(self) -> str:
        return self.name.split(".", 1)[1]


def _tv_hash(file: str) -> str:
    """The sha256 prefix torchvision writes into its file names (``swin3d_t-7615ae03.pth``)."""
    return file.rsplit("-", 1)[1].split(".")[0]


_ENTRIES = [
    # --- official Video Swin (mmaction layout) -----------------------------------------------
    PretrainedWeights(
        "swin3d_t.k400", "swin3d_t", "swin_tiny_patch244_window877_kinetics400_1k.pth",
        VST_BASE, "official_video", 400, "kinetics400",
        None, "[VST] Kinetics 400 table, row Swin-T / ImageNet-1K", eval=_VST_KINETICS_EVAL,
        accuracy={"dataset": "Kinetics-400 val", "acc@1": 78.8, "acc@5": 93.6}),
    PretrainedWeights(
        "swin3d_s.k400", "swin3d_s", "swin_small_patch244_window877_kinetics400_1k.pth",
        VST_BASE, "official_video", 400, "kinetics400",
        None, "[VST] Kinetics 400 table, row Swin-S / ImageNet-1K", eval=_VST_KINETICS_EVAL,
        accuracy={"dataset": "Kinetics-400 val", "acc@1": 80.6, "acc@5": 94.5}),
    PretrainedWeights(
        "swin3d_b.k400", "swin3d_b", "swin_base_patch244_window877_kinetics400_1k.pth",
        VST_BASE, "official_video", 400, "kinetics400",
        None, "[VST] Kinetics 400 table, row Swin-B / ImageNet-1K", eval=_VST_KINETICS_EVAL,
        accuracy={"dataset": "Kinetics-400 val", "acc@1": 80.6, "acc@5": 94.6}),
    PretrainedWeights(
        "swin3d_b.k400_in22k", "swin3d_b", "swin_base_patch244_window877_kinetics400_22k.pth",
        VST_BASE, "official_video", 400, "kinetics400",
        None, "[VST] Kinetics 400 table, row Swin-B / ImageNet-22K", eval=_VST_KINETICS_EVAL,
        accuracy={"dataset": "Kinetics-400 val", "acc@1": 82.7, "acc@5": 95.5}),
    PretrainedWeights(
        "swin3d_b.k600_in22k", "swin3d_b", "swin_base_patch244_window877_kinetics600_22k.pth",
        VST_BASE, "official_video", 600, "kinetics600",
        None, "[VST] Kinetics 600 table, row Swin-B / ImageNet-22K; its config inherits the K400-22K test_pipeline",
        eval=_VST_KINETICS_EVAL, accuracy={"dataset": "Kinetics-600 val", "acc@1": 84.0, "acc@5": 96.5},
        notes="class order: mmaction2 tools/data/kinetics/label_map_k600.txt (sorted names), the order mmaction2's "
              "Kinetics file lists index labels in"),
    PretrainedWeights(
        "swin3d_b.ssv2", "swin3d_b", "swin_base_patch244_window1677_sthv2.pth",
        VST_BASE, "official_video", 174, "something_something_v2",
        None, "[VST] Something-Something V2 table, row Swin-B / Kinetics 400; config swin_base_patch244_window1677_sthv2.py",
        model_args={"window_size": (16, 7, 7)},
        # test_pipeline: SampleFrames(clip_len=32, frame_interval=2, num_clips=1, frame_uniform=True):
        # 32 frames spread uniformly over the whole video, not every 2nd frame.
        eval={"clip_len": 32, "frame_uniform": True, "views": "1x3", "short_side": 224, "crop_size": 224,
              "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
        accuracy={"dataset": "Something-Something V2 val", "acc@1": 69.6, "acc@5": 92.7},
        notes="class order: mmaction2 tools/data/sthv2/label_map.txt, whose index is the official "
              "something-something-v2-labels.json index (mmaction2 tools/data/parse_file_list.py); the json itself "
              "was not available to check"),
    # --- torchvision ports of the same models (features.* layout) --------------------------------
    PretrainedWeights(
        "swin3d_t.tv_k400", "swin3d_t", "swin3d_t-7615ae03.pth", TV_BASE,
        "torchvision_video", 400, "kinetics400", _tv_hash("swin3d_t-7615ae03.pth"),
        "[TV] Swin3D_T_Weights.KINETICS400_V1 (ported from [VST])", eval=_TV_EVAL,
        accuracy={"dataset": "Kinetics-400 val", "acc@1": 77.715, "acc@5": 93.519}),
    PretrainedWeights(
        "swin3d_s.tv_k400", "swin3d_s", "swin3d_s-da41c237.pth", TV_BASE,
        "torchvision_video", 400, "kinetics400", _tv_hash("swin3d_s-da41c237.pth"),
        "[TV] Swin3D_S_Weights.KINETICS400_V1 (ported from [VST])", eval=_TV_EVAL,
        accuracy={"dataset": "Kinetics-400 val", "acc@1": 79.521, "acc@5": 94.158}),
    PretrainedWeights(
        "swin3d_b.tv_k400", "swin3d_b", "swin3d_b_1k-24f7c7c6.pth", TV_BASE,
        "torchvision_video", 400, "kinetics400", _tv_hash("swin3d_b_1k-24f7c7c6.pth"),
        "[TV] Swin3D_B_Weights.KINETICS400_V1 (ported from [VST])", eval=_TV_EVAL,
        accuracy={"dataset": "Kinetics-400 val", "acc@1": 79.427, "acc@5": 94.386}),
    PretrainedWeights(
        "swin3d_b.tv_k400_in22k", "swin3d_b", "swin3d_b_22k-7c6ae6fa.pth", TV_BASE,
        "torchvision_video", 400, "kinetics400", _tv_hash("swin3d_b_22k-7c6ae6fa.pth"),
        "[TV] Swin3D_B_Weights.KINETICS400_IMAGENET22K_V1 (ported from [VST])", eval=_TV_EVAL,
        accuracy={"dataset": "Kinetics-400 val", "acc@1": 81.643, "acc@5": 95.574}),
]

# --- official ImageNet Swin V1 / V2 (the 2D models the video recipes inflate) -----------------
# For the ImageNet-22K files [MS] lists no accuracy of their own: the acc@1 in their row belongs to
# the 22K->1K fine-tuned file beside them, so ``accuracy`` stays None.
_IMAGE = [
    # name, file, base, num_classes, image size, [MS] acc@1/acc@5 or None, model_args
    ("swin_t.in1k", "swin_tiny_patch4_window7_224.pth", MS_V1_BASE, 1000, 224, (81.2, 95.5), {}),
    ("swin_s.in1k", "swin_small_patch4_window7_224.pth", MS_V1_BASE, 1000, 224, (83.2, 96.2), {}),
    ("swin_b.in1k", "swin_base_patch4_window7_224.pth", MS_V1_BASE, 1000, 224, (83.5, 96.5), {}),
    ("swin_t.in22k", "swin_tiny_patch4_window7_224_22k.pth", MS_V1_22K_BASE, 21841, 224, None, {}),
    ("swin_s.in22k", "swin_small_patch4_window7_224_22k.pth", MS_V1_22K_BASE, 21841, 224, None, {}),
    ("swin_b.in22k", "swin_base_patch4_window7_224_22k.pth", MS_V1_BASE, 21841, 224, None, {}),
    ("swin_l.in22k", "swin_large_patch4_window7_224_22k.pth", MS_V1_BASE, 21841, 224, None, {}),
    ("swinv2_t.in1k", "swinv2_tiny_patch4_window8_256.pth", MS_V2_BASE, 1000, 256, (81.8, 95.9), {}),
    ("swinv2_s.in1k", "swinv2_small_patch4_window8_256.pth", MS_V2_BASE, 1000, 256, (83.7, 96.6), {}),
    ("swinv2_b.in1k", "swinv2_base_patch4_window8_256.pth", MS_V2_BASE, 1000, 256, (84.2, 96.9), {}),
    # Pre-trained at 192 px with window 12 ([MS] configs/swinv2/*_window12_192_22k.yaml).
    ("swinv2_b.in22k", "swinv2_base_patch4_window12_192_22k.pth", MS_V2_BASE, 21841, 192, None,
     {"window_size": (12, 12)}),
    ("swinv2_l.in22k", "swinv2_large_patch4_window12_192_22k.pth", MS_V2_BASE, 21841, 192, None,
     {"window_size": (12, 12)}),
]  # fmt: skip
for _name, _file, _base, _n, _size, _acc, _args in _IMAGE:
    _ENTRIES.append(PretrainedWeights(
        _name, _name.split(".")[0], _file, _base, "ours", _n, None, None,
        f"[MS] MODELHUB.md, row of {_file}", model_args=_args, eval=_ms_eval(_size),
        accuracy={"dataset": "ImageNet-1K val", "acc@1": _acc[0], "acc@5": _acc[1]} if _acc else None,
        notes="ImageNet class names are not shipped" + ("" if _acc else "; no accuracy published for this file"),
    ))  # fmt: skip

CATALOG: dict[str, PretrainedWeights] = {e.name: e for e in _ENTRIES}

# What ``pretrained=True`` means for each preset: the ImageNet-1K-initialised Kinetics-400 model
# for video presets (torchvision's DEFAULT is the same choice), ImageNet-1K for image presets
# that have it, else ImageNet-22K.
DEFAULT_TAGS = {
    "swin3d_t": "k400", "swin3d_s": "k400", "swin3d_b": "k400",
    "swin_t": "in1k", "swin_s": "in1k", "swin_b": "in1k", "swin_l": "in22k",
    "swinv2_t": "in1k", "swinv2_s": "in1k", "swinv2_b": "in1k", "swinv2_l": "in22k",
}  # fmt: skip
