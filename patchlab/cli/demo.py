"""``patchlab demo``: the whole mission on the embedded sign world, in one command.

world -> three small models -> an OT patch and a CE patch on one source model ->
digital transfer on the others -> PDF at 60 mm -> simulated print-and-capture
video (and a blank-card control) -> capture loop -> physical tSuc by condition ->
HTML and PDF report.

Every stage after the zoo is a ``patchlab`` command run in this process, exactly as
a user would type it; the summary lists them, so any stage can be re-run by hand.
``OUT/demo.json`` records each finished stage with its outputs: running the demo
again skips what is finished (an interrupted optimisation resumes from its
checkpoint), and a stage whose outputs vanished runs again. The demo lives in the
CLI layer because it drives every stage; the core never imports a stage.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable

import typer
from rich.table import Table

from ._common import DEVICE_HELP, console, err_console, task_progress

STATE_FILE = "demo.json"
STATE_VERSION = 1


class DemoStageFailed(Exception):
    """A stage's command failed; its message was already printed."""


@dataclass
class DemoConfig:
    """What the demo does; stored in ``demo.json`` (a changed config starts the stages again)."""

    seed: int = 0
    device: str = "auto"
    n_per_class: int = 500
    size: int = 64
    source: str = "resnet"
    target: str = "stop"
    frac: float = 0.2
    steps: int = 300
    batch_size: int = 32
    eot: str = "physical"
    layers: str = "auto"
    frames: int = 300
    size_mm: float = 60.0
    train_epochs: float = 1.0  # multiplies every zoo model's epochs (quick mode trains less)

    @classmethod
    def quick(cls, **kw: Any) -> "DemoConfig":
        """A smoke-test demo: a small world, a quarter of the training, short runs and film."""
        base = dict(n_per_class=80, steps=60, frames=60, train_epochs=0.25)
        base.update(kw)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Stage:
    name: str
    outputs: list[Path]
    run: Callable[[], dict[str, Any]]
    commands: list[list[str]] = field(default_factory=list)


def _invoke(args: list[str]) -> None:
    """Run one ``patchlab`` command in this process; raise on a non-zero exit."""
    from . import app

    console.print(f"[dim]$ patchlab {' '.join(args)}[/]", highlight=False, soft_wrap=True)
    try:
        rc = app(args=args, prog_name="patchlab", standalone_mode=False)
    except SystemExit as exc:  # typer.Exit inside a sub-command
        rc = exc.code
    if rc == 130:
        raise KeyboardInterrupt
    if rc not in (None, 0):
        raise DemoStageFailed(f"`patchlab {args[0]} {args[1] if len(args) > 1 else ''}` failed (exit {rc})")


