"""Window helpers against small hard-coded 2D and 3D references."""

import torch
import torchvision.models.video.swin_transformer as tv3d

from video_swin.models.windows import (
    MASK_VALUE,
    fit_window,
    pad_to_window,
    relative_coords_table,
    relative_position_index,
    shift_mask,
    window_partition,
    window_reverse,
)


def test_partition_2d_hard_coded():
    x = torch.arange(16).view(1, 4, 4, 1)
    windows = window_partition(x, (2, 2)).squeeze(-1)  # (nW, N)
    expected = torch.tensor([[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]])
    assert torch.equal(windows, expected)


def test_partition_3d_hard_coded():
    x = torch.arange(16).view(1, 2, 2, 4, 1)  # (B, T, H, W, C)
    windows = window_partition(x, (2, 2, 2)).squeeze(-1)
    expected = torch.tensor([[0, 1, 4, 5, 8, 9, 12, 13], [2, 3, 6, 7, 10, 11, 14, 15]])
    assert torch.equal(windows, expected)


def test_partition_reverse_roundtrip_with_channels():
    x = torch.randn(2, 4, 14, 21, 5)
    w = (2, 7, 7)
    windows = window_partition(x, w)
    assert windows.shape == (2 * 2 * 2 * 3, 2 * 7 * 7, 5)
    assert torch.equal(window_reverse(windows, w, (4, 14, 21)), x)


def test_relative_position_index_2d_hard_coded():
    expected = torch.tensor([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])
    assert torch.equal(relative_position_index((2, 2)), expected)


def test_relative_position_index_3d_matches_torchvision():
    attn = tv3d.ShiftedWindowAttention3d(dim=6, window_size=[8, 7, 7], shift_size=[0, 0, 0], num_heads=3)
    assert torch.equal(relative_position_index((8, 7, 7)), attn.relative_position_index)


def test_clamped_window_index_gives_true_offsets():
    table_window, window = (8, 7, 7), (4, 3, 5)
    index = relative_position_index(window, table_window)
    offsets = relative_coords_table(table_window)[index]  # (N, N, 3)
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")).flatten(1).T
    assert torch.equal(offsets, coords[:, None, :] - coords[None, :, :])
    # The official/torchvision slice [:N, :N] of the full index is wrong here.
    sliced = relative_position_index(table_window)[: index.shape[0], : index.shape[0]]
    assert not torch.equal(sliced, index)


def test_sliced_index_is_right_when_only_time_shrinks():
    full = relative_position_index((8, 7, 7))
    n = 3 * 7 * 7
    assert torch.equal(relative_position_index((3, 7, 7), (8, 7, 7)), full[:n, :n])


def test_shift_mask_2d_hard_coded():
    mask = shift_mask((4, 4), (2, 2), (1, 1))
    labels = torch.tensor([[0, 0, 0, 0], [1, 2, 1, 2], [3, 3, 6, 6], [4, 5, 7, 8]])
    expected = (labels[:, :, None] != labels[:, None, :]).float() * MASK_VALUE
    assert torch.equal(mask, expected)


def test_shift_mask_3d_matches_torchvision():
    size, window, shift = (4, 14, 21), (2, 7, 7), (1, 3, 3)
    ours = shift_mask(size, window, shift)
    theirs = tv3d._compute_attention_mask_3d(torch.zeros(1), size, window, shift)
    assert torch.equal(ours, theirs)


def test_fit_window_clamps_and_unshifts():
    assert fit_window((4, 56, 56), (8, 7, 7), (4, 3, 3)) == ((4, 7, 7), (0, 3, 3))
    assert fit_window((8, 7, 9), (8, 7, 7), (4, 3, 3)) == ((8, 7, 7), (0, 0, 3))
    assert fit_window((5, 5), (7, 7), (3, 3)) == ((5, 5), (0, 0))


def test_pad_to_window_pads_at_end_only():
    x = torch.ones(1, 3, 5, 6, 2)
    y = pad_to_window(x, (2, 7, 7))
    assert y.shape == (1, 4, 7, 7, 2)
    assert torch.equal(y[:, :3, :5, :6], x) and y.sum() == x.sum()
