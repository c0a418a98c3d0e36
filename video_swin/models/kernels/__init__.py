"""CPU fast paths of the Swin core, applied to a built model in one call.

>>> model = accelerate_cpu(create_model("swin3d_t"))   # same weights and outputs, faster on CPU
>>> reference(model)                                    # back to the plain-PyTorch modules

The model files (:mod:`..swin`, :mod:`..attention`) are the reference in
standard PyTorch and know nothing of this package. :func:`accelerate_cpu`
swaps their modules for subclasses with the same state-dict keys that take
these paths where they apply and the reference computation elsewhere:

* :mod:`.attention`: window attention through PyTorch's fused CPU flash
  kernel, with a chunked backward that also gives the bias its gradient;
  recomputing the qkv projection in backward where the map is large.
* :mod:`.linear`: linear layers through oneDNN (float32 CPU), where
  :mod:`.machine` measured it faster than ATen on this machine.
* :mod:`.mlp`: the MLP branch keeping only its input for backward, in row
  chunks, where the map is large (``recompute_from``); fc1's output too elsewhere.
* :mod:`.partition`: cyclic shift + window partition as one gather.
* :mod:`.inference`: inference a few windows at a time.
* :mod:`.block`: the block that puts them together.
* :mod:`.checks`: the private ATen/oneDNN ops these paths call, checked once
  per process on a tiny input; a path whose op is missing or differs is off
  (one warning) and the reference runs in its place.

They apply to CPU tensors in float32 (the attention also under CPU bf16
autocast, in bfloat16) and fall back to the reference ops otherwise (GPUs,
other dtypes, ``torch.compile``, attention dropout). The recomputation in
the MLP branch works on any device. :func:`set_fast_paths` turns paths off
globally, to measure them. Figures: docs/BENCHMARKS.md.
"""

from .attention import FastWindowAttention, window_attention
from .block import FastSwinBlock
from .inference import use_inference_chunks, windowed_residual
from .linear import FastLinear, linear
from .machine import CpuProfile, cpu_profile
from .mlp import recomputed_mlp
from .partition import reorder_tokens, window_order
from .seam import accelerate_cpu, is_accelerated, reference
from .switches import RECOMPUTE_FROM_BYTES, fast_paths, linear_backend, set_fast_paths, set_linear_backend

__all__ = [
    "RECOMPUTE_FROM_BYTES",
    "CpuProfile",
    "FastLinear",
    "FastSwinBlock",
    "FastWindowAttention",
    "accelerate_cpu",
    "cpu_profile",
    "fast_paths",
    "is_accelerated",
    "linear",
    "linear_backend",
    "recomputed_mlp",
    "reference",
    "reorder_tokens",
    "set_fast_paths",
    "set_linear_backend",
    "use_inference_chunks",
    "window_attention",
    "window_order",
    "windowed_residual",
]
