"""What this CPU is good at, measured once per machine: the choices the fast paths make from it.

A speed-up measured on one CPU need not hold on another: oneDNN's matmul beats
MKL's sgemm by 1.3x-1.8x on AMD EPYC (where MKL takes a generic path), and
bf16 autocast doubles GEMM speed on CPUs with AVX512-BF16 or AMX but is several
times *slower* than float32 on CPUs without them (it is emulated). So the
choices are not assumed from the vendor; :func:`cpu_profile` times them:

* float32 linear layers: oneDNN (``mkldnn._linear_pointwise``) or ATen
  (``F.linear``, MKL/OpenBLAS), interleaved, on a Swin-sized GEMM; oneDNN is
  kept unless ATen is at least 5% faster;
* where oneDNN serves the linears, two more of its choices, timed the same way:
  weight gradients through oneDNN (which copies its transposed operands
  first) or ATen's ``mm`` (which takes them as they are), and fc1 + GELU as
  one fused oneDNN op or as the GEMM followed by an in-place GELU (on AMD
  EPYC Zen 3: ATen and separate, by 1.2x-1.8x and ~1.2x);
* the attention forward under bf16 autocast: chunked ``bmm`` (which uses
  AVX512-BF16/AMX dot products: 1.5x the flash kernel on an AVX-512 EPYC)
  or the flash kernel (18x the chunked ``bmm`` on AVX2 Zen 3, where bf16 is
  emulated);
* the machine's float32 and bf16 GEMM rates (GFLOP/s), which the benchmarks
  report as the limit and the trainer uses to warn about bf16 without bf16
  hardware.

The result is cached in memory and in ``$VIDEO_SWIN_CACHE/cpu-profile/``
(keyed by CPU model, instruction flags, torch version and thread count), so
the ~1.5 s of timing happens once per machine. ``VIDEO_SWIN_CPU_LINEAR=onednn``
or ``=aten`` forces the linear choice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .attention import chunked_forward, flash_forward
from .checks import usable
from .switches import FLASH_CPU, ONEDNN_LINEAR

logger = logging.getLogger(__name__)

PROFILE_VERSION = 3
_PROFILE: CpuProfile | None = None
# Shapes of a Swin-T stage-3 MLP (tokens, in, out), small enough to time in about half a second.
_FP32_SHAPE = (1568, 384, 1536)
_BF16_SHAPE = (784, 384, 384)  # smaller: emulated bf16 runs at a few GFLOP/s


@dataclass(frozen=True)
class CpuProfile:
    """Measured properties of this CPU (see the module's docstring)."""

    cpu: str
    capability: str  # torch's dispatch level, e.g. "AVX2", "AVX512"
    bf16_native: bool  # AVX512-BF16 or AMX-BF16 instructions present
    threads: int
    fp32_gflops: float  # the faster of the two linear paths
    bf16_gflops: float
    onednn_speedup: float  # time(ATen) / time(oneDNN) for the float32 GEMM; > 1: oneDNN faster
    linear: str  # "onednn" or "aten": what FastLinear uses for float32
    # time(oneDNN with copies) / time(ATen mm) for a weight gradient; > 1: ATen faster
    weight_grad_speedup: float = 1.0
    weight_grad: str = "onednn"  # "onednn" or "aten": weight gradients of the oneDNN linears
    gelu_split_speedup: float = 1.0  # time(fused fc1 + GELU) / time(GEMM, then GELU); > 1: separate faster
    fc1_gelu: str = "fused"  # "fused" or "separate"
    bf16_flash_speedup: float = 1.0  # time(chunked bmm) / time(flash kernel), bf16 attention; > 1: flash faster
    bf16_attention: str = "chunked"  # "chunked" or "flash": the attention forward under bf16 autocast

    def describe(self) -> str:
        bf16 = "native" if self.bf16_native else "emulated (no AVX512-BF16/AMX)"
        return (f"{self.cpu} ({self.capability}, {self.threads} threads): float32 GEMM {self.fp32_gflops:.0f} "
                f"GFLOP/s, bf16 GEMM {self.bf16_gflops:.0f} GFLOP/s ({bf16}); oneDNN {self.onednn_speedup:.2f}x "
                f"ATen for float32 linears -> {self.linear}; weight gradients: ATen {self.weight_grad_speedup:.2f}x "
                f"oneDNN -> {self.weight_grad}; fc1 + GELU: separate {self.gelu_split_speedup:.2f}x fused "
                f"-> {self.fc1_gelu}; bf16 attention: flash {self.bf16_flash_speedup:.2f}x chunked "
                f"-> {self.bf16_attention}")  # fmt: skip

    def choices(self) -> dict[str, str]:
        """The choices for :func:`~.switches.set_machine_choices`."""
        return {"linear": self.linear, "weight_grad": self.weight_grad, "fc1_gelu": self.fc1_gelu,
                "bf16_attention": self.bf16_attention}  # fmt: skip


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what the platform reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(reps: int = 5) -> CpuProfile:
    """Times the choices now (about 1.5 s); see :func:`cpu_profile` for the cached result."""
    m, k, n = _FP32_SHAPE
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(s, generator=gen) for s in ((m, k), (n, k), (n,)))
    aten = lambda: F.linear(x, w, b)  # noqa: E731
    has_onednn, has_flash = ONEDNN_LINEAR and usable("linear"), FLASH_CPU and usable("attention")
    onednn = (lambda: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")) if has_onednn else aten  # noqa: E731
    t = _interleaved({"aten": aten, "onednn": onednn}, reps)  # in turns: a busy neighbour slows both alike
    a, o = t["aten"], t["onednn"]
    flops = 2 * m * k * n
    # The two oneDNN-only choices, on the same shape: dW = g^T x, and fc1 + GELU.
    g = torch.randn(m, n, generator=gen)
    dw = _interleaved({
        "onednn": lambda: torch.ops.mkldnn._linear_pointwise(x.t(), g.t(), None, "none", [], "").t(),
        "aten": lambda: torch.mm(g.t(), x),
    }, reps) if has_onednn else {"onednn": 1.0, "aten": 1.0}  # fmt: skip
    gelu = _interleaved({
        "fused": lambda: torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "none"),
        "separate": lambda: torch.ops.aten.gelu_(torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")),
    }, reps) if has_onednn and usable("fc1_gelu_fused") else {"fused": 1.0, "separate": 1.0}  # fmt: skip
    mb, kb, nb = _BF16_SHAPE
    xb, wb = torch.randn(mb, kb, generator=gen).bfloat16(), torch.randn(nb, kb, generator=gen).bfloat16()
    bf16 = lambda: F.linear(xb, wb)  # noqa: E731
    bf16()
    t_bf16 = _median_time(bf16, 3)
    # Two windows of a stage-1 Swin-T block (392 tokens, 3 heads): ~50 ms chunked where bf16 is emulated.
    qkv, bias = torch.randn(2, 392, 288, generator=gen).bfloat16(), torch.randn(3, 392, 392, generator=gen).bfloat16()
    attention = _interleaved({
        "chunked": lambda: chunked_forward(qkv, bias, None, 3, 0.17, 2),
        "flash": lambda: flash_forward(qkv, bias, None, 3, 0.17, 2),
    }, 3) if has_flash else {"chunked": 1.0, "flash": 1.0}  # fmt: skip
    choice = choose_linear(a, o, os.environ.get("VIDEO_SWIN_CPU_LINEAR", ""))
    flags = _flags()
    return CpuProfile(
        cpu=cpu_model(), capability=str(torch.backends.cpu.get_cpu_capability()),
        bf16_native=bool(flags & {"avx512_bf16", "amx_bf16"}), threads=torch.get_num_threads(),
        fp32_gflops=round(flops / min(a, o) / 1e9, 1), bf16_gflops=round(2 * mb * kb * nb / t_bf16 / 1e9, 1),
        onednn_speedup=round(a / o, 3), linear=choice,
        weight_grad_speedup=round(dw["onednn"] / dw["aten"], 3),
        weight_grad=keep_unless_faster("onednn", dw["onednn"], "aten", dw["aten"]),
        gelu_split_speedup=round(gelu["fused"] / gelu["separate"], 3),
        fc1_gelu=keep_unless_faster("fused", gelu["fused"], "separate", gelu["separate"]),
        bf16_flash_speedup=round(attention["chunked"] / attention["flash"], 3),
        bf16_attention=keep_unless_faster("chunked", attention["chunked"], "flash", attention["flash"]),
    )  # fmt: skip


def _interleaved(fns: dict, reps: int) -> dict[str, float]:
    """Median seconds of each function, timed in turns after one warm-up call each (oneDNN primitive
    creation, page faults)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(_median_time(fn, 1))
    return {name: statistics.median(t) for name, t in times.items()}


def keep_unless_faster(default: str, default_s: float, other: str, other_s: float) -> str:
    """``default`` unless ``other`` took at least 5% less time: a near tie is timing noise, not a reason to switch."""
    return other if other_s < 0.95 * default_s else default


def choose_linear(aten_s: float, onednn_s: float, forced: str = "") -> str:
    """"onednn" unless ATen took at least 5% less time (or ``forced`` names one); "aten" without oneDNN."""
    forced = forced.strip().lower()
    if not (ONEDNN_LINEAR and usable("linear")):
        return "aten"
    if forced in ("onednn", "aten"):
        return forced
    return keep_unless_faster("onednn", onednn_s, "aten", aten_s)


def _cache_file() -> Path:
    key = "\0".join([cpu_model(), " ".join(sorted(_flags())), torch.__version__, str(torch.get_num_threads()),
                     str(PROFILE_VERSION), os.environ.get("VIDEO_SWIN_CPU_LINEAR", "")])  # fmt: skip
    root = Path(os.environ.get("VIDEO_SWIN_CACHE") or "~/.cache/video-swin").expanduser()
    return root / "cpu-profile" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def cpu_profile(refresh: bool = False) -> CpuProfile:
    """This machine's :class:`CpuProfile`: from memory, from the disk cache, or measured now."""
    global _PROFILE
    if _PROFILE is not None and not refresh and _PROFILE.threads == torch.get_num_threads():
        return _PROFILE
    path = _cache_file()
    # One process measures, the others of the machine wait and read its result: a timing
    # choice made separately per process could differ between the processes of one run,
    # whose results would then differ in the last bits.
    with _locked(path.with_suffix(".lock")):
        profile = None if refresh else _read(path)
        if profile is None:
            profile = measure()
            logger.info("CPU profile measured: %s", profile.describe())
            try:
                tmp = path.with_suffix(f".tmp-{os.getpid()}")
                tmp.write_text(json.dumps(asdict(profile), indent=1))
                os.replace(tmp, path)
            except OSError as exc:  # a read-only home costs half a second per process, nothing else
                logger.debug("cannot store the CPU profile in %s: %s", path, exc)
    _PROFILE = profile
    return profile


def _read(path: Path) -> CpuProfile | None:
    try:
        return CpuProfile(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):  # absent, damaged or from another version
        return None


@contextlib.contextmanager
def _locked(lock: Path):
    """An exclusive ``lockf`` on ``lock`` while the block runs; no lock where the folder is not writable."""
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def bf16_warning(profile: CpuProfile, faster: str = "train.mixed_precision=no") -> str | None:
    """A warning when bf16 would be slower than float32 on this CPU (``faster``: what to use instead); None otherwise."""
    if profile.bf16_native or profile.bf16_gflops >= profile.fp32_gflops:
        return None
    return (f"bf16 on this CPU ({profile.cpu}, no AVX512-BF16/AMX) is emulated: its GEMMs run at "
            f"{profile.bf16_gflops:.0f} GFLOP/s against {profile.fp32_gflops:.0f} in float32 "
            f"({profile.fp32_gflops / max(profile.bf16_gflops, 1e-9):.1f}x slower); "
            f"{faster} is faster here")  # fmt: skip
