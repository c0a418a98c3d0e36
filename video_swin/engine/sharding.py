"""``train.distributed: fsdp``: the model sharded per Swin block with FSDP2, its state saved shard by shard.

Every process builds the whole model (pretrained weights loaded or inflated
as for DDP), then :func:`shard_model` applies ``fully_shard`` to each
:class:`~video_swin.models.SwinBlock` and to the model itself (the root unit:
patch embedding, patch merging, final norm, head). Each process then keeps
1/N of every parameter, and so of its gradient and AdamW states; a block's
parameters are gathered for its forward and backward only.

Why ``torch.distributed.fsdp.fully_shard`` and not accelerate's FSDP plugin:
accelerate 1.15 does offer FSDP2 (``FullyShardedDataParallelPlugin(fsdp_version=2)``),
but turns it on only for GPU-like process groups (``AcceleratorState`` keeps
``DistributedType.MULTI_CPU`` for CPU processes and ignores the plugin), and
there ``prepare`` would wrap the sharded model in DDP. Sharding here, before
``prepare``, gives the same code path on CPUs (gloo, where the tests run) and
GPUs; accelerate keeps the process group, devices, data loaders, autocast,
gradient accumulation and the rest of the saved state.

A training state holds each process's shards: ``model_shard_<rank>.safetensors``,
``optimizer_shard_<rank>.safetensors`` (AdamW's moments and step per
parameter) and ``optimizer_groups.json`` (the groups' hyperparameters), read
back by the same number of processes; nothing is pickled. The final
``model.safetensors`` is consolidated (:func:`full_state_dict`) and loads
like any other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..errors import ConfigError, ResumeError
from ..models import SwinBlock

GROUPS_FILE = "optimizer_groups.json"
# FSDP2 (fully_shard, MixedPrecisionPolicy) is public in torch.distributed.fsdp from this torch on. Its
# names are imported where used, not with this module: the trainer imports it for every run, and a run
# without fsdp must start on an older torch (pyproject.toml's floor) too.
FSDP2_TORCH = "2.6"


def _fsdp2() -> tuple[Any, Any]:
    """FSDP2's ``(MixedPrecisionPolicy, fully_shard)``; ConfigError naming the torch needed where this one lacks them."""
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # here, not above: see FSDP2_TORCH
    except ImportError:
        raise ConfigError(
            f"train.distributed: fsdp needs torch >= {FSDP2_TORCH} (FSDP2's fully_shard in torch.distributed.fsdp); "
            f"this is torch {torch.__version__}: upgrade torch, or use train.distributed: ddp"
        ) from None
    return MixedPrecisionPolicy, fully_shard


def _dtensor() -> type | None:
    """``DTensor``, or None on a torch without the public class (where nothing can have been sharded)."""
    try:
        from torch.distributed.tensor import DTensor  # where used: see FSDP2_TORCH
    except ImportError:
        return None
    return DTensor


def _model_file(folder: Path, rank: int) -> Path:
    return folder / f"model_shard_{rank}.safetensors"


def _optimizer_file(folder: Path, rank: int) -> Path:
    return folder / f"optimizer_shard_{rank}.safetensors"


