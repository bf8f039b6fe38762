"""``patchlab simulate``: print-and-camera simulation (a patch turned into a recorded video)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import console, progress_bar

app = typer.Typer(
    help="Simulate printing and filming a patch, for tests and demos without a camera.", no_args_is_help=True
)


def _size(text: str) -> tuple[int, int]:
    from ..errors import ConfigError

    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size must be WIDTHxHEIGHT, e.g. 640x480, got {text!r}") from None
    return w, h


def _range(text: str | None, name: str) -> tuple[float, float] | None:
    from ..errors import ConfigError

    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.replace(",", ":").split(":"))
    except ValueError:
        raise ConfigError(f"{name} must be LO:HI, e.g. 15:60, got {text!r}") from None
    if lo > hi:
        lo, hi = hi, lo
    return lo, hi


@app.command("capture")
def capture_cmd(
    patch: Annotated[Path, typer.Option(help="Optimiser run folder (patch.png + run.json) or a patch image.")],
    scenes: Annotated[
        Path,
        typer.Option(
            help="Scene images: an ImageFolder tree (object class = folder name) or a plain folder (class unknown)."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Video to write (.mp4 or .avi); X.truth.jsonl and X.sim.json go beside it.")
    ],
    layout: Annotated[
        Optional[Path],
        typer.Option(
            help="patch.layout.json from `patchlab print patch` (default: the layout a 50 mm print would have)."
        ),
    ] = None,
    frames: Annotated[int, typer.Option(help="Number of frames.")] = 300,
    fps: Annotated[float, typer.Option(help="Frame rate of the video.")] = 30.0,
    size: Annotated[str, typer.Option(help="Frame size WIDTHxHEIGHT (ignored with --camera).")] = "640x480",
    calib: Annotated[
        Optional[Path],
        typer.Option(
            help="color.json from `patchlab calib color` as the printer's "
            "colour model (default: a generic office printer)."
        ),
    ] = None,
    camera: Annotated[
        Optional[Path], typer.Option(help="camera.json: film with these intrinsics and distortion.")
    ] = None,
    scene_frames: Annotated[int, typer.Option(help="Frames per scene image.")] = 20,
    control: Annotated[
        Optional[str],
        typer.Option(
            help="Film a control instead: 'blank' (same card, blank patch) or "
            "'none' (no card); same seed = same scenes and sweep."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the scenes, sweeps, light and noise.")] = 0,
    side_px: Annotated[
        Optional[str],
        typer.Option(
            help="Apparent patch side range FAR:NEAR in pixels, seen face on "
            "(default: 17-45 % of the frame height), e.g. 15:60.",
            show_default=False,
        ),
    ] = None,
    exposure: Annotated[
        Optional[str], typer.Option(help="Exposure (gain) range LO:HI (default 0.55:1.25).", show_default=False)
    ] = None,
    noise: Annotated[float, typer.Option(help="Sensor noise sigma (0-255).")] = 2.5,
    defocus: Annotated[
        Optional[str],
        typer.Option(help="Defocus blur sigma range LO:HI px, swinging over time (default 0.5).", show_default=False),
    ] = None,
    speed: Annotated[float, typer.Option(help="Speed of the motion (2 = twice as fast).")] = 1.0,
    shake: Annotated[float, typer.Option(help="Hand shake: per-frame jitter sigma in px (blurred along it).")] = 0.0,
    rolling_shutter: Annotated[
        float, typer.Option(help="Sensor readout time over the frame interval (row skew).")
    ] = 0.0,
    glare: Annotated[
        float, typer.Option(help="Peak strength (0-1) of a specular highlight moving on the paper.")
    ] = 0.0,
    ae_swing: Annotated[
        float, typer.Option(help="Auto-exposure hunting: relative size of sudden exposure jumps.")
    ] = 0.0,
    clutter: Annotated[
        int, typer.Option(help="Distractor shapes per scene (bars, checkers, marker-like squares).")
    ] = 0,
) -> None:
    """Print a patch (printer model), hold it beside an object (scene image) and film it moving
    across distances, angles and light, with blur, noise and compression; ground truth per frame."""
    from ..capture.simulate import SimConfig, simulate_capture
    from ..layout import load_layout
    from ..print.sheets import load_patch_source, make_patch_pdf

    src = load_patch_source(patch)
    lay = load_layout(layout) if layout is not None else make_patch_pdf(src, size_mm=50.0).layout
    cam = None
    frame_size = _size(size)
    if camera is not None:
        from ..calib.camera import load_camera

        K, dist, frame_size = load_camera(camera)
        cam = (K, dist)
    transform = None
    if calib is not None:
        from ..calib import ColorTransform

        transform = ColorTransform.from_json(calib)
    extra: dict = {}
    sides = _range(side_px, "--side-px")
    if sides is not None:
        extra.update(far_side_frac=sides[0] / frame_size[1], near_side_frac=sides[1] / frame_size[1])
    exp = _range(exposure, "--exposure")
    if exp is not None:
        extra["exposure_range"] = exp
    dfc = _range(defocus, "--defocus")
    if dfc is not None:
        extra.update(defocus_sigma=dfc[0], defocus_max=dfc[1])
    cfg = SimConfig(
        frames=frames,
        fps=fps,
        size=frame_size,
        seed=seed,
        scene_frames=scene_frames,
        control=control,
        noise_sigma=noise,
        speed=speed,
        shake_px=shake,
        rolling_shutter=rolling_shutter,
        glare=glare,
        ae_swing=ae_swing,
        clutter=clutter,
        **extra,
    )
    with progress_bar("simulating", frames) as advance:
        res = simulate_capture(
            src.image,
            lay,
            scenes,
            out,
            config=cfg,
            camera=cam,
            calib=transform,
            target_class=src.target_class,
            source={
                "path": src.path,
                "run_id": src.run_id,
                "sha256": src.sha256,
                "layout": None if layout is None else str(layout),
            },
            progress=advance,
        )
    console.print(
        f"{res.frames} frames, the patch in view on {res.patch_in_view}, all four markers on "
        f"{res.markers_in_frame}; "
        f"{len(res.scenes)} scene(s): {', '.join(str(s['object_class']) for s in res.scenes)}"
    )
    console.print(f"wrote {res.video}")
    if layout is None:
        lay_path = res.video.with_name(res.video.stem + ".layout.json")
        lay.save(lay_path)
        console.print(f"wrote {lay_path} (the layout filmed: pass it to `patchlab capture run --layout`)")
    console.print(f"wrote {res.truth}")
    console.print(f"wrote {res.sim}")
    console.print(f"wrote {res.camera} (the simulated camera: `patchlab capture run --camera`)")
