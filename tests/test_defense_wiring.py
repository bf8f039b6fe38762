"""--defense in optimize, attack, capture run and eval physical (issue 14, deliver item 2): the
attack goes through the defence (BPDA where it has no gradient), judges see the same defence on
clean and attacked inputs, and every record, label and report names it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import CIFAR_TEST, card
from patchlab.cli import app
from patchlab.defenses import DefendedModel, adaptive, adaptive_model, defend, get_defense, undefended
from patchlab.errors import ConfigError
from patchlab.features import FeatureExtractor, model_fingerprint, target_features

R20, R32 = card("resnet20"), card("resnet32")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# ----------------------------------------------------------------- core helpers
def test_adaptive_gives_bpda_only_where_the_defence_has_no_gradient():
    assert adaptive("jpeg:50").spec == "jpeg:quality=50,bpda" and adaptive("jpeg:50").bpda
    assert adaptive("median:3").spec == "median:bpda" and adaptive("bitdepth:4").bpda
    for spec in ("none", "blur:1.5", "lgs"):  # differentiable: unchanged
        assert adaptive(spec).spec == get_defense(spec).spec and not adaptive(spec).bpda
    d = get_defense("jpeg:50,bpda")
    assert d.plain_spec == "jpeg:quality=50" and d.forward_spec == "jpeg:quality=50"
    with pytest.raises(ConfigError, match="unknown defence 'sharpen'"):
        adaptive("sharpen")


def test_adaptive_model_rewraps_every_defence_and_keeps_the_forward_pass(resnet20):
    stacked = defend(defend(defend(resnet20, "blur"), "jpeg:60"), "median:3")
    assert [d.spec for d in stacked.defenses] == ["blur", "jpeg:quality=60", "median"]  # none dropped
    a = adaptive_model(stacked)
    assert isinstance(a, DefendedModel) and [d.spec for d in a.defenses] == [
        "blur",
        "jpeg:quality=60,bpda",
        "median:bpda",
    ]
    assert a.base_name == resnet20.name and undefended(a).name == resnet20.name
    assert undefended(a).net is resnet20.net  # the same network, never a copy
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(a(x), stacked(x), atol=1e-5)
    assert adaptive_model(resnet20, "none") is resnet20
    assert adaptive_model(resnet20, "blur:1").name == resnet20.name + "+blur"


def test_feature_cache_key_names_the_defence(resnet20, tmp_path):
    fp = model_fingerprint
    assert fp(defend(resnet20, "blur:1")) != fp(resnet20)
    assert fp(defend(resnet20, "blur:1")) != fp(defend(resnet20, "blur:2"))
    assert fp(defend(resnet20, "blur:1")) == fp(defend(resnet20, "blur"))  # the same filter, spelled twice
    assert fp(defend(resnet20, "jpeg")) == fp(adaptive_model(resnet20, "jpeg"))  # BPDA changes gradients only
    assert fp(defend(resnet20, "jpeg")) != fp(defend(resnet20, "median"))
    # through target_features: a defended and an undefended model never share a cache file
    x = (torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    with FeatureExtractor(resnet20, "auto") as fe:  # hooks off the shared model afterwards
        plain = target_features(fe, x, cache_dir=tmp_path)
    with FeatureExtractor(defend(resnet20, "blur:1"), "auto") as fe:
        blurred = target_features(fe, x, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 2
    (k,) = plain
    assert not torch.allclose(plain[k], blurred[k])


# -------------------------------------------------------------------- optimize
OPT = [
    "optimize",
    "--source",
    R20,
    "--data",
    CIFAR_TEST,
    "--target",
    "frog",
    "--limit-per-class",
    "6",
    "--batch-size",
    "8",
    "--steps",
    "1",
    "--projections",
    "8",
    "--layers",
    "auto",
    "--device",
    "cpu",
]


def test_optimize_with_a_defense_records_it_and_keys_its_features_apart(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("PATCHLAB_CACHE", str(cache))
    r = invoke(*OPT, "--out", tmp_path / "plain")
    assert r.exit_code == 0, r.output
    files = set((cache / "features").glob("*.pt"))
    assert len(files) == 1
    r = invoke(*OPT, "--defense", "blur:1", "--out", tmp_path / "blur")
    assert r.exit_code == 0, r.output
    flat = " ".join(r.output.split())  # rich wraps long lines
    assert "through the defence blur" in flat and "--defense blur" in flat
    new = set((cache / "features").glob("*.pt")) - files
    assert len(new) == 1  # the defended source's features got a key of their own
    rec = json.loads((tmp_path / "blur" / "run.json").read_text())
    assert rec["config"]["defense"] == "blur" and "defense='blur'" in rec["attack"]
    assert rec["defense"]["name"] == "blur" and rec["defense"]["sigma"] == 1.0 and not rec["defense"]["bpda"]
    assert [s["name"] for s in rec["sources"]] == ["cifar10-resnet20"]  # the ref --resume reloads
    plain = json.loads((tmp_path / "plain" / "run.json").read_text())
    assert plain["config"]["defense"] == "none" and plain["defense"]["name"] == "none"
    # judged behind the same defence, the defended source is the patch's white box (it used to be
    # counted as a transfer model: every judged model is defended, so none matched the run's sources)
    j = tmp_path / "t.json"
    r = invoke("eval", "transfer", tmp_path / "blur", "--models", R20, R32, "--defense", "blur:1", "--device", "cpu",
               "--json", j)  # fmt: skip
    assert r.exit_code == 0, r.output
    t = json.loads(j.read_text())
    assert [(m["name"], m["is_source"]) for m in t["models"]] == [
        ("cifar10-resnet20+blur", True),
        ("cifar10-resnet32+blur", False),
    ]
    assert t["eot"]["defense"] == "blur:sigma=1"
    # and in a paired comparison: the defended source is no transfer model
    j = tmp_path / "c.json"
    r = invoke("eval", "compare", tmp_path / "blur", tmp_path / "plain", "--models", R20, R32, "--defense", "blur:1",
               "--device", "cpu", "--json", j)  # fmt: skip
    assert r.exit_code == 0, r.output
    c = json.loads(j.read_text())
    assert [(m["name"], m["is_source"]) for m in c["models"]] == [
        ("cifar10-resnet20+blur", True),
        ("cifar10-resnet32+blur", False),
    ]
    assert c["mean_transfer"]["a"] == pytest.approx(c["models"][1]["a"])  # the mean over the other model only
    # the report names it (headline and the patch's facts)
    from patchlab.eval.report import KeyValues, build_report

    rep = build_report(tmp_path / "blur")
    assert "optimised through the defence blur:sigma=1" in " ".join(rep.headline)
    kv = dict(next(b for s in rep.sections for b in s.blocks if isinstance(b, KeyValues)).items)
    assert kv["defence"] == "blur:sigma=1"
    assert "defence" not in " ".join(build_report(tmp_path / "plain").headline)
    # --resume keeps the defence (it is part of the path) and refuses to change it
    r = invoke("optimize", "--out", tmp_path / "blur", "--resume", "--steps", "2", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "blur" / "run.json").read_text())["config"]["defense"] == "blur"
    r = invoke(
        "optimize", "--out", tmp_path / "blur", "--resume", "--steps", "3", "--defense", "jpeg", "--device", "cpu"
    )
    assert (
        r.exit_code == 1
        and "cannot resume" in r.output
        and "defense: 'blur' -> 'jpeg:bpda'" in " ".join(r.output.split())
    )
    # a bad spec: one error line, exit 1, nothing written
    r = invoke(*OPT, "--defense", "blur:wide", "--out", tmp_path / "bad")
    assert (
        r.exit_code == 1 and r.output.startswith("error: bad value for blur sigma") and not (tmp_path / "bad").exists()
    )


def test_a_run_from_before_the_defense_option_still_resumes(tmp_path):
    """Old run records lack config.defense (it meant none) and config.projection_bank (it meant 0):
    --resume reads them as they were, neither calls it a change nor switches the run's path."""
    from patchlab.optimize import OptimizeConfig
    from patchlab.optimize.run import _check_resume

    cfg = OptimizeConfig(target="frog", steps=4, projection_bank=0)
    old = cfg.to_dict()
    del old["defense"], old["projection_bank"]
    _check_resume({"config": old, "step": 2}, cfg, tmp_path / "checkpoint.pt")
    with pytest.raises(ConfigError, match="defense"):
        _check_resume({"config": old, "step": 2}, OptimizeConfig(target="frog", steps=4, defense="lgs"), tmp_path)
    with pytest.raises(ConfigError, match="projection_bank"):
        _check_resume({"config": old, "step": 2}, OptimizeConfig(target="frog", steps=4), tmp_path)
    # from the command line: an old run folder resumes with the options it ran with
    out = tmp_path / "old"
    assert invoke(*OPT, "--no-cache", "--projection-bank", "0", "--out", out).exit_code == 0
    rec = json.loads((out / "run.json").read_text())
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    for c in (rec["config"], ck["config"]):
        del c["defense"], c["projection_bank"]
    (out / "run.json").write_text(json.dumps(rec))
    torch.save(ck, out / "checkpoint.pt")
    r = invoke("optimize", "--out", out, "--resume", "--steps", "2", "--device", "cpu", "--no-cache")
    assert r.exit_code == 0, r.output
    cfg2 = json.loads((out / "run.json").read_text())["config"]
    assert cfg2["defense"] == "none" and cfg2["projection_bank"] == 0


