"""Core colour maths: sRGB curves, CIELAB, CIEDE2000 against Sharma et al.'s test data."""

from __future__ import annotations

import pytest
import torch

from patchlab.color import delta_e_2000, linear_to_srgb, srgb_delta_e, srgb_to_lab, srgb_to_linear

# (Lab1, Lab2, dE00) from G. Sharma, W. Wu, E. Dalal (2005), Table 1: hue wrap-around,
# achromatic and near-neutral pairs, and large differences.
SHARMA = [
    ((50.0000, 2.6772, -79.7751), (50.0000, 0.0000, -82.7485), 2.0425),
    ((50.0000, 3.1571, -77.2803), (50.0000, 0.0000, -82.7485), 2.8615),
    ((50.0000, -1.3802, -84.2814), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, 0.0000, 0.0000), (50.0000, -1.0000, 2.0000), 2.3669),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0009), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0011), 7.2195),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0009, -2.4900), 4.8045),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0011, -2.4900), 4.7461),
    ((50.0000, 2.5000, 0.0000), (73.0000, 25.0000, -18.0000), 27.1492),
    ((50.0000, 2.5000, 0.0000), (56.0000, -27.0000, -3.0000), 31.9030),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((22.7233, 20.0904, -46.6940), (23.0331, 14.9730, -42.5619), 2.0373),
    ((90.9257, -0.5406, -0.9208), (88.6381, -0.8985, -0.7239), 1.5381),
    ((2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ciede2000_matches_sharma_reference(dtype):
    a = torch.tensor([p[0] for p in SHARMA], dtype=dtype)
    b = torch.tensor([p[1] for p in SHARMA], dtype=dtype)
    want = torch.tensor([p[2] for p in SHARMA], dtype=dtype)
    got = delta_e_2000(a, b, dim=-1)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, atol=1e-3 if dtype == torch.float32 else 1e-4, rtol=0)
    torch.testing.assert_close(delta_e_2000(b, a, dim=-1), got)  # symmetric


def test_srgb_curves_invert_and_lab_of_primaries():
    x = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(linear_to_srgb(srgb_to_linear(x)), x)
    lab = srgb_to_lab(torch.tensor([[1.0, 1, 1], [0, 0, 0], [1, 0, 0]], dtype=torch.float64), dim=-1)
    # white, black and sRGB red (reference Lab 53.24, 80.09, 67.20)
    torch.testing.assert_close(
        lab,
        torch.tensor([[100.0, 0, 0], [0, 0, 0], [53.2408, 80.0925, 67.2032]], dtype=torch.float64),
        atol=2e-3,
        rtol=0,
    )


def test_image_delta_e_keeps_shape_and_has_finite_gradients_at_black_and_grey():
    x = torch.zeros(2, 3, 4, 5, requires_grad=True)
    y = torch.full((2, 3, 4, 5), 0.5)
    d = srgb_delta_e(x, y)
    assert d.shape == (2, 4, 5)
    d.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="3 colour channels"):
        srgb_to_lab(torch.zeros(2, 4, 8, 8))
