"""The CPU kernels give the plain ops' outputs and gradients; training gradients equal torchvision's."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.video.swin_transformer import SwinTransformer3d

import video_swin
from video_swin.checkpoints import load_checkpoint
from video_swin.checkpoints.formats import to_canonical
from video_swin.models import kernels
from video_swin.models.attention import gather_bias
from video_swin.models.kernels import attention as fused_attention
from video_swin.models.kernels import block as fast_block
from video_swin.models.kernels import inference, mlp, switches
from video_swin.models.kernels.partition import reorder_tokens, window_order
from video_swin.models.windows import (
    relative_position_index,
    shift_mask,
    window_partition,
)


def rel_diff(ours, ref):
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def run(fn, inputs, grad_out, fast):
    """fn(*inputs) with fast paths on or off: (output, input gradients)."""
    inputs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    with kernels.fast_paths(attention=fast, linear=fast):
        out = fn(*inputs)
    out.backward(grad_out)
    return out.detach(), [t.grad for t in inputs if t.requires_grad]


def plain_window_attention(x, heads, table, index, mask, qkv_weight=None, qkv_bias=None):
    """The reference computation: projection, then SDPA with bias (+ mask) as the additive mask."""
    qkv = x if qkv_weight is None else F.linear(x, qkv_weight, qkv_bias)
    bw, n, c3 = qkv.shape
    q, k, v = qkv.view(bw, n, 3, heads, c3 // 3 // heads).permute(2, 0, 3, 1, 4)  # 3 x (B*nW, nH, N, Dh)
    attn_mask = gather_bias(table, index).unsqueeze(0)  # (1, nH, N, N)
    if mask is not None:
        attn_mask = (attn_mask + mask.unsqueeze(1)).repeat(bw // mask.shape[0], 1, 1, 1)  # (B*nW, nH, N, N)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B*nW, nH, N, Dh)
    return out.transpose(1, 2).reshape(bw, n, c3 // 3)


@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("projected", [False, True])
@pytest.mark.parametrize("recompute_qkv", [False, True])
def test_window_attention_matches_sdpa(monkeypatch, shifted, projected, recompute_qkv):
    # Small chunks, so that chunks split a sample's windows and end at sample boundaries.
    monkeypatch.setattr(fused_attention, "CHUNK_BYTES", 3 * 2 * 48 * 48 * 4)
    torch.manual_seed(0)
    window, size, heads, c = (3, 4, 4), (3, 8, 12), 2, 16
    mask = shift_mask(size, window, (0, 2, 2)) if shifted else None  # (6, 48, 48) or None
    index = relative_position_index(window)
    table = torch.randn(int(index.max()) + 1, heads) * 0.5
    bw, n = 2 * 6, 48
    x = torch.randn(bw, n, c if projected else 3 * c)
    w, b = torch.randn(3 * c, c) * c**-0.5, torch.randn(3 * c) * 0.1
    grad = torch.randn(bw, n, c)

    def fused(x, table, *proj):
        kwargs = dict(qkv_weight=proj[0], qkv_bias=proj[1]) if proj else {}
        return kernels.window_attention(x, heads, table, index, mask, recompute_qkv=recompute_qkv, **kwargs)

    def plain(x, table, *proj):
        return plain_window_attention(x, heads, table, index, mask, *proj)

    inputs = [x, table, w, b] if projected else [x, table]
    out_ref, grads_ref = run(plain, inputs, grad, fast=False)
    out, grads = run(fused, inputs, grad, fast=True)
    assert rel_diff(out, out_ref) < 1e-5
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert rel_diff(g, g_ref) < 1e-5


def test_window_attention_refuses_where_it_does_not_apply():
    index = relative_position_index((2, 2))
    with kernels.fast_paths(attention=False), pytest.raises(RuntimeError, match="does not apply"):
        kernels.window_attention(torch.randn(2, 4, 24), 2, torch.randn(9, 2), index)
    with pytest.raises(RuntimeError, match="does not apply"):
        kernels.window_attention(torch.randn(2, 4, 24).double(), 2, torch.randn(9, 2).double(), index)


def test_fast_attention_is_used_and_keeps_no_attention_matrix():
    torch.manual_seed(0)
    index = relative_position_index((4, 4))
    table = torch.randn(49, 2, requires_grad=True)
    x = torch.randn(8, 16, 48, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        out = kernels.window_attention(x, 2, table, index)
    assert type(out.grad_fn).__name__ == "_WindowAttentionBackward"
    assert (8, 2, 16, 16) not in saved  # no (B*nW, nH, N, N) probabilities kept


@pytest.fixture(params=[("onednn", "fused"), ("aten", "separate")], ids=["onednn-fused", "aten-separate"])
def machine_choices(request):
    """Both ways of the per-machine choices (weight gradients, fc1 + GELU): each machine takes one."""
    with switches.machine_choices(weight_grad=request.param[0], fc1_gelu=request.param[1]):
        yield request.param


def test_linear_matches_f_linear(machine_choices):
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 5, 7, 24), torch.randn(40, 24), torch.randn(40)
    grad = torch.randn(2, 5, 7, 40)
    for bias in (b, None):
        inputs = [x, w] + ([bias] if bias is not None else [])
        out_ref, grads_ref = run(lambda *t: F.linear(*t), inputs, grad, fast=False)
        out, grads = run(lambda *t: kernels.linear(*t), inputs, grad, fast=True)
        assert rel_diff(out, out_ref) < 1e-6
        for g, g_ref in zip(grads, grads_ref, strict=True):
            assert rel_diff(g, g_ref) < 1e-5


@pytest.mark.parametrize("chunked, keep_hidden", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("norm", [True, False])
def test_recomputed_mlp_matches_plain_mlp(monkeypatch, norm, chunked, keep_hidden, machine_choices):
    if chunked:  # 30 rows in chunks of 8, 8, 8, 6
        monkeypatch.setattr(mlp, "MLP_MIN_ROWS", 1)
        monkeypatch.setattr(mlp, "MLP_CHUNK_BYTES", 8 * 64 * 4)
        assert len(mlp.row_chunks(30, 64, 4, torch.device("cpu"))) == 4
    torch.manual_seed(0)
    c, hidden = 16, 64
    x = torch.randn(2, 3, 5, c)
    params = [torch.randn(hidden, c) * 0.2, torch.randn(hidden) * 0.1, torch.randn(c, hidden) * 0.1, torch.randn(c)]
    norm_params = [torch.randn(c) * 0.1 + 1, torch.randn(c) * 0.1] if norm else []
    grad = torch.randn(2, 3, 5, c)

    def plain(x, w1, b1, w2, b2, *nw):
        y = F.layer_norm(x, (c,), *nw) if nw else x
        return F.linear(F.gelu(F.linear(y, w1, b1)), w2, b2)

    out_ref, grads_ref = run(plain, [x, *params, *norm_params], grad, fast=False)
    for fast in (False, True):  # generic ops and the oneDNN path
        kernel = lambda *t: kernels.recomputed_mlp(*t, keep_hidden=keep_hidden)  # noqa: E731
        out, grads = run(kernel, [x, *params, *norm_params], grad, fast=fast)
        assert rel_diff(out, out_ref) < 1e-5
        for g, g_ref in zip(grads, grads_ref, strict=True):
            assert rel_diff(g, g_ref) < 1e-5


def test_recompute_keeps_what_it_says_where_the_map_is_large():
    """Elements saved for backward by a one-block model: the recomputes drop exactly the MLP's hidden layer
    (4C per token) and the qkv projection (3C), and only in blocks whose input reaches ``recompute_from``."""
    model = video_swin.create_model("swin3d_t", num_classes=0, embed_dim=16, depths=(1,), num_heads=(1,),
                                    window_size=(2, 4, 4)).train()  # fmt: skip
    x = torch.randn(1, 3, 4, 16, 16)
    tokens_c = 2 * 4 * 4 * 16  # the block's input: (1, 2, 4, 4, 16) float32, 2048 bytes

    def saved(reference=False, **options):
        kernels.reference(model) if reference else kernels.accelerate_cpu(model, **options)
        numels = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: numels.append(t.numel()) or t, lambda t: t):
            model(x)
        return sum(numels)

    base = saved(recompute_from=0)
    assert saved(recompute_from=0, recompute_mlp=False) == base + 4 * tokens_c
    assert saved(recompute_from=0, recompute_qkv=False) == base + 3 * tokens_c
    assert saved(recompute_from=2048) == base  # the input's size exactly: recomputes
    assert saved(recompute_from=2049) == base + 7 * tokens_c
    assert saved() == base + 7 * tokens_c  # the default threshold (8 MiB) keeps this tiny map's activations
    assert saved(reference=True) >= base + 9 * tokens_c  # the reference modules keep more than either


@pytest.mark.parametrize("seam, recompute_from, mlp_chunk_rows", [
    (False, None, None),
    (True, None, None),  # the default threshold: these small maps keep their activations
    (True, 0, None),  # recomputes in every block
    (True, 0, 100),
])  # fmt: skip
@pytest.mark.parametrize("shape", [(2, 3, 8, 32, 32), (1, 3, 7, 36, 44)])
def test_training_gradients_equal_torchvision(monkeypatch, shape, seam, recompute_from, mlp_chunk_rows):
    """A small Video Swin in training mode: loss, input gradient and every parameter gradient."""
    if mlp_chunk_rows:  # MLP rows in several chunks, the last one short
        monkeypatch.setattr(mlp, "MLP_MIN_ROWS", mlp_chunk_rows)
        monkeypatch.setattr(mlp, "MLP_CHUNK_BYTES", 1)
    torch.manual_seed(0)
    arch = dict(embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4, 4])
    ref = SwinTransformer3d(patch_size=[2, 4, 4], stochastic_depth_prob=0.0, num_classes=10, **arch).train()
    ours = video_swin.create_model("swin3d_t", num_classes=10, drop_path_rate=0.0, head_dropout=0.0, **arch).train()
    kernels.accelerate_cpu(ours, enabled=seam, **({} if recompute_from is None else {"recompute_from": recompute_from}))
    report = load_checkpoint(ours, ref.state_dict())
    assert not report.missing and not report.unexpected
    x = torch.randn(shape)
    y = torch.tensor([3, 7][: shape[0]])
    grads = {}
    for name, model in (("ref", ref), ("ours", ours)):
        xi = x.clone().requires_grad_()
        loss = F.cross_entropy(model(xi), y)
        loss.backward()
        grads[name] = (loss.detach(), xi.grad, {k: p.grad for k, p in model.named_parameters()})
    (loss_ref, x_ref, p_ref), (loss, x_grad, p_ours) = grads["ref"], grads["ours"]
    assert abs(loss.item() - loss_ref.item()) < 1e-5
    assert rel_diff(x_grad, x_ref) < 1e-4
    p_ref, _, _ = to_canonical(p_ref)
    assert set(p_ref) == set(p_ours)
    for key, g in p_ours.items():
        assert rel_diff(g, p_ref[key]) < 1e-4, key


@pytest.mark.parametrize("size, window, shift", [((4, 8, 12), (2, 4, 4), (1, 2, 2)), ((6, 6), (3, 3), (0, 1))])
def test_window_order_is_roll_and_partition(size, window, shift):
    x = torch.randn(2, *size, 5)
    dims = tuple(range(1, len(size) + 1))
    order, position = window_order(size, window, shift)
    expected = window_partition(torch.roll(x, tuple(-s for s in shift), dims), window)
    windows = reorder_tokens(x.view(2, -1, 5), order, position)
    assert torch.equal(windows.view_as(expected), expected)
    back = reorder_tokens(windows, position, order).view_as(x)
    assert torch.equal(back, x)
    # the gradient of a gather with its inverse given equals the scatter's
    leaf = x.view(2, -1, 5).clone().requires_grad_()
    g = torch.randn(2, leaf.shape[1], 5)
    reorder_tokens(leaf, order, position).backward(g)
    fast = leaf.grad.clone()
    leaf.grad = None
    reorder_tokens(leaf, order).backward(g)
    assert torch.equal(fast, leaf.grad)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_inference_in_mlp_chunks_equals_torchvision(monkeypatch, mode):
    """With grad disabled the MLP runs through the chunked kernel (GELU fused into fc1): same logits."""
    monkeypatch.setattr(mlp, "MLP_MIN_ROWS", 64)
    monkeypatch.setattr(mlp, "MLP_CHUNK_BYTES", 1)
    torch.manual_seed(0)
    arch = dict(embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4, 4])
    ref = SwinTransformer3d(patch_size=[2, 4, 4], num_classes=10, **arch).eval()
    ours = kernels.accelerate_cpu(video_swin.create_model("swin3d_t", num_classes=10, **arch).eval())
    load_checkpoint(ours, ref.state_dict())
    x = torch.randn(2, 3, 8, 36, 44)  # 2*4*9*11 = 792 stage-1 rows: 13 chunks, the last one short
    calls = []
    monkeypatch.setattr(mlp._RecomputedMlp, "apply", lambda *a, f=mlp._RecomputedMlp.apply: calls.append(1) or f(*a))
    with getattr(torch, mode)():
        out, out_ref = ours(x), ref(x)
    assert len(calls) == 4  # every block's MLP went through the kernel
    assert rel_diff(out, out_ref) < 1e-5


@pytest.mark.parametrize("name", ["swin3d_t", "swinv2_3d_t"])
@pytest.mark.parametrize("shape", [(2, 3, 8, 32, 32), (1, 3, 6, 36, 44)])  # the second one pads
def test_inference_a_few_windows_at_a_time(monkeypatch, name, shape):
    """Chunked inference (one window per chunk) gives the logits of the whole-map path."""
    torch.manual_seed(0)
    kw = dict(embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=(4, 4, 4))
    model = kernels.accelerate_cpu(video_swin.create_model(name, num_classes=10, **kw).eval())
    x = torch.randn(shape)
    calls = []
    real = inference.windowed_residual
    monkeypatch.setattr(fast_block, "windowed_residual", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(inference, "INFERENCE_CHUNK_BYTES", 1)
    with torch.inference_mode():
        with kernels.fast_paths(inference_chunks=False):
            ref = model(x)
        assert not calls
        out = model(x)
    # maps that need padding take the whole-map path: the second shape pads in both stages
    assert bool(calls) == (shape == (2, 3, 8, 32, 32))
    assert rel_diff(out, ref) < 1e-5
