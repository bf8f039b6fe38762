"""patchlab.capture: watch the world (webcam / video / image-sequence loop, per-frame scoring).

``run_capture(open_source("0"), models, "captures/c1", CaptureConfig(target="cat"))``
scores every frame and writes ``frames.jsonl`` + ``summary.json`` (see
:mod:`patchlab.capture.loop`); :func:`simulate_capture` turns a patch into a
recorded video with per-frame ground truth, for tests and demos without a camera.
"""

# the input defences are patchlab's core registry (patchlab.defenses); re-exported for old imports
from patchlab.defenses import Defense, get_defense, list_defenses, register_defense

from .errors import CaptureError
from .loop import CaptureConfig, CaptureSummary, load_capture, run_capture
from .track import PatchTracker, TrackerConfig
from .pose import MarkerDetector, MarkerPose, PatchTarget, PoseEstimator, quad_metrics
from .simulate import SimConfig, SimResult, read_truth, simulate_capture, truth_path_for
from .sources import FrameSource, ImageDirSource, ThreadedReader, VideoSource, open_source

__all__ = [
    "CaptureConfig",
    "CaptureError",
    "CaptureSummary",
    "Defense",
    "FrameSource",
    "ImageDirSource",
    "MarkerDetector",
    "MarkerPose",
    "PatchTarget",
    "PatchTracker",
    "PoseEstimator",
    "SimConfig",
    "SimResult",
    "ThreadedReader",
    "TrackerConfig",
    "VideoSource",
    "get_defense",
    "list_defenses",
    "load_capture",
    "open_source",
    "quad_metrics",
    "read_truth",
    "register_defense",
    "run_capture",
    "simulate_capture",
    "truth_path_for",
]
