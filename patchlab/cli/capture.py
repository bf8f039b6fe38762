"""``patchlab capture``: score a live camera, a recorded video or an image sequence."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..utils import default_threads
from ._common import DEVICE_HELP, command_line, console

app = typer.Typer(
    help="Score a live camera, a recorded video or an image sequence, frame by frame.", no_args_is_help=True
)

MODELS_HELP = "Models to score every frame with (cards, timm:NAME, ...): --models A B C, or --models repeated."


def summary_table(summary) -> Table:
    d = (summary.config or {}).get("defense") or {}
    defense = "" if d.get("name", "none") == "none" else f", defence {d.get('spec', d.get('name'))}"
    t = Table(
        "model",
        "tSuc",
        "95% CI",
        "frames",
        "tSuc with pose",
        "mean p(target)",
        title=f"target {summary.target_class}{defense}",
    )
    for name, r in summary.tsuc.items():
        lo, hi = r["ci95"]
        rate = "n/a" if r["n"] == 0 else f"{r['rate']:.1%}"
        wp = (summary.tsuc_with_pose or {}).get(name) or {"n": 0}
        wps = "n/a" if wp["n"] == 0 else f"{wp['rate']:.1%} (n={wp['n']})"
        t.add_row(name, rate, f"{lo:.1%}-{hi:.1%}", str(r["n"]), wps, f"{summary.mean_p_target[name]:.3f}")
    return t


@app.command("run")
def run_cmd(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Option(
            "--source",
            help="Camera index (0), /dev/videoN, a video file, a folder of images (sorted by name) or a stream URL.",
        ),
    ],
    target: Annotated[str, typer.Option(help="Target class (name, as in the models' labels).")],
    out: Annotated[Path, typer.Option("--out", help="Capture folder: frames.jsonl, summary.json, samples/.")],
    models: Annotated[Optional[list[str]], typer.Option("--models", help=MODELS_HELP)] = None,
    extra: Annotated[
        Optional[list[str]], typer.Argument(help="More model references after --models.", show_default=False)
    ] = None,
    layout: Annotated[
        Optional[Path],
        typer.Option(help="patch.layout.json of the printed sheet (exact marker geometry; needed for distances)."),
    ] = None,
    camera: Annotated[
        Optional[Path],
        typer.Option(help="camera.json from `patchlab calib camera`: adds distance and tilt angles (solvePnP)."),
    ] = None,
    crop: Annotated[
        str,
        typer.Option(
            help="What the models see: full frame, center square, or roi (a square around the patch, see --roi-frac)."
        ),
    ] = "center",
    roi_frac: Annotated[float, typer.Option(help="With --crop roi: patch area over crop area.")] = 0.1,
    defense: Annotated[
        str,
        typer.Option(
            help="Input defence on the crop before every model: none, blur[:SIGMA], median[:K], jpeg[:Q], "
            "bitdepth[:BITS], lgs[:...] (`patchlab defend list`); the model names carry it. Film the "
            "control with the same defence."
        ),
    ] = "none",
    record: Annotated[Optional[Path], typer.Option(help="Write the annotated video here (.mp4 or .avi).")] = None,
    hud: Annotated[
        Optional[bool],
        typer.Option(
            "--hud/--no-hud",
            help="Show the annotated frames in a window (default: when a display exists; q or Esc stops).",
            show_default=False,
        ),
    ] = None,
    max_frames: Annotated[Optional[int], typer.Option(help="Stop after N frames.")] = None,
    batch_size: Annotated[
        int, typer.Option(help="Most frames classified together (a live camera batches only what is waiting).")
    ] = 8,
    min_markers: Annotated[
        int,
        typer.Option(
            help="Markers needed for a detected pose (1-4; with 2 or 3 the tracked texture points join the fit)."
        ),
    ] = 2,
    track: Annotated[
        bool,
        typer.Option(
            "--track/--no-track",
            help="Follow the patch between detections (Lucas-Kanade); tracked frames are marked 'tracked'.",
        ),
    ] = True,
    on_lost: Annotated[
        str,
        typer.Option(
            "--on-lost",
            help="With --crop roi, frames where the patch is lost: skip "
            "(logged, not scored), center (score the centre square) "
            "or last (the last pose's square).",
        ),
    ] = "skip",
    stall_timeout: Annotated[
        float, typer.Option(help="Network cameras: seconds without data before reconnecting.")
    ] = 2.0,
    lost_after: Annotated[
        float, typer.Option(help="Network cameras: seconds without a frame before the capture ends ('camera lost').")
    ] = 20.0,
    truth: Annotated[
        Optional[Path],
        typer.Option(help="Per-frame ground truth (default: VIDEO.truth.jsonl beside a simulated video)."),
    ] = None,
    realtime: Annotated[bool, typer.Option(help="Replay a video file at its frame rate, as a live camera.")] = False,
    threads: Annotated[Optional[int], typer.Option(help="Torch threads (default: cores - 1).")] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace a capture already in --out.")] = False,
) -> None:
    """Classify every frame with every model, find the patch by its markers, log one JSON line per frame.

    Ends at the end of the stream, after --max-frames, when the camera is lost or on Ctrl-C; the log
    and summary.json are complete in every case.
    """
    import signal
    import threading

    import torch

    from ..capture.loop import CaptureConfig, run_capture
    from ..captures import read_truth, truth_path_for
    from ..capture.sources import open_source
    from ..errors import ConfigError
    from ..layout import load_layout
    from ..models import load_model
    from ..utils import resolve_device

    refs = list(models or []) + list(extra or [])
    if extra and not models:
        raise ConfigError(f"{extra[0]!r}: model references go after --models")
    if not refs:
        raise ConfigError("give the models with --models MODEL...")
    cfg = CaptureConfig(
        target=target,
        crop=crop,
        roi_frac=roi_frac,
        defense=defense,
        batch_size=batch_size,
        max_frames=max_frames,
        hud=hud,
        record=None if record is None else str(record),
        min_markers=min_markers,
        on_lost=on_lost,
        track=track,
    )
    lay = load_layout(layout) if layout is not None else None
    cam = None
    if camera is not None:
        from ..calib.camera import load_camera

        K, dist, _ = load_camera(camera)
        cam = (K, dist)
    src_path = Path(source)
    truth_file = truth if truth is not None else (truth_path_for(src_path) if src_path.is_file() else None)
    truth_rows = read_truth(truth_file) if truth_file is not None and truth_file.is_file() else None
    if truth is not None and truth_rows is None:
        raise ConfigError(f"ground truth not found: {truth}")
    dev = resolve_device(device)
    nets = [load_model(r, device=dev) for r in refs]
    src = open_source(source, realtime=realtime, stall_timeout_s=stall_timeout, stream_lost_after_s=lost_after)
    stop = threading.Event()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads())
    old_term = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        summ = run_capture(
            src,
            nets,
            out,
            cfg,
            layout=lay,
            layout_path=None if layout is None else str(layout),
            camera=cam,
            camera_path=None if camera is None else str(camera),
            truth=truth_rows,
            stop=stop,
            overwrite=overwrite,
            command=command_line(ctx),
        )
    finally:
        signal.signal(signal.SIGTERM, old_term)
        torch.set_num_threads(old_threads)
    console.print(summary_table(summ))
    extra_info = f", {summ.dropped} dropped" if summ.dropped else ""
    if summ.skipped:
        extra_info += f", {len(summ.skipped)} non-image file(s) skipped"
    ps = summ.pose_sources
    console.print(
        f"{summ.frames} frames: patch detected on {ps.get('detected', 0)}, tracked on "
        f"{ps.get('tracked', 0)}, lost on {ps.get('lost', 0)}{extra_info}"
    )
    console.print(f"{summ.fps:.1f} fps; ended: {summ.end_reason}")
    if summ.frames_scored is not None and summ.frames_scored < summ.frames:
        console.print(
            f"{summ.frames - summ.frames_scored} frames without a pose not scored (--on-lost "
            f"{cfg.on_lost}); tSuc counts them as misses, tSuc on frames with a pose: "
            + ", ".join(f"{k} {v['rate']:.1%}" for k, v in summ.tsuc_with_pose.items() if v["n"])
        )
    st = summ.stream
    if st.get("stalls") or st.get("reconnects") or st.get("dropped"):
        console.print(
            f"stream: {st.get('stalls', 0)} stalls, {st.get('reconnects', 0)} reconnects, "
            f"{st.get('dropped', 0)} frames dropped on the wire (listed in summary.json)"
        )
    console.print(f"wrote {Path(summ.capture_dir) / 'frames.jsonl'} and summary.json")
    if record is not None and record.exists():
        console.print(f"wrote {record}")
