"""patchlab.calib: measure the world (camera intrinsics, printer-to-camera colour, palette).

For the optimiser: ``ColorTransform.from_json("color.json")`` is a differentiable
``(B, 3, H, W) -> (B, 3, H, W)`` module in [0, 1] (printed sRGB -> what the camera
records), and ``load_palette("color.palette.txt")`` the printable colours as a
``(N, 3)`` tensor in [0, 1] (file format: one ``r g b`` line of 0-255 integers per colour).
"""

from .camera import CameraCalibration, calibrate_camera, load_camera
from .color import ColorTransform, apply_color_transform, fit_color_transform, load_color_transform, load_palette
from .colorcal import ColorCalibration, calibrate_color

__all__ = [
    "CameraCalibration",
    "calibrate_camera",
    "load_camera",
    "ColorTransform",
    "apply_color_transform",
    "fit_color_transform",
    "load_color_transform",
    "load_palette",
    "ColorCalibration",
    "calibrate_color",
]
