"""The whole mission as library calls: world -> models -> patches -> matrix -> print -> film -> capture -> judge -> report.

:class:`DemoPipeline` runs ``patchlab demo``'s stages over an output folder. Each
stage is a method that calls the library (the same functions the commands call) and
returns a result object — a :class:`~patchlab.transfer.TransferResult`, a
``MatrixResult``, a ``CaptureSummary``, a ``PhysicalResult``, a ``Report`` — and
announces the equivalent ``patchlab`` command, so any stage can be re-run by hand.
``OUT/demo.json`` records each finished stage: running again skips what is finished
(an interrupted optimisation resumes from its checkpoint), and a stage whose outputs
vanished runs again.

Like the CLI, this module sits above the stages and imports them (lazily, inside the
stages); the core modules never import it.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError
from .utils import atomic_write_json, read_json_object

STATE_FILE = "demo.json"
STATE_VERSION = 1


@dataclass(frozen=True)
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
        base: dict[str, Any] = dict(n_per_class=80, steps=60, frames=60, train_epochs=0.25)
        base.update(kw)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StageOutcome:
    """One stage as the demo saw it."""

    name: str
    status: str  # "ran", "cached", "finished before"
    seconds: float
    figure: str
    result: Any = None  # the stage's result object (None when skipped)


@dataclass
class Stage:
    name: str
    outputs: list[Path]
    run: Callable[[], tuple[Any, str]]  # -> (result object, one-line figure)


class DemoPipeline:
    """The demo's stages over an output folder, each skipped when already finished.

    Args:
        out: the folder for everything the demo makes.
        config: the demo's options.
        announce: called with the equivalent ``patchlab`` command of each library call.
        progress: a progress factory ``start(description, total) -> advance(n)`` for long work.
    """

    def __init__(
        self,
        out: str | Path,
        config: DemoConfig,
        *,
        announce: Callable[[str], None] = lambda s: None,
        progress: Callable[[str, int], Callable[[int], None]] | None = None,
        on_stage: Callable[[str, bool], None] = lambda name, skipped: None,
    ):
        self.out = Path(out)
        self.cfg = config
        self.announce = announce
        self.progress = progress
        self.on_stage = on_stage
        self.state_path = self.out / STATE_FILE
        self.warnings: list[str] = []
        self.state = self._load_state()
        self.world: Any = None
        self.zoo: Any = None
        self.outcomes: list[StageOutcome] = []
        self._models: list[Any] | None = None

    # ------------------------------------------------------------------ state
    def _load_state(self) -> dict[str, Any]:
        if self.state_path.is_file():
            try:
                st = read_json_object(self.state_path, "demo state")
                if st.get("version") == STATE_VERSION and st.get("config") == self.cfg.to_dict():
                    return st
                self.warnings.append("the demo options changed: running every stage again")
            except ConfigError:
                self.warnings.append(f"unreadable {self.state_path}: running every stage again")
        return {"version": STATE_VERSION, "config": self.cfg.to_dict(), "stages": {}}

    def _save_state(self) -> None:
        atomic_write_json(self.state_path, self.state)

    def done(self, stage: Stage) -> bool:
        rec = self.state["stages"].get(stage.name)
        return bool(rec and rec.get("status") == "done" and all(p.exists() for p in stage.outputs))

    def run_stage(self, stage: Stage) -> StageOutcome:
        if self.done(stage):
            rec = self.state["stages"][stage.name]
            self.on_stage(stage.name, True)
            return StageOutcome(stage.name, "finished before", 0.0, rec.get("figure", ""))
        self.on_stage(stage.name, False)
        t0 = time.perf_counter()
        result, figure = stage.run()
        seconds = time.perf_counter() - t0
        self.state["stages"][stage.name] = {
            "status": "done",
            "seconds": round(seconds, 2),
            "figure": figure,
            "outputs": [str(p) for p in stage.outputs],
        }
        self._save_state()
        return StageOutcome(stage.name, "ran", seconds, figure, result)

    # ----------------------------------------------------------------- helpers
    def p(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def card_paths(self) -> list[str]:
        return [str(c) for c in self.zoo.cards]

    def models(self) -> list[Any]:
        from .models import load_model
        from .utils import resolve_device

        if self._models is None:
            dev = resolve_device(self.cfg.device)
            self._models = [load_model(c, device=dev) for c in self.card_paths()]
        return self._models

    def _bar(self, description: str, total: int) -> Callable[[int], None] | None:
        return self.progress(description, total) if self.progress is not None else None

    # ----------------------------------------------------------------- stages
    def stage_world(self) -> tuple[Any, str]:
        from .world import ensure_world

        self.world = ensure_world(self.cfg.n_per_class, self.cfg.size, self.cfg.seed, progress=self.progress)
        w = self.world
        return w, (
            f"{len(w.classes)} classes, {sum(w.counts.values())} pictures"
            + (" (cached)" if w.cached else f" in {w.seconds:.0f} s")
        )

    def stage_zoo(self) -> tuple[Any, str]:
        from .world import TrainConfig, ensure_zoo

        config = TrainConfig(seed=self.cfg.seed)
        if self.cfg.train_epochs != 1.0:
            config = config.scaled(self.cfg.train_epochs)
        self.zoo = ensure_zoo(
            self.world, seed=self.cfg.seed, device=self.cfg.device, progress=self.progress, config=config
        )
        accs = ", ".join(f"{m.name} {m.val_accuracy:.1%}" for m in self.zoo.models)
        return self.zoo, f"val accuracy {accs}" + (" (cached)" if self.zoo.cached else f" in {self.zoo.seconds:.0f} s")

    def stage_patch(self, loss: str) -> tuple[Any, str]:
        """Optimise a patch (resuming an interrupted run) and judge it on every model."""
        from .data import load_folder
        from .eot import load_eot
        from .eval.transfer import evaluate_run
        from .optimize import OptimizeConfig, prepare_run, run_optimization
        from .runs import TRANSFER_JSON
        from .utils import resolve_device

        c = self.cfg
        run = self.p("runs", loss)
        resume = (run / "checkpoint.pt").is_file()
        if not resume and run.exists():
            shutil.rmtree(run)
        config = OptimizeConfig(
            target=c.target,
            loss=loss,
            frac=c.frac,
            steps=c.steps,
            batch_size=c.batch_size,
            eot=load_eot(c.eot),
            eot_name=c.eot,
            placement="side",
            frame_markers=True,
            layers=c.layers,
            lr_schedule="cosine",
            seed=c.seed,
        )
        self.announce(
            f"patchlab optimize --out {run} --source {self.zoo.card(c.source)} --data {self.world.train} "
            f"--target {c.target} --loss {loss} --patch-frac {c.frac} --steps {c.steps} --batch-size "
            f"{c.batch_size} --eot {c.eot} --placement side --frame-markers --layers {c.layers} "
            f"--lr-schedule cosine --seed {c.seed}" + (" --resume" if resume else "")
        )
        dev = resolve_device(c.device)
        models = self.models()
        source = models[self.card_paths().index(str(self.zoo.card(c.source)))]
        data = load_folder(self.world.train)
        prepared = prepare_run(config, [source], data, device=dev, cache=False)
        prepared.record["device"] = str(dev)
        advance = self._bar(f"optimise ({loss})", c.steps)
        run_optimization(
            prepared,
            run,
            resume=resume,
            on_step=(lambda i: advance(1)) if advance else None,
            command=["patchlab", "demo"],
        )
        self.announce(f"patchlab eval transfer {run} --models {' '.join(self.card_paths())} --seed {c.seed}")
        res = replace(evaluate_run(run, models, seed=c.seed, device=dev), command=["patchlab", "demo"])
        atomic_write_json(run / TRANSFER_JSON, res.to_dict())
        tr = ", ".join(f"{m.name} {m.tsuc:.1%}" for m in res.others)
        return res, f"white-box tSuc {res.sources[0].tsuc:.1%}; transfer " + tr

    def stage_matrix(self) -> tuple[Any, str]:
        from .eval.matrix import transfer_matrix
        from .utils import resolve_device

        runs = [self.p("runs", "sw"), self.p("runs", "ce")]
        self.announce(
            f"patchlab eval matrix {runs[0]} {runs[1]} --models {' '.join(self.card_paths())} "
            f"--out {self.p('matrix')} --seed {self.cfg.seed}"
        )
        m = transfer_matrix(runs, self.models(), seed=self.cfg.seed, device=resolve_device(self.cfg.device))
        m.write(self.p("matrix"))
        return m, "; ".join(
            f"{r.loss} mean transfer {r.mean_transfer:.1%}" for r in m.rows if r.mean_transfer is not None
        )

    def stage_print(self) -> tuple[Any, str]:
        from .print.sheets import load_patch_source, make_patch_pdf

        pdf = self.p("print", "patch.pdf")
        pdf.parent.mkdir(parents=True, exist_ok=True)
        self.announce(f"patchlab print patch {self.p('runs', 'sw')} --size-mm {self.cfg.size_mm:g} --out {pdf}")
        res = make_patch_pdf(load_patch_source(self.p("runs", "sw")), size_mm=self.cfg.size_mm)
        res.write(pdf)
        return res, f"{self.cfg.size_mm:g} mm patch with its marker frame"

    def stage_film(self) -> tuple[Any, str]:
        from .capture.simulate import SimConfig, simulate_capture
        from .layout import load_layout
        from .print.sheets import load_patch_source

        cap = self.p("capture")
        cap.mkdir(parents=True, exist_ok=True)
        src = load_patch_source(self.p("runs", "sw"))
        layout_path = self.p("print", "patch.layout.json")
        lay = load_layout(layout_path)
        out = []
        for name, control in (("video", None), ("control", "blank")):
            self.announce(
                f"patchlab simulate capture --patch {self.p('runs', 'sw')} --out {cap / (name + '.mp4')} "
                f"--layout {layout_path} --scenes {self.world.scenes} --frames {self.cfg.frames} "
                f"--seed {self.cfg.seed}" + (" --control blank" if control else "")
            )
            cfg = SimConfig(frames=self.cfg.frames, seed=self.cfg.seed, control=control)
            out.append(
                simulate_capture(
                    src.image,
                    lay,
                    self.world.scenes,
                    cap / f"{name}.mp4",
                    config=cfg,
                    target_class=src.target_class,
                    source={"path": src.path, "run_id": src.run_id, "sha256": src.sha256, "layout": str(layout_path)},
                    progress=self._bar(f"film ({name})", self.cfg.frames),
                )
            )
        return out, f"{self.cfg.frames} frames patched + {self.cfg.frames} control"

    def stage_capture(self) -> tuple[Any, str]:
        from .calib.camera import load_camera
        from .capture.loop import CaptureConfig, run_capture
        from .capture.simulate import read_truth, truth_path_for
        from .capture.sources import open_source
        from .layout import load_layout

        cap = self.p("capture")
        layout_path = self.p("print", "patch.layout.json")
        lay = load_layout(layout_path)
        summaries = []
        for name in ("video", "control"):
            video, camera = cap / f"{name}.mp4", cap / f"{name}.camera.json"
            self.announce(
                f"patchlab capture run --source {video} --models {' '.join(self.card_paths())} --target "
                f"{self.cfg.target} --out {cap / name} --layout {layout_path} --camera {camera} --no-hud "
                "--overwrite"
            )
            K, dist, _ = load_camera(camera)
            tp = truth_path_for(video)
            cfg = CaptureConfig(target=self.cfg.target, hud=False)
            summaries.append(
                run_capture(
                    open_source(str(video)),
                    self.models(),
                    cap / name,
                    cfg,
                    layout=lay,
                    layout_path=str(layout_path),
                    camera=(K, dist),
                    camera_path=str(camera),
                    truth=read_truth(tp) if tp.is_file() else None,
                    overwrite=True,
                    command=["patchlab", "demo"],
                )
            )
        return summaries, f"{summaries[0].frames} frames scored"

    def stage_physical(self) -> tuple[Any, str]:
        from .eval.physical import evaluate_capture

        cap = self.p("capture")
        self.announce(
            f"patchlab eval physical {cap / 'video'} --control {cap / 'control'} --json {self.p('physical.json')}"
        )
        res = evaluate_capture(cap / "video", control=cap / "control")
        atomic_write_json(self.p("physical.json"), res.to_dict())
        rates = [f"{m.model} {m.tsuc['rate']:.1%}" for m in res.models if m.tsuc.get("n")]
        return res, "filmed tSuc " + ", ".join(rates)

    def stage_report(self) -> tuple[Any, str]:
        from .eval.report import build_report, write_report

        cap = self.p("capture")
        rep = None
        for out in ("report.html", "report.pdf"):
            self.announce(
                f"patchlab report {self.p('runs', 'sw')} {cap / 'video'} --control {cap / 'control'} "
                f"--matrix {self.p('matrix', 'matrix.json')} --compare {self.p('runs', 'ce')} "
                f"--out {self.p(out)}"
            )
            rep = build_report(
                self.p("runs", "sw"),
                [cap / "video"],
                matrix=self.p("matrix", "matrix.json"),
                controls=[cap / "control"],
                compare=[self.p("runs", "ce")],
                argv=["patchlab", "demo"],
            )
            write_report(rep, self.p(out))
        return rep, "report.html, report.pdf"

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
            Stage(
                "capture loop", [cap / "video" / "summary.json", cap / "control" / "summary.json"], self.stage_capture
            ),
            Stage("physical tSuc", [self.p("physical.json")], self.stage_physical),
            Stage("report", [self.p("report.html"), self.p("report.pdf")], self.stage_report),
        ]

    def run(self) -> list[StageOutcome]:
        """Run every stage not finished before; returns what each stage did."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._save_state()
        for st in self.stages():
            if st.name in ("world", "models"):  # cached by content, not by this folder: always ask the cache
                self.on_stage(st.name, False)
                t0 = time.perf_counter()
                res, fig = st.run()
                self.outcomes.append(
                    StageOutcome(st.name, "cached" if "(cached)" in fig else "ran", time.perf_counter() - t0, fig, res)
                )
                continue
            self.outcomes.append(self.run_stage(st))
        return self.outcomes


__all__ = ["DemoConfig", "DemoPipeline", "STATE_FILE", "StageOutcome"]