class Demo:
    """The demo's stages over an output folder, each skipped when already finished."""

    def __init__(self, out: Path, config: DemoConfig):
        self.out = out
        self.cfg = config
        self.state_path = out / STATE_FILE
        self.state = self._load_state()
        self.world = None
        self.zoo = None
        self.rows: list[tuple[str, str, float, str]] = []

    # ------------------------------------------------------------------ state
    def _load_state(self) -> dict[str, Any]:
        if self.state_path.is_file():
            try:
                st = json.loads(self.state_path.read_text())
                if st.get("version") == STATE_VERSION and st.get("config") == self.cfg.to_dict():
                    return st
                err_console.print("[yellow]the demo options changed: running every stage again[/]")
            except (OSError, ValueError):
                err_console.print(f"[yellow]unreadable {self.state_path}: running every stage again[/]")
        return {"version": STATE_VERSION, "config": self.cfg.to_dict(), "stages": {}}

    def _save_state(self) -> None:
        from ..utils import atomic_write_json

        atomic_write_json(self.state_path, self.state)

    def done(self, stage: Stage) -> bool:
        rec = self.state["stages"].get(stage.name)
        return bool(rec and rec.get("status") == "done" and all(p.exists() for p in stage.outputs))

    def run_stage(self, stage: Stage) -> dict[str, Any]:
        if self.done(stage):
            rec = self.state["stages"][stage.name]
            self.rows.append((stage.name, "finished before", 0.0, rec.get("figure", "")))
            console.rule(f"[bold]{stage.name}[/]: finished before, skipped", style="dim")
            return rec.get("result", {})
        console.rule(f"[bold]{stage.name}")
        t0 = time.perf_counter()
        result = stage.run()
        seconds = time.perf_counter() - t0
        figure = str(result.pop("figure", ""))
        self.state["stages"][stage.name] = {"status": "done", "seconds": round(seconds, 2), "figure": figure,
                                            "outputs": [str(p) for p in stage.outputs], "result": result}
        self._save_state()
        self.rows.append((stage.name, "ran", seconds, figure))
        return result

    # ----------------------------------------------------------------- stages
    def p(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def models(self) -> list[str]:
        return [str(c) for c in self.zoo.cards]

    def stage_world(self) -> dict[str, Any]:
        from ..world import ensure_world

        with task_progress() as start:
            self.world = ensure_world(self.cfg.n_per_class, self.cfg.size, self.cfg.seed, progress=start)
        w = self.world
        return {"root": str(w.root), "figure": f"{len(w.classes)} classes, {sum(w.counts.values())} pictures"
                                              + (" (cached)" if w.cached else f" in {w.seconds:.0f} s")}

    def stage_zoo(self) -> dict[str, Any]:
        from ..world import TrainConfig, ensure_zoo

        config = TrainConfig(seed=self.cfg.seed)
        if self.cfg.train_epochs != 1.0:
            config = config.scaled(self.cfg.train_epochs)
        with task_progress() as start:
            self.zoo = ensure_zoo(self.world, seed=self.cfg.seed, device=self.cfg.device, progress=start,
                                  config=config)
        accs = ", ".join(f"{m.name} {m.val_accuracy:.1%}" for m in self.zoo.models)
        return {"root": str(self.zoo.root),
                "figure": f"val accuracy {accs}" + (" (cached)" if self.zoo.cached else f" in {self.zoo.seconds:.0f} s")}

    def stage_patch(self, loss: str) -> dict[str, Any]:
        c = self.cfg
        run = self.p("runs", loss)
        args = ["optimize", "--out", str(run), "--device", c.device, "--no-cache"]
        if (run / "checkpoint.pt").is_file():
            args += ["--resume"]  # an interrupted optimisation continues where it stopped
        else:
            if run.exists():
                shutil.rmtree(run)
            args += ["--source", str(self.zoo.card(c.source)), "--data", str(self.world.train), "--target", c.target,
                     "--loss", loss, "--patch-frac", str(c.frac), "--steps", str(c.steps),
                     "--batch-size", str(c.batch_size), "--eot", c.eot, "--placement", "side", "--frame-markers",
                     "--layers", c.layers, "--lr-schedule", "cosine", "--seed", str(c.seed)]
        _invoke(args)
        _invoke(["eval", "transfer", str(run), "--models", *self.models(), "--device", c.device, "--seed",
                 str(c.seed)])
        t = json.loads((run / "transfer.json").read_text())
        wb = [m["tsuc"] for m in t["models"] if m["is_source"]]
        tr = {m["name"]: m["tsuc"] for m in t["models"] if not m["is_source"]}
        return {"white_box": wb[0], "transfer": tr,
                "figure": f"white-box tSuc {wb[0]:.1%}; transfer " + ", ".join(f"{k} {v:.1%}" for k, v in tr.items())}

    def stage_matrix(self) -> dict[str, Any]:
        _invoke(["eval", "matrix", str(self.p("runs", "sw")), str(self.p("runs", "ce")), "--models", *self.models(),
                 "--out", str(self.p("matrix")), "--device", self.cfg.device, "--seed", str(self.cfg.seed)])
        m = json.loads(self.p("matrix", "matrix.json").read_text())
        return {"figure": "; ".join(f"{r['loss']} mean transfer {r['mean_transfer']:.1%}" for r in m["runs"])}

    def stage_print(self) -> dict[str, Any]:
        pdf = self.p("print", "patch.pdf")
        pdf.parent.mkdir(parents=True, exist_ok=True)
        _invoke(["print", "patch", str(self.p("runs", "sw")), "--size-mm", str(self.cfg.size_mm), "--out", str(pdf)])
        return {"figure": f"{self.cfg.size_mm:g} mm patch with its marker frame"}

    def stage_film(self) -> dict[str, Any]:
        cap = self.p("capture")
        cap.mkdir(parents=True, exist_ok=True)
        common = ["--layout", str(self.p("print", "patch.layout.json")), "--scenes", str(self.world.scenes),
                  "--frames", str(self.cfg.frames), "--seed", str(self.cfg.seed)]
        _invoke(["simulate", "capture", "--patch", str(self.p("runs", "sw")), "--out", str(cap / "video.mp4"), *common])
        _invoke(["simulate", "capture", "--patch", str(self.p("runs", "sw")), "--out", str(cap / "control.mp4"),
                 "--control", "blank", *common])
        return {"figure": f"{self.cfg.frames} frames patched + {self.cfg.frames} control"}

    def stage_capture(self) -> dict[str, Any]:
        cap = self.p("capture")
        for name in ("video", "control"):
            _invoke(["capture", "run", "--source", str(cap / f"{name}.mp4"), "--models", *self.models(), "--target",
                     self.cfg.target, "--out", str(cap / name), "--layout", str(self.p("print", "patch.layout.json")),
                     "--camera", str(cap / f"{name}.camera.json"), "--no-hud", "--overwrite",
                     "--device", self.cfg.device])
        s = json.loads((cap / "video" / "summary.json").read_text())
        return {"figure": f"{s.get('frames', '?')} frames scored"}

    def stage_physical(self) -> dict[str, Any]:
        cap = self.p("capture")
        _invoke(["eval", "physical", str(cap / "video"), "--control", str(cap / "control"), "--json",
                 str(self.p("physical.json"))])
        d = json.loads(self.p("physical.json").read_text())
        rates = []
        for m in d.get("models", []):
            t = m.get("tsuc") or {}
            if t.get("n"):
                rates.append(f"{m.get('model', '?')} {t['rate']:.1%}")
        return {"figure": "filmed tSuc " + ", ".join(rates)}

    def stage_report(self) -> dict[str, Any]:
        cap = self.p("capture")
        for out in ("report.html", "report.pdf"):
            _invoke(["report", str(self.p("runs", "sw")), str(cap / "video"), "--control", str(cap / "control"),
                     "--matrix", str(self.p("matrix", "matrix.json")), "--compare", str(self.p("runs", "ce")),
                     "--out", str(self.p(out))])
        return {"figure": "report.html, report.pdf"}

    def stages(self) -> list[Stage]:
        cap = self.p("capture")
        return [
            Stage("world", [], self.stage_world),
            Stage("models", [], self.stage_zoo),
            Stage("OT patch (sw)", [self.p("runs", "sw", "transfer.json")], lambda: self.stage_patch("sw")),
            Stage("CE patch", [self.p("runs", "ce", "transfer.json")], lambda: self.stage_patch("ce")),
            Stage("transfer matrix", [self.p("matrix", "matrix.json")], self.stage_matrix),
            Stage("print", [self.p("print", "patch.pdf"), self.p("print", "patch.layout.json")], self.stage_print),
            Stage("film (simulated)", [cap / "video.mp4", cap / "control.mp4"], self.stage_film),
            Stage("capture loop", [cap / "video" / "summary.json", cap / "control" / "summary.json"],
                  self.stage_capture),
            Stage("physical tSuc", [self.p("physical.json")], self.stage_physical),
            Stage("report", [self.p("report.html"), self.p("report.pdf")], self.stage_report),
        ]

    def run(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self._save_state()
        for st in self.stages():
            # the world and zoo are cached by content, not by this folder: always ask the cache
            if st.name in ("world", "models"):
                console.rule(f"[bold]{st.name}")
                t0 = time.perf_counter()
                res = st.run()
                self.rows.append((st.name, "cached" if "(cached)" in res["figure"] else "ran",
                                  time.perf_counter() - t0, res["figure"]))
                continue
            self.run_stage(st)


def demo_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder for everything the demo makes.")] = Path("patchlab-demo"),
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    seed: Annotated[int, typer.Option(help="One seed for the world, the models, the patches and the film.")] = 0,
    target: Annotated[str, typer.Option(help="Target class of the patches.")] = "stop",
    source: Annotated[str, typer.Option(help="Source model of the zoo (lenet, resnet, vit).")] = "resnet",
    steps: Annotated[int, typer.Option(help="Optimisation steps per patch.")] = 300,
    frames: Annotated[int, typer.Option(help="Frames of the simulated video.")] = 300,
    quick: Annotated[bool, typer.Option("--quick", help="A smoke test: small world, short training, runs and film "
                                                        "(its figures are not the demo's).")] = False,
) -> None:
    """Run the whole mission on the embedded sign world: optimise, print, film, score, report."""
    from ..utils import resolve_device

    resolve_device(device)
    kw = dict(seed=seed, device=device, target=target, source=source)
    cfg = DemoConfig.quick(**kw) if quick else DemoConfig(**kw, steps=steps, frames=frames)
    demo = Demo(out, cfg)
    t0 = time.perf_counter()
    try:
        demo.run()
    except DemoStageFailed as exc:
        err_console.print(f"[bold red]error:[/] {exc}; fix it and run the demo again: finished stages are kept")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err_console.print(f"[yellow]interrupted[/]: run `patchlab demo --out {out}` again to resume from the "
                          "finished stages")
        raise typer.Exit(130) from None
    table = Table("stage", "status", "seconds", "result", title=f"patchlab demo in {time.perf_counter() - t0:.0f} s")
    for name, status, secs, fig in demo.rows:
        table.add_row(name, status, f"{secs:.1f}" if secs else "-", fig)
    console.print(table)
    for f in ("report.html", "report.pdf", "print/patch.pdf", "capture/video.mp4", "matrix/matrix.md"):
        console.print(f"open {out / f}")


def register(app: typer.Typer) -> None:
    """Attach the ``demo`` command to the top-level app."""
    app.command("demo")(demo_cmd)

