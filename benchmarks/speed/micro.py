"""The ``micro`` part: single kernels against the stock ops they replace, on stage-1 sizes."""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from video_swin.models.attention import gather_bias
from video_swin.models.kernels import attention as fused_attention
from video_swin.models.kernels.linear import mm
from video_swin.models.kernels.partition import reorder_tokens, window_order
from video_swin.models.windows import relative_position_index, window_partition

from .common import interleave, medians


def micro_part(args: argparse.Namespace) -> list[dict]:
    """Single kernels against the stock ops they replace, interleaved, on stage-1 sizes of a 2x3x16x224x224 clip."""
    torch.manual_seed(0)
    tokens, c = 2 * 8 * 56 * 56, 96
    x1, w1, b1 = torch.randn(tokens, c), torch.randn(4 * c, c), torch.randn(4 * c)
    x2, w2 = torch.randn(tokens, 4 * c), torch.randn(c, 4 * c)
    g1 = torch.randn(tokens, 4 * c)  # fc1's output gradient
    rows = 5461  # one row chunk of the MLP kernel at stage 1 (MLP_CHUNK_BYTES of hidden layer)
    index = relative_position_index((8, 7, 7))
    n, table_rows = index.shape[0], int(index.max()) + 1
    table, bias_grad = torch.randn(table_rows, 12, requires_grad=True), torch.randn(12, n, n)
    windows, heads = 2 * 64, 3
    qkv = torch.randn(windows, n, 3 * c).bfloat16()
    bias = torch.randn(heads, n, n).bfloat16()
    clip = torch.randn(2, 8, 56, 56, c)
    order, position = window_order((8, 56, 56), (8, 7, 7), (4, 3, 3))

    def bias_step(fast: bool) -> None:
        table.grad = None
        b = gather_bias(table, index) if fast else table[index.reshape(-1)].view(n, n, 12).permute(2, 0, 1)
        b.backward(bias_grad)

    pairs = {
        "fc1 (50176x96 -> 384)": (lambda: mm(x1, w1, b1, True), lambda: F.linear(x1, w1, b1),
                                  "oneDNN", "F.linear (MKL)"),
        "fc2 (50176x384 -> 96)": (lambda: mm(x2, w2, None, True), lambda: F.linear(x2, w2),
                                  "oneDNN", "F.linear (MKL)"),
        "fc1 weight gradient (50176x96 -> 384)": (lambda: torch.mm(g1.t(), x1),
                                                  lambda: mm(x1.t(), g1.t(), None, True).t(),
                                                  "torch.mm (ATen)", "oneDNN (copies its operands)"),
        "fc1 + GELU, one row chunk (5461x96 -> 384)": (
            lambda: torch.ops.aten.gelu_(mm(x1[:rows], w1, b1, True)),
            lambda: torch.ops.mkldnn._linear_pointwise(x1[:rows], w1, b1, "gelu", [], "none"),
            "oneDNN GEMM, then gelu_", "oneDNN fused GELU"),
        "bias gather, forward + backward (8x7x7 window, 12 heads)": (
            lambda: bias_step(True), lambda: bias_step(False), "gather_bias", "table[index]"),
        "bf16 attention, 128 windows of 392 tokens, 3 heads": (
            lambda: fused_attention.chunked_forward(qkv, bias, None, heads, 0.1, 16),
            lambda: fused_attention.flash_forward(qkv, bias, None, heads, 0.1, 64), "chunked bmm", "flash kernel"),
        "shift + partition of a 2x8x56x56x96 map": (
            lambda: reorder_tokens(clip.view(2, -1, c), order, position),
            lambda: window_partition(torch.roll(clip, (-4, -3, -3), (1, 2, 3)), (8, 7, 7)),
            "reorder_tokens", "roll + window_partition"),
    }  # fmt: skip
    out = []
    for name, (ours, stock, ours_name, stock_name) in pairs.items():
        t = medians(interleave({"ours": ours, "stock": stock}, max(args.repeats, 5), max(args.warmup, 1)))
        out.append({"kernel": name, "ours": ours_name, "stock": stock_name, "ours_ms": 1e3 * t["ours"]["wall"],
                    "stock_ms": 1e3 * t["stock"]["wall"]})  # fmt: skip
    return out