def _frogs_and_others():
    from patchlab.data import load_folder

    return load_folder(CIFAR_TEST, limit_per_class=4)


def test_adaptive_patch_attack_through_jpeg_moves_the_patch(resnet20):
    """A 2-step patch attack on a JPEG-defended source: BPDA gives the patch a non-zero gradient
    (plain JPEG has none), for `PatchAttack(defense=...)` and for a `defend()`ed source alike."""
    import patchlab
    from patchlab.optimize import PatchAttack

    data = _frogs_and_others()
    kw = dict(loss="ce", steps=2, batch_size=8, tv=0.0, frac=0.1, log_every=1, seed=0)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    assert not defend(resnet20, "jpeg")(x).requires_grad  # why the attack needs BPDA
    for attack, source in (
        (PatchAttack(defense="jpeg", **kw), resnet20),
        (PatchAttack(**kw), patchlab.defend(resnet20, "jpeg")),
    ):
        prep = attack.prepare(source, data, "frog")
        try:
            (m,) = prep.optimizer.sources
            assert m.name == "cifar10-resnet20+jpeg:bpda"
            state = prep.new_state()
            start = state.patch.detach().clone()
            images, _ = prep.optimizer.batch(torch.Generator().manual_seed(5))
            patched = prep.optimizer.render(state.patch, images, torch.Generator().manual_seed(6))
            value, _, _ = prep.optimizer.loss(0, patched, torch.Generator())
            (g,) = torch.autograd.grad(value, state.patch)
            assert torch.isfinite(g).all() and g.abs().sum() > 0
            prep.optimizer.run(state, 2)
            assert state.step == 2 and (state.patch.detach() - start).abs().max() > 1e-3
        finally:
            prep.close()
    res = PatchAttack(defense="jpeg", **kw)(resnet20, data, "frog")
    assert res.config["defense"] == "jpeg:bpda" and res.models == ["cifar10-resnet20+jpeg:bpda"]
    assert "defense='jpeg:bpda'" in repr(PatchAttack(defense="jpeg", **kw))
    with pytest.raises(ConfigError, match="unknown defence"):
        PatchAttack(defense="sharpen")


