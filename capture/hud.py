"""The heads-up display drawn over a scored frame (for the window and ``--record``).

It shows the top-1 class and its probability per model (green when it is the
target), a bar of each model's target probability, the crop the models saw, the
patch outline found by its markers, the loop's frames per second and the running
tSuc. Drawing needs no display; :class:`Window` opens one only when a display
exists (``DISPLAY``/``WAYLAND_DISPLAY`` on Linux).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

import cv2
import numpy as np

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_GREEN, _RED, _WHITE, _YELLOW, _CYAN = (60, 200, 60), (60, 60, 230), (255, 255, 255), (0, 220, 255), (230, 200, 0)


def has_display() -> bool:
    """Whether a window can be shown (a desktop session, not a headless server)."""
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _panel(img: np.ndarray, x0: int, y0: int, x1: int, y1: int, alpha: float = 0.55) -> None:
    """Darken a rectangle so text on it reads over any scene."""
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(img.shape[1], x1), min(img.shape[0], y1)
    if x1 > x0 and y1 > y0:
        roi = img[y0:y1, x0:x1]
        roi[:] = (roi.astype(np.float32) * (1 - alpha)).astype(np.uint8)


def short_names(names: Sequence[str]) -> list[str]:
    """Model names without the prefix they all share (``cifar10-resnet20`` -> ``resnet20``)."""
    names = list(names)
    if len(names) < 2:
        return [n.split("-", 1)[-1] if "-" in n else n for n in names]
    pre = os.path.commonprefix(names)
    cut = max(pre.rfind("-"), pre.rfind("_"), pre.rfind(":"), pre.rfind("/")) + 1
    return [n[cut:] or n for n in names]


def draw_hud(
    frame: np.ndarray,
    record: dict[str, Any],
    model_names: Sequence[str],
    target: str,
    *,
    fps: float | None,
    running: dict[str, tuple[int, int]],
) -> np.ndarray:
    """An annotated copy of ``frame`` (BGR uint8) for one log ``record``.

    Args:
        frame: the frame as read.
        record: the frame's log line (``models``, ``pose``, ``crop_box``, ``index``).
        model_names: models in display order.
        target: target class name.
        fps: loop rate to show, if known.
        running: ``{model: (hits, frames)}`` so far.
    """
    img = frame.copy()
    h, w = img.shape[:2]
    fs = max(0.35, min(0.8, w / 1000))  # font scale
    th = 1 if fs < 0.6 else 2
    (_, ch), _ = cv2.getTextSize("Ag", _FONT, fs, th)
    lh = int(ch * 1.9)
    box = record.get("crop_box")
    if box:
        cv2.rectangle(img, (int(box[0]), int(box[1])), (int(box[2]) - 1, int(box[3]) - 1), _YELLOW, 1, cv2.LINE_AA)
    pose = record.get("pose")
    source = record.get("pose_source") or ("detected" if pose else "lost")
    if pose:
        q = np.round(np.asarray(pose["quad_px"], np.float64) * 16).astype(np.int32)
        colour = _CYAN if source == "detected" else _YELLOW  # a tracked outline never looks like a detection
        cv2.polylines(img, [q.reshape(-1, 1, 2)], True, colour, 2, cv2.LINE_AA, shift=4)
        conf = pose.get("confidence")
        label = source + ("" if conf is None else f" {float(conf):.2f}")
        x, y = np.asarray(pose["quad_px"], np.float64).min(0)
        cv2.putText(img, label, (int(x), max(ch + 2, int(y) - 4)), _FONT, fs * 0.8, colour, 1, cv2.LINE_AA)
    short = short_names(model_names)
    lines = []
    models = record.get("models") or {}
    for name, sn in zip(model_names, short):
        m = models.get(name)
        if m is None:  # not scored (--on-lost skip)
            lines.append((f"{sn}: not scored (lost)", {"hit": False, "p_target": 0.0}))
            continue
        top, p = m["top5"][0]
        lines.append((f"{sn}: {top} {p:.2f}", m))
    tw = max(cv2.getTextSize(t, _FONT, fs, th)[0][0] for t, _ in lines)
    bar_w = int(w * 0.16)
    pad = int(lh * 0.3)
    header = f"p({target})"
    _panel(img, 0, 0, tw + bar_w + 4 * pad, lh * (len(lines) + 1) + pad)
    cv2.putText(img, header, (tw + 3 * pad, int(lh * 0.75)), _FONT, fs * 0.85, _WHITE, 1, cv2.LINE_AA)
    for k, (text, m) in enumerate(lines):
        y = lh * (k + 2) - int(lh * 0.3)
        cv2.putText(img, text, (pad, y), _FONT, fs, _GREEN if m["hit"] else _WHITE, th, cv2.LINE_AA)
        x0 = tw + 3 * pad
        cv2.rectangle(img, (x0, y - ch), (x0 + bar_w, y), (90, 90, 90), 1)
        cv2.rectangle(img, (x0, y - ch), (x0 + int(bar_w * float(m["p_target"])), y), _GREEN if m["hit"] else _RED, -1)
    rates = "  ".join(f"{sn} {h_ / n_:.0%}" if n_ else f"{sn} -" for sn, (h_, n_) in zip(short, running.values()))
    foot = f"#{record['index']} {source}" + (f"  {fps:.1f} fps" if fps else "") + f"  tSuc {rates}"
    fw = cv2.getTextSize(foot, _FONT, fs * 0.85, 1)[0][0]
    _panel(img, 0, h - lh - pad, fw + 2 * pad, h)
    cv2.putText(img, foot, (pad, h - pad - int(lh * 0.25)), _FONT, fs * 0.85, _WHITE, 1, cv2.LINE_AA)
    return img


class Window:
    """A HUD window; ``show`` returns False when the user pressed q or Esc."""

    def __init__(self, title: str = "patchlab capture") -> None:
        self.title = title
        cv2.namedWindow(title, cv2.WINDOW_NORMAL)

    def show(self, img: np.ndarray) -> bool:
        cv2.imshow(self.title, img)
        key = cv2.waitKey(1) & 0xFF
        return key not in (ord("q"), 27)

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:  # pragma: no cover - window already gone
            pass
