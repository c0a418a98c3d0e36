"""The Hugging Face Hub: what ``model.save_pretrained``, ``video_swin.from_pretrained`` and ``model.push_to_hub`` do.

A saved model is a folder (or a Hub repository) of three files:

* ``config.json``: the preset name, every constructor argument, the class
  names and, when known, the test-time settings (``eval``);
* ``model.safetensors``: the state dict, our key names;
* ``README.md``: a model card (huggingface_hub's :class:`~huggingface_hub.ModelCard`)
  with the architecture, the classes, the training config and the final metrics
  when the model comes from a training run (:func:`export_run`).

Downloads, the Hub cache, tokens and uploads are huggingface_hub's
(``hf_hub_download``, ``HfApi.upload_folder``); this module only decides what
goes into the folder, and reads and checks a saved one (:func:`read_saved`,
:func:`load_saved`). The factory (:mod:`video_swin.factory`) composes them into
``video_swin.from_pretrained`` and the model's Hub methods; this module sits below
it, over :mod:`video_swin.models` and :mod:`video_swin.checkpoints`.
``HF_HUB_OFFLINE=1`` (or ``VIDEO_SWIN_OFFLINE=1``) reads repositories from the
local Hub cache only.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi, ModelCard, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from . import models
from .checkpoints import load_model
from .checkpoints.loading import _depths
from .errors import CheckpointError, ConfigError
from .models.registry import model_config
from .pretrained import offline

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
FORMAT = "video-swin-hub/1"


def hub_config(model: Any, classes: Sequence[str] | None = None, eval: Mapping[str, Any] | None = None) -> dict:
    """What ``config.json`` holds for ``model`` (built by :func:`video_swin.create_model`)."""
    config = dict(getattr(model, "config", None) or {})
    if "name" not in config:
        raise CheckpointError("the model has no 'config' (preset name and arguments); build it with create_model")
    name = config.pop("name")
    classes = list(classes) if classes is not None else getattr(model, "classes", None)
    return {"format": FORMAT, "library_name": "video-swin", "model_name": name, "model_args": config,
            "classes": list(classes) if classes else None, "eval": dict(eval) if eval else None}


def save_pretrained(
    model: Any,
    directory: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    eval: Mapping[str, Any] | None = None,
    training_config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Writes ``config.json``, ``model.safetensors`` and a model card into ``directory``.

    Args:
        model: a model from :func:`video_swin.create_model`.
        directory: created if needed; these three files are replaced.
        classes: class names (default ``model.classes`` when set).
        eval: test-time settings to record (clip length, views, crops, ...).
        training_config: the training run's resolved config, shown in the card.
        metrics: final metrics, shown in the card and its metadata.

    Returns:
        The folder.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config = hub_config(model, classes, eval)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, out / WEIGHTS_NAME, metadata={"format": "pt"})
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    model_card(config, training_config, metrics).save(out / CARD_NAME)
    return out


def model_card(config: Mapping[str, Any], training_config: Mapping[str, Any] | None = None,
               metrics: Mapping[str, Any] | None = None) -> ModelCard:
    """The README of a saved model: metadata for the Hub, then architecture, classes, config, metrics."""
    classes = config.get("classes") or []
    args = config["model_args"]
    meta = ["---", "library_name: video-swin", "pipeline_tag: video-classification",
            "tags:", "- video-classification", "- video-swin", "---"]
    lines = [f"# {config['model_name']} (video-swin)", "",
             "A Video Swin Transformer saved by video-swin's `save_pretrained`. Load it with:", "", "```python", "import video_swin",
             "model = video_swin.from_pretrained(\"<this folder or repo id>\")", "```", "",
             "## Architecture", "", "| argument | value |", "|---|---|"]
    lines += [f"| `{k}` | `{json.dumps(v)}` |" for k, v in sorted(args.items())]
    lines += ["", f"## Classes ({len(classes) or args.get('num_classes')})", ""]
    lines += [", ".join(f"`{c}`" for c in classes) if classes else "No class names were saved; outputs are indices."]
    if config.get("eval"):
        lines += ["", "## Test-time settings", "", "```json", json.dumps(config["eval"], indent=2), "```"]
    if metrics:
        lines += ["", "## Final metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    if training_config:
        lines += ["", "## Training config", "", "```json", json.dumps(training_config, indent=2, default=str), "```"]
    return ModelCard("\n".join(meta + [""] + lines) + "\n")


def _is_repo_id(source: str) -> bool:
    """``owner/name`` (or ``name``), not something that reads as a local path."""
    return not source.startswith(("/", ".", "~")) and "\\" not in source and source.count("/") <= 1


def _download(repo_id: str, revision: str | None, cache_dir: str | os.PathLike | None, token: str | bool | None
              ) -> tuple[Path, Path]:
    local_only = offline()
    try:
        files = [Path(hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir, token=token,
                                      local_files_only=local_only)) for name in (CONFIG_NAME, WEIGHTS_NAME)]
    except LocalEntryNotFoundError as e:
        why = ("HF_HUB_OFFLINE or VIDEO_SWIN_OFFLINE is set, so only the local Hub cache is read"
               if local_only else "the Hub could not be reached")
        raise CheckpointError(f"{repo_id}: not in the local Hugging Face cache and {why}; download it once with "
                              f"network access, or pass a folder written by save_pretrained") from e
    except (RepositoryNotFoundError, EntryNotFoundError) as e:
        raise CheckpointError(f"{repo_id}: no video-swin model there ({type(e).__name__}: "
                              f"{str(e).splitlines()[0]})") from e
    return files[0], files[1]


def read_saved(
    source: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    **overrides: Any,
) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """A saved model's ``config.json`` and weights file, from a folder or a Hub repository, checked together.

    Args:
        source: a local folder, or ``"owner/name"`` on the Hub (downloaded
            into huggingface_hub's cache, or read from it when offline).
        revision, cache_dir, token: passed to :func:`huggingface_hub.hf_hub_download`.
        **overrides: constructor arguments to change (e.g. ``drop_path_rate``).

    Returns:
        ``(config, arguments, weights file)``: the whole ``config.json``, the
        preset's arguments (``model_args`` with the overrides) and the
        ``model.safetensors`` to give :func:`load_saved`.

    ``config.json`` is checked against the weights' header before any model is
    built (:func:`check_config`): a malformed file, a field of the wrong type,
    a class list of another length than the head, or sizes the tensors do not
    have (a huge ``embed_dim`` included) fail before any memory is allocated.

    Raises:
        CheckpointError: not a saved model, offline without a cached copy, or
            a config.json that is malformed or does not fit the weights (naming
            the file and the field).
    """
    path = Path(source).expanduser()
    if path.is_dir():
        config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
        absent = [p.name for p in (config_file, weights_file) if not p.is_file()]
        if absent:
            raise CheckpointError(f"{source}: not a folder written by save_pretrained (no {', '.join(absent)})")
    elif _is_repo_id(str(source)):
        config_file, weights_file = _download(str(source), revision, cache_dir, token)
    else:
        raise CheckpointError(f"{source}: no such folder (and not a Hub repository id 'owner/name')")
    config = read_config(config_file)
    args = {**config["model_args"], **overrides}
    check_config(config, args, config_file, weights_file, overridden=set(overrides))
    return config, args, weights_file


def load_saved(model: nn.Module, config: Mapping[str, Any], weights_file: Path) -> nn.Module:
    """Loads ``weights_file`` into ``model`` (built from ``config``'s preset and arguments), strictly.

    Returns:
        The model in eval mode, ``model.classes`` set (or None) and
        ``model.hub_config`` holding the whole ``config.json``.
    """
    try:
        model.load_state_dict(load_file(weights_file), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{weights_file}: does not fit {config['model_name']} with the saved arguments: "
                              f"{str(e).splitlines()[0]}") from e
    model.classes = config.get("classes")
    model.hub_config = dict(config)
    return model.eval()


def read_config(config_file: Path) -> dict[str, Any]:
    """``config.json`` of a saved model, its fields' types checked.

    Raises:
        CheckpointError: not JSON, not a video-swin config, or a field of the
            wrong type (named).
    """
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config_file}: unreadable ({e})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_file}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                              f"write it again with save_pretrained") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object, found {type(config).__name__}")
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{config_file}: not a video-swin config (format {config.get('format')!r})")
    name, args, classes = config.get("model_name"), config.get("model_args"), config.get("classes")
    if not isinstance(name, str) or name not in models.list_models():
        raise CheckpointError(f"{config_file}: model_name {name!r} is not a video-swin preset "
                              f"(video_swin.list_models())")
    if not isinstance(args, dict):
        raise CheckpointError(f"{config_file}: model_args must be an object of constructor arguments, "
                              f"found {type(args).__name__}")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise CheckpointError(f"{config_file}: classes must be a list of names or null, found {classes!r:.80}")
    if config.get("eval") is not None and not isinstance(config["eval"], dict):
        raise CheckpointError(f"{config_file}: eval must be an object or null, found {config['eval']!r:.80}")
    return config


def _header_shapes(weights_file: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file, read from its header (no tensor is loaded)."""
    try:
        with safe_open(str(weights_file), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights_file}: not a readable safetensors file (truncated or corrupt?): {e}") from None


def check_config(config: Mapping[str, Any], args: Mapping[str, Any], config_file: Path, weights_file: Path,
                 overridden: set[str] | frozenset[str] = frozenset()) -> None:
    """Checks the model ``config.json`` describes (with ``args``) against the weights' header, before any allocation.

    The sizes that set the model's memory (``embed_dim``, ``depths``,
    ``num_classes``, ``patch_size``, ``in_chans``) and the class list are
    compared with the tensors' shapes first; then the whole model is built on
    the meta device (no memory) and every parameter's shape compared.

    Raises:
        CheckpointError: naming the file and the field that does not fit.
    """
    name = config["model_name"]

    def field(key: str) -> str:
        return f"{key} (given to from_pretrained)" if key in overridden else f"{config_file}: model_args.{key}"

    def unfit(key: str, value: Any, tensor: str, shape: tuple[int, ...]) -> CheckpointError:
        return CheckpointError(f"{field(key)} = {value!r} does not fit the weights in {weights_file} "
                               f"({tensor} has shape {shape}); the config and the weights are not from one model")

    try:
        full = model_config(name, **args)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{config_file}: model_args do not describe a {name} ({e})") from None
    for key in ("embed_dim", "in_chans", "num_classes"):
        value = full.get(key)
        if key in full and (isinstance(value, bool) or not isinstance(value, int) or value < (key != "num_classes")):
            raise CheckpointError(f"{field(key)} must be a whole number >= {int(key != 'num_classes')}, got {value!r}")
    for key in ("depths", "num_heads", "patch_size"):
        value = full.get(key)
        if key in full and not (isinstance(value, list) and value
                                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
            raise CheckpointError(f"{field(key)} must be a list of whole numbers >= 1, got {value!r:.80}")
    shapes = _header_shapes(weights_file)
    patch = shapes.get("patch_embed.proj.weight")
    if patch is None:
        raise CheckpointError(f"{weights_file}: no patch_embed.proj.weight; not the weights of a video-swin model")
    for key, saved in (("embed_dim", patch[0]), ("in_chans", patch[1]), ("patch_size", list(patch[2:]))):
        if key in full and full[key] != saved:
            raise unfit(key, full[key], "patch_embed.proj.weight", patch)
    saved_depths = list(_depths(shapes) or ())  # blocks per stage, from the names alone
    if "depths" in full and list(full["depths"]) != saved_depths:
        raise CheckpointError(f"{field('depths')} = {full['depths']!r:.80} does not fit the weights in {weights_file} "
                              f"(blocks per stage there: {saved_depths}); the config and the weights are not from "
                              f"one model")
    head = shapes.get("head.weight")
    outputs = head[0] if head is not None else 0
    if full.get("num_classes") != outputs:
        raise unfit("num_classes", full.get("num_classes"), "head.weight", head or ())
    classes = config.get("classes")
    if classes and len(classes) != outputs:
        raise CheckpointError(f"{config_file}: classes lists {len(classes)} names, but the weights in "
                              f"{weights_file} have {outputs} outputs (head.weight has shape {head}); "
                              f"the class list does not fit the model")
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated
            meta = models.create_model(name, **args)
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{config_file}: model_args do not build a {name} ({e})") from None
    wanted = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    missing = sorted(wanted.keys() - shapes.keys())
    extra = sorted(shapes.keys() - wanted.keys())
    if missing or extra:
        listed = "; ".join(
            f"{what}: {', '.join(names[:3])}" + (f" ... ({len(names)} in all)" if len(names) > 3 else "")
            for what, names in (("missing from the file", missing), ("not in the model", extra)) if names)
        raise CheckpointError(f"{weights_file}: does not fit {name} with the arguments of {config_file} ({listed})")
    for key, shape in wanted.items():
        if shapes[key] != shape:
            arg = _argument_of(key, shapes[key], shape)
            named = (f"model_args.{arg} = {full.get(arg)!r:.60} of {config_file}" if arg
                     else f"the model_args of {config_file}")
            raise CheckpointError(f"{weights_file}: does not fit {name} with {named}: {key} has shape "
                                  f"{shapes[key]} in the file, {shape} from the config")


# Which constructor argument sets a dimension of a tensor (name pattern, dimension -> argument).
_SHAPE_ARGUMENTS = (
    ("relative_position_bias_table", {0: "window_size", 1: "num_heads"}),
    ("attn.logit_scale", {0: "num_heads"}),
    ("attn.cpb_mlp.2.weight", {0: "num_heads"}),
    ("mlp.fc1.", {0: "mlp_ratio"}),
    ("mlp.fc2.", {1: "mlp_ratio"}),
)


def _argument_of(key: str, saved: tuple[int, ...], built: tuple[int, ...]) -> str | None:
    """The argument whose value gives ``key`` the shape ``built`` instead of ``saved``, where one does."""
    differ = [i for i, (a, b) in enumerate(zip(saved, built)) if a != b] or [0]
    for pattern, dims in _SHAPE_ARGUMENTS:
        if pattern in key and differ[0] in dims:
            return dims[differ[0]]
    return None


def push_to_hub(
    model: Any,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload video-swin model",
    **save_kwargs: Any,
) -> str:
    """Saves ``model`` as :func:`save_pretrained` does and uploads the folder to ``repo_id`` (created if absent).

    Returns:
        The URL of the commit.
    """
    if offline():
        raise CheckpointError(f"cannot push to {repo_id}: HF_HUB_OFFLINE or VIDEO_SWIN_OFFLINE is set")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(model, folder, **save_kwargs)
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message,
                                 repo_type="model")
    return str(getattr(info, "commit_url", info))


def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """``video-swin export-hub``: a training run's final weights as a :func:`save_pretrained` folder.

    Reads ``RUN_DIR/model.safetensors`` and its sidecar (the model's arguments,
    the class names, the resolved training config) and, when the final
    evaluation ran, ``RUN_DIR/eval/metrics.json``; the card lists the config
    and those metrics, and ``config.json`` records the run's test-time settings.

    ``out_dir`` must be absent, empty of the three names, or an earlier export
    (its ``config.json`` in this format): a ``README.md`` or ``config.json``
    that no export wrote is never replaced. Other files in it are left alone.

    Raises:
        CheckpointError: no final weights in the folder (an unfinished run).
        ConfigError: ``out_dir`` is a file, or holds files of those names that
            no export wrote (nothing is written then).
    """
    _check_export_folder(Path(out_dir))
    run = Path(run_dir)
    weights = run / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{run}: no final weights (model.safetensors); has the run finished? "
                              f"(a state under checkpoints/ is not a finished model)")
    model, meta = load_model(weights)
    cfg = meta.get("config") or {}
    data, evaluation = cfg.get("data", {}), cfg.get("eval", {})
    test = {k: data[k] for k in ("clip_len", "frame_interval", "crop_size", "test_short_side") if k in data}
    if "views" in evaluation:
        test["views"] = evaluation["views"]
    metrics = None
    metrics_file = run / "eval" / "metrics.json"
    if metrics_file.is_file():
        report = json.loads(metrics_file.read_text())
        metrics = {k: report[k] for k in ("top1", "top5", "mean_class_accuracy", "num_videos", "views")
                   if k in report}
    if "step" in meta:
        metrics = {**(metrics or {}), "step": meta["step"]}
    return save_pretrained(model, out_dir, classes=meta.get("classes"), eval=test or None,
                           training_config=cfg or None, metrics=metrics)


def _check_export_folder(out: Path) -> None:
    """Refuses a folder whose ``config.json``, ``model.safetensors`` or ``README.md`` an export did not write."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"OUT_DIR {out} is a file, not a folder; choose a folder to write the model into")
    present = [name for name in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME) if os.path.lexists(out / name)]
    if not present:
        return
    try:
        ours = json.loads((out / CONFIG_NAME).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours or any((out / name).is_symlink() for name in present):
        raise ConfigError(
            f"OUT_DIR {out} holds {', '.join(present)} that no export wrote (no {CONFIG_NAME} of format {FORMAT}); "
            f"they would be replaced: choose an empty or new folder (nothing was written)"
        )