# ---------------------------------------------------------------------- attack
ATK = ["attack", "pgd", "--model", R20, "--data", CIFAR_TEST, "--n", "12", "--steps", "3", "--eps", "0.01",
       "--device", "cpu", "--transfer", R32]  # fmt: skip


@pytest.fixture(scope="module")
def pgd_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("atk")
    out = {}
    for spec in ("none", "median:3"):
        r = invoke(*ATK, "--defense", spec, "--out", root / spec.replace(":", "_"))
        assert r.exit_code == 0, r.output
        out[spec] = root / spec.replace(":", "_")
    return out


def test_attack_with_a_defense_scores_on_the_defended_models(pgd_runs, resnet20):
    from patchlab.data import read_image
    from patchlab.models import load_model

    d = pgd_runs["median:3"]
    rec = json.loads((d / "attack.json").read_text())
    assert rec["defense"]["name"] == "median" and rec["defense"]["k"] == 3 and rec["defense"]["bpda"]
    assert [s["name"] for s in rec["sources"]] == ["cifar10-resnet20+median:bpda"]
    assert [s["name"] for s in rec["transfer_models"]] == ["cifar10-resnet32+median"]
    assert list(rec["images"][0]["transfer"]) == ["cifar10-resnet32+median"]
    # success after 8-bit PNG is what the *defended* source says about the saved adversarials
    adv = torch.stack([read_image(d / im["adversarial"]) for im in rec["images"]])
    labels = torch.tensor([resnet20.labels.index(im["label"]) for im in rec["images"]])
    with torch.no_grad():
        wrong_defended = defend(resnet20, "median:3")(adv).argmax(1) != labels
    assert wrong_defended.tolist() == [im["success_png"] for im in rec["images"]]
    # the transfer model judged the clean images behind the same defence
    clean = torch.stack([read_image(im["source"]) for im in rec["images"]])
    r32 = defend(load_model(R32), "median:3")
    with torch.no_grad():
        acc = float((r32(clean).argmax(1) == labels).float().mean())
    assert rec["transfer"][0]["clean_accuracy"] == pytest.approx(acc)
    plain = json.loads((pgd_runs["none"] / "attack.json").read_text())
    assert plain["defense"]["name"] == "none" and [s["name"] for s in plain["sources"]] == ["cifar10-resnet20"]
    assert rec["summary"]["success_rate"] != plain["summary"]["success_rate"]


