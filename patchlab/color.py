"""Colour science shared by the stages: sRGB transfer curves, CIELAB, CIEDE2000.

Differentiable torch functions on ``(..., 3, ...)`` tensors with the colour axis
given by ``dim`` (default 1, the channel axis of ``(B, 3, H, W)`` images, or use
``dim=-1`` for ``(N, 3)`` colour lists). Device and dtype follow the input.

References:
    IEC 61966-2-1 (sRGB transfer function, D65 white).
    G. Sharma, W. Wu, E. N. Dalal, "The CIEDE2000 color-difference formula:
    implementation notes, supplementary test data, and mathematical observations",
    Color Research & Application 30(1), 2005 (the steps below follow its
    equations in order).
"""

from __future__ import annotations

import math

import torch

#: sRGB (IEC 61966-2-1) transfer function constants.
_SRGB_A, _SRGB_GAMMA, _SRGB_SLOPE, _SRGB_LIN_KNEE, _SRGB_ENC_KNEE = 0.055, 2.4, 12.92, 0.0031308, 0.04045
#: Smallest value raised to a fractional power, so gradients stay finite at 0.
_POW_FLOOR = 1e-12
#: Linear sRGB (D65) -> CIE XYZ, IEC 61966-2-1.
_RGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375), (0.2126729, 0.7151522, 0.0721750), (0.0193339, 0.1191920, 0.9503041))
#: D65 reference white (Y = 1).
_D65 = (0.95047, 1.0, 1.08883)
#: CIELAB constants (CIE 15): delta = 6/29.
_LAB_DELTA = 6.0 / 29.0


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """Decode sRGB values in [0, 1] to linear light (IEC 61966-2-1)."""
    hi = ((x.clamp_min(_SRGB_ENC_KNEE) + _SRGB_A) / (1 + _SRGB_A)) ** _SRGB_GAMMA
    return torch.where(x > _SRGB_ENC_KNEE, hi, x / _SRGB_SLOPE)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """Encode linear light in [0, 1] as sRGB values (IEC 61966-2-1)."""
    hi = (1 + _SRGB_A) * x.clamp_min(_SRGB_LIN_KNEE) ** (1 / _SRGB_GAMMA) - _SRGB_A
    return torch.where(x > _SRGB_LIN_KNEE, hi, x * _SRGB_SLOPE)


def _move(x: torch.Tensor, dim: int) -> torch.Tensor:
    if x.shape[dim] != 3:
        raise ValueError(f"expected 3 colour channels on dim {dim}, got shape {tuple(x.shape)}")
    return x.movedim(dim, -1)


def srgb_to_lab(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """sRGB in [0, 1] (D65) to CIELAB ``(L*, a*, b*)``, colour axis ``dim`` kept in place."""
    rgb = _move(x, dim)
    lin = srgb_to_linear(rgb)
    m = torch.tensor(_RGB_TO_XYZ, device=x.device, dtype=x.dtype)
    xyz = lin @ m.T / torch.tensor(_D65, device=x.device, dtype=x.dtype)
    d = _LAB_DELTA
    f = torch.where(xyz > d**3, xyz.clamp_min(_POW_FLOOR) ** (1 / 3), xyz / (3 * d * d) + 4 / 29)
    L = 116 * f[..., 1] - 16
    a = 500 * (f[..., 0] - f[..., 1])
    b = 200 * (f[..., 1] - f[..., 2])
    return torch.stack([L, a, b], -1).movedim(-1, dim)


def delta_e_2000(
    lab1: torch.Tensor, lab2: torch.Tensor, dim: int = 1, *, kL: float = 1.0, kC: float = 1.0, kH: float = 1.0
) -> torch.Tensor:
    """CIEDE2000 colour difference between two CIELAB tensors (Sharma et al. 2005).

    Args:
        lab1, lab2: broadcastable tensors with ``(L*, a*, b*)`` on ``dim``.
        dim: the colour axis; it is reduced away.
        kL, kC, kH: parametric weights (1 for the reference conditions).

    Returns:
        The difference with ``dim`` removed. About 1 is a just noticeable difference.
    """
    L1, a1, b1 = _move(lab1, dim).unbind(-1)
    L2, a2, b2 = _move(lab2, dim).unbind(-1)
    tiny = torch.finfo(L1.dtype).tiny

    def sqrt(v: torch.Tensor) -> torch.Tensor:  # finite gradient at 0 (zero through the clamp)
        return torch.sqrt(v.clamp_min(tiny))

    C1 = sqrt(a1 * a1 + b1 * b1)
    C2 = sqrt(a2 * a2 + b2 * b2)
    Cbar = (C1 + C2) / 2
    G = 0.5 * (1 - sqrt(Cbar**7 / (Cbar**7 + 25.0**7)))
    a1p, a2p = (1 + G) * a1, (1 + G) * a2
    C1p = sqrt(a1p * a1p + b1 * b1)
    C2p = sqrt(a2p * a2p + b2 * b2)
    h1p = torch.atan2(b1, a1p) % (2 * math.pi)  # radians in [0, 2 pi)
    h2p = torch.atan2(b2, a2p) % (2 * math.pi)
    dLp = L2 - L1
    dCp = C2p - C1p
    dh = h2p - h1p
    dh = torch.where(dh > math.pi, dh - 2 * math.pi, torch.where(dh < -math.pi, dh + 2 * math.pi, dh))
    zero_c = torch.minimum(C1p, C2p) <= 2 * math.sqrt(tiny)  # either colour achromatic: no hue
    dh = torch.where(zero_c, torch.zeros_like(dh), dh)
    dHp = 2 * sqrt(C1p * C2p) * torch.sin(dh / 2)
    Lbp = (L1 + L2) / 2
    Cbp = (C1p + C2p) / 2
    hsum = h1p + h2p
    hbp = torch.where(
        (h1p - h2p).abs() > math.pi,
        torch.where(hsum < 2 * math.pi, (hsum + 2 * math.pi) / 2, (hsum - 2 * math.pi) / 2),
        hsum / 2,
    )
    hbp = torch.where(zero_c, hsum, hbp)
    deg = math.pi / 180
    T = (
        1
        - 0.17 * torch.cos(hbp - 30 * deg)
        + 0.24 * torch.cos(2 * hbp)
        + 0.32 * torch.cos(3 * hbp + 6 * deg)
        - 0.20 * torch.cos(4 * hbp - 63 * deg)
    )
    dtheta = 30 * deg * torch.exp(-((((hbp / deg) - 275) / 25) ** 2))
    RC = 2 * sqrt(Cbp**7 / (Cbp**7 + 25.0**7))
    SL = 1 + 0.015 * (Lbp - 50) ** 2 / torch.sqrt(20 + (Lbp - 50) ** 2)
    SC = 1 + 0.045 * Cbp
    SH = 1 + 0.015 * Cbp * T
    RT = -torch.sin(2 * dtheta) * RC
    tL, tC, tH = dLp / (kL * SL), dCp / (kC * SC), dHp / (kH * SH)
    return sqrt(tL * tL + tC * tC + tH * tH + RT * tC * tH)


def srgb_delta_e(x: torch.Tensor, y: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """CIEDE2000 between two sRGB tensors in [0, 1] (colour axis ``dim``, reduced away)."""
    return delta_e_2000(srgb_to_lab(x, dim), srgb_to_lab(y, dim), dim)