def shard_model(model: nn.Module, device: torch.device, world_size: int, mixed_precision: str = "no") -> nn.Module:
    """Shards ``model`` in place over ``world_size`` processes: one FSDP2 unit per Swin block, then the root.

    Apply the device's fast paths (:func:`~video_swin.engine.build.for_device`)
    and load pretrained weights before, and build the optimizer after: it must
    hold the sharded parameters.

    Args:
        model: the whole model, the same in every process.
        device: this process's device; parameters move there.
        world_size: processes of the default process group.
        mixed_precision: ``"bf16"``: blocks gather bf16 parameters and reduce
            fp32 gradients (the master weights stay fp32); ``"no"``: fp32 throughout.

    Returns:
        ``model``, whose parameters are now ``DTensor`` shards.

    Raises:
        ConfigError: the processes form no process group (a launch of one process).
    """
    check_can_shard()
    mixed_precision_policy, fully_shard = _fsdp2()
    from torch.distributed.device_mesh import init_device_mesh  # with FSDP2's names: see FSDP2_TORCH

    mesh = init_device_mesh(device.type, (world_size,))
    policy = mixed_precision_policy()
    if mixed_precision == "bf16":
        policy = mixed_precision_policy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for module in model.modules():
        if isinstance(module, SwinBlock):
            fully_shard(module, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def check_can_shard() -> None:
    """Raises ConfigError unless this torch has FSDP2 and this process belongs to a process group it can shard over."""
    _fsdp2()
    if not torch.distributed.is_initialized():
        raise ConfigError(
            "train.distributed: fsdp shards the model over the processes of a distributed launch "
            "(accelerate launch --num_processes N, torchrun --nproc-per-node N); this run has one process: use ddp"
        )


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The whole weights of a sharded model on the CPU of process 0 (empty elsewhere); every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # see FSDP2_TORCH

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def save_shards(model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path, rank: int) -> None:
    """Writes this process's shards of the weights and AdamW states into ``folder`` (groups: by process 0)."""
    names = {p: n for n, p in model.named_parameters()}
    weights = {n: _local(p.detach()) for n, p in model.named_parameters()}
    states = {}
    for p, state in optimizer.state.items():
        for key, value in state.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"optimizer state {names[p]}.{key} is no tensor ({type(value).__name__})")
            states[f"{names[p]}/{key}"] = _local(value)
    save_file(weights, str(_model_file(folder, rank)))
    save_file(states, str(_optimizer_file(folder, rank)))
    if rank == 0:
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[p] for p in g["params"]]}
                  for g in optimizer.param_groups]  # fmt: skip
        (folder / GROUPS_FILE).write_text(json.dumps(groups, indent=1))


def load_shards(model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path, rank: int) -> None:
    """Restores what :func:`save_shards` wrote, bitwise, in the same number of processes.

    Raises:
        ResumeError: a file is missing or unreadable, or its shards are not
            this process's (another world size, another model).
    """
    files = (_model_file(folder, rank), _optimizer_file(folder, rank), folder / GROUPS_FILE)
    try:
        weights, states = load_file(str(files[0])), load_file(str(files[1]))
        groups = json.loads(files[2].read_text())
    except FileNotFoundError as e:
        raise ResumeError(f"{e.filename}: missing from this sharded (train.distributed: fsdp) state; "
                          f"was it saved by another number of processes, or with DDP?") from None  # fmt: skip
    except Exception as e:  # a truncated or corrupted file: name it
        raise ResumeError(f"{folder}: a shard of the state cannot be read ({type(e).__name__}: {e})") from e
    params = dict(model.named_parameters())
    if weights.keys() != params.keys():
        raise ResumeError(f"{files[0]}: holds other parameters than the model's")
    with torch.no_grad():
        for name, p in params.items():
            _local(p).copy_(_checked(weights[name], _local(p), files[0], name))
    index = {name: i for i, name in enumerate(params)}
    dtensor = _dtensor()
    state: dict[int, dict[str, Any]] = {}
    for key, value in states.items():
        name, _, field = key.rpartition("/")
        p = params[name]
        if field == "step":  # AdamW's step count: a plain scalar tensor, the same in every process
            state.setdefault(index[name], {})[field] = value
            continue
        local = _checked(value, _local(p), files[1], key)
        state.setdefault(index[name], {})[field] = (
            dtensor.from_local(local, p.device_mesh, p.placements, shape=p.shape, stride=p.stride())
            if dtensor is not None and isinstance(p, dtensor) else local
        )  # fmt: skip
    for group in groups:
        group["params"] = [index[name] for name in group["params"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _local(t: Tensor) -> Tensor:
    dtensor = _dtensor()
    return t.to_local() if dtensor is not None and isinstance(t, dtensor) else t


def _checked(saved: Tensor, target: Tensor, path: Path, name: str) -> Tensor:
    if saved.shape != target.shape or saved.dtype != target.dtype:
        raise ResumeError(f"{path}: {name} is {tuple(saved.shape)} {saved.dtype} in the file and "
                          f"{tuple(target.shape)} {target.dtype} in this process (another world size?)")  # fmt: skip
    return saved.to(target.device)