def test_attack_report_names_the_defence(pgd_runs):
    from patchlab.eval.report import KeyValues, build_attack_report, render_html

    rep = build_attack_report(pgd_runs["median:3"])
    kv = dict(next(b for s in rep.sections for b in s.blocks if isinstance(b, KeyValues)).items)
    assert kv["defence"].startswith("median:k=3,bpda") and "BPDA" in kv["defence"]
    assert "median:k=3,bpda" in render_html(rep)
    kv = dict(
        next(
            b for s in build_attack_report(pgd_runs["none"]).sections for b in s.blocks if isinstance(b, KeyValues)
        ).items
    )
    assert kv["defence"] == "none"


def test_attack_bad_defense_is_one_error_line(tmp_path):
    r = invoke(*ATK, "--defense", "median:4", "--out", tmp_path / "x")
    assert r.exit_code == 1 and r.output.startswith("error: median k must be an odd integer")
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------- capture and eval physical
def test_capture_run_and_eval_physical_name_the_defence(tmp_path):
    from test_capture_helpers import TARGET, capture, printed, video

    res = video()
    out = tmp_path / "c"
    r = invoke("capture", "run", "--source", res.video, "--target", TARGET, "--out", out, "--models", R20,
               "--layout", printed()[1], "--defense", "blur:1.5", "--max-frames", "6", "--no-hud")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "defence blur:sigma=1.5" in " ".join(r.output.split())
    summ = json.loads((out / "summary.json").read_text())
    assert summ["config"]["defense"]["spec"] == "blur:sigma=1.5"
    assert list(summ["tsuc"]) == ["cifar10-resnet20+blur:sigma=1.5"]
    frames = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    assert all(list(f["models"]) == ["cifar10-resnet20+blur:sigma=1.5"] for f in frames if f.get("models"))

    j = tmp_path / "p.json"
    r = invoke("eval", "physical", out, "--defense", "blur:1.5", "--json", j, "--plots", tmp_path / "plots")
    assert r.exit_code == 0, r.output
    assert (
        "defence blur:sigma=1.5" in " ".join(r.output.split())
        and json.loads(j.read_text())["defense"] == "blur:sigma=1.5"
    )
    r = invoke("eval", "physical", out, "--defense", "jpeg", "--plots", tmp_path / "plots")
    assert r.exit_code == 1 and "scored behind the defence 'blur:sigma=1.5', not 'jpeg'" in " ".join(r.output.split())
    r = invoke("eval", "physical", out, "--defense", "jpeg:best", "--plots", tmp_path / "plots")
    assert r.exit_code == 1 and r.output.startswith("error: bad value for jpeg quality")
    # a control filmed without the defence is refused: the comparison would not be matched
    r = invoke("eval", "physical", out, "--control", capture(control="blank"), "--plots", tmp_path / "plots")
    assert r.exit_code == 1 and "control capture was scored behind the defence 'none'" in " ".join(r.output.split())


def test_old_capture_summaries_and_the_capture_report_name_the_defence(tmp_path):
    from test_capture_helpers import capture

    from patchlab.eval.physical import capture_defense, evaluate_capture
    from patchlab.eval.report import _defense_text

    assert capture_defense({"config": {}}) == "none"
    assert capture_defense({"config": {"defense": {"name": "none", "repr": "Defense(name='none')"}}}) == "none"
    old = {"name": "blur", "repr": "BlurDefense(name='blur', sigma=1.5)"}  # written by capture/defenses.py
    assert capture_defense({"config": {"defense": old}}) == "blur:sigma=1.5"
    old_j = {"name": "jpeg", "repr": "JpegDefense(name='jpeg', quality=75)"}
    assert capture_defense({"config": {"defense": old_j}}) == "jpeg"
    assert _defense_text(get_defense("blur:1.5").to_dict()) == "blur:sigma=1.5"
    assert _defense_text(old) == "BlurDefense(name='blur', sigma=1.5)" and _defense_text(None) == "none"
    # an undefended capture compared with a control relabelled as defended: refused
    ctrl = tmp_path / "ctrl"
    shutil.copytree(capture(control="blank"), ctrl)
    s = json.loads((ctrl / "summary.json").read_text())
    s["config"]["defense"] = get_defense("lgs").to_dict()
    (ctrl / "summary.json").write_text(json.dumps(s))
    with pytest.raises(ConfigError, match="control capture was scored behind the defence 'lgs'"):
        evaluate_capture(capture(), control=ctrl)
    assert evaluate_capture(capture(), defense="none").defense == "none"
    assert np.isfinite(evaluate_capture(capture()).models[0].tsuc["rate"])
