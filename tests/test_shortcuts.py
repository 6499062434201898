"""The shortcut diagnostics: content shifts, pretext accuracy under a shift, the JPEG block grid."""

import pytest
import torch
import torch.nn as nn

from sslbook.diagnostics import boundary_contrast, shift_content, shifted_accuracy


def test_shift_content_moves_pixels_and_reflects_the_border():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    y = shift_content(x, 2)
    assert y.shape == x.shape
    assert torch.equal(y[..., 2:, 2:], x[..., :4, :4])  # content moved right and down by 2
    assert torch.equal(y[..., 2:, 0], x[..., :4, 2])  # reflected column: x[-2] mirrors x[2]
    assert torch.equal(shift_content(x, 0), x)


def test_shift_content_keeps_uint8_and_rejects_bad_shifts():
    x = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    assert shift_content(x, 3).dtype == torch.uint8
    with pytest.raises(ValueError, match="shift must be in 0..7"):
        shift_content(x, 8)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        shift_content(x[0], 1)


class _TopLeftReader(nn.Module):
    """A 'pretext task' solved by reading the pixel at (0, 0): right only when it is positive."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.draws = []

    def forward(self, views):
        self.draws.append(torch.rand(1).item())  # the same draws for every shift
        return {"accuracy": (views[0][:, 0, 0, 0] > 0).float().mean() * 100}


def test_shifted_accuracy_reports_each_shift_with_the_same_draws():
    x = -torch.ones(4, 1, 6, 6)
    x[:, :, 0, 0] = 1.0  # only the top-left pixel is positive
    method = _TopLeftReader()
    acc = shifted_accuracy(method, x, shifts=[0, 1, 2], batch_size=3)
    assert acc == {0: 100.0, 1: 0.0, 2: 0.0}  # shift 1 reflects x[1, 1] = -1 into the corner
    assert method.draws[0:2] == method.draws[2:4] == method.draws[4:6]  # two batches per shift
    assert method.training  # the mode is put back


def test_boundary_contrast_finds_an_8px_block_grid():
    blocks = torch.rand(5, 3, 4, 4).repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)  # 32 x 32
    contrast = boundary_contrast(blocks)
    assert contrast.shape == (31,)
    assert set(torch.nonzero(contrast).flatten().tolist()) == {7, 15, 23}
    ramp = torch.arange(4.0).repeat(1, 1, 2, 1)  # columns 0, 1, 2, 3
    assert torch.allclose(boundary_contrast(ramp), torch.ones(3))
