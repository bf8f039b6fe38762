"""PatchAttack on real models: every loss learns, the regularisers work, CLI and library agree bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import patchlab
from conftest import CIFAR_TEST, card
from patchlab.cli import app
from patchlab.data import split_indices
from patchlab.losses import non_printability, total_variation
from patchlab.optimize import PatchAttack
from patchlab.runs import read_patch

runner = CliRunner()


@pytest.fixture(scope="module")
def split_data(cifar_small):
    s = split_indices(cifar_small.labels, holdout_frac=0.3, seed=0)
    return cifar_small.subset(s.train), cifar_small.subset(s.holdout)


def _wb_tsuc(patch, model, hold, frac=0.2):
    return patchlab.evaluate(patch, model, hold, target="frog", placement="random", frac=frac).models[0].tsuc


@pytest.mark.parametrize("loss", ["sw", "w2", "quantile", "l2", "ce"])
def test_every_loss_learns_against_a_random_patch(resnet20, split_data, loss):
    train, hold = split_data
    attack = PatchAttack(
        loss=loss, steps=40, batch_size=32, frac=0.2, lr=0.05, placement="random", projections=64, seed=3, cache=False
    )
    res = attack(resnet20, train, "frog")
    noise = torch.rand(res.patch.shape, generator=torch.Generator().manual_seed(99))
    learnt, rand = _wb_tsuc(res, resnet20, hold), _wb_tsuc(noise, resnet20, hold)
    assert learnt > rand + 0.2, (loss, rand, learnt)


def test_tv_and_nps_lower_their_terms_at_default_weights(resnet20, split_data):
    train, _ = split_data
    palette = torch.tensor([[0.1, 0.1, 0.1], [0.9, 0.9, 0.9], [0.8, 0.2, 0.2], [0.2, 0.7, 0.3], [0.2, 0.3, 0.8]])
    common = dict(loss="ce", steps=40, batch_size=16, frac=0.2, placement="random", seed=5, cache=False)
    plain = PatchAttack(tv=0.0, **common)(resnet20, train, "frog").patch
    smooth = PatchAttack(**common)(resnet20, train, "frog").patch  # the default tv weight
    assert PatchAttack(**common).config.tv > 0
    assert float(total_variation(smooth)) < 0.9 * float(total_variation(plain))
    printable = PatchAttack(tv=0.0, nps=1.0, palette=palette, **common)(resnet20, train, "frog").patch
    assert float(non_printability(printable, palette)) < 0.9 * float(non_printability(plain, palette))


def test_nps_is_measured_on_the_rendered_colours(resnet20, split_data):
    train, _ = split_data

    class Dim(torch.nn.Module):  # a printer that prints everything at 60 %
        def forward(self, x):
            return x * 0.6

    palette = torch.tensor([[0.0, 0.0, 0.0], [0.6, 0.6, 0.6]])
    prep = PatchAttack(loss="ce", steps=1, nps=1.0, palette=palette, color=Dim(), cache=False).prepare(
        resnet20, train, "frog"
    )
    p = torch.rand(3, *prep.optimizer.renderer.patch_hw)
    _, value = prep.optimizer.regularizers(p)["nps"]
    assert float(value) == pytest.approx(float(non_printability(p * 0.6, palette)), rel=1e-6)
    assert prep.config.calib == "<Dim in memory>"


def test_cli_and_library_make_the_same_patch(resnet20, tmp_path):
    """`patchlab optimize` is a run folder around PatchAttack: the same seed gives the same bits."""
    out = tmp_path / "cli"
    r = runner.invoke(
        app,
        [
            "--threads",
            "1",
            "optimize",
            "--source",
            card("resnet20"),
            "--data",
            str(CIFAR_TEST),
            "--limit-per-class",
            "20",
            "--target",
            "frog",
            "--loss",
            "sw",
            "--patch-frac",
            "0.2",
            "--steps",
            "6",
            "--batch-size",
            "16",
            "--projections",
            "32",
            "--seed",
            "4",
            "--device",
            "cpu",
            "--no-cache",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    data = patchlab.load_folder(CIFAR_TEST, limit_per_class=20)
    split = split_indices(data.labels, holdout_frac=0.2, seed=4)
    res = PatchAttack(loss="sw", frac=0.2, steps=6, batch_size=16, projections=32, seed=4, cache=False)(
        resnet20, data.subset(split.train), "frog"
    )
    assert np.array_equal(read_patch(out), res.patch.numpy())
    other = PatchAttack(loss="sw", frac=0.2, steps=6, batch_size=16, projections=32, seed=5, cache=False)(
        resnet20, data.subset(split.train), "frog"
    )
    assert not np.array_equal(read_patch(out), other.patch.numpy())  # the comparison can fail


def test_untargeted_patch_raises_the_error_rate(resnet20, split_data):
    train, hold = split_data
    res = PatchAttack(loss="ce", steps=30, batch_size=32, frac=0.2, lr=0.05, placement="random", seed=2)(
        resnet20, train, None
    )
    assert res.target_class is None and res.config["target"] is None
    x = hold.float()
    y = resnet20(x).argmax(1)
    g = torch.Generator().manual_seed(0)
    fooled = (resnet20(patchlab.apply_patch(x, res, placement="random", generator=g)).argmax(1) != y).float().mean()
    noise = patchlab.apply_patch(x, torch.rand(res.patch.shape), placement="random", generator=g)
    base = (resnet20(noise).argmax(1) != y).float().mean()
    assert float(fooled) > float(base) + 0.15
    with pytest.raises(patchlab.ConfigError, match="untargeted"):
        PatchAttack(loss="sw")(resnet20, train, None)


def test_bad_input_is_one_clear_error(resnet20, split_data):
    train, _ = split_data
    with pytest.raises(patchlab.ConfigError, match="unknown settings"):
        PatchAttack(stepz=3)
    with pytest.raises(patchlab.DataError, match="unknown class 'froggy'"):
        PatchAttack(steps=1)(resnet20, train, "froggy")
    with pytest.raises(patchlab.ConfigError, match="wrap a network"):
        PatchAttack(steps=1)(torch.nn.Linear(3, 3), train, "frog")
    with pytest.raises(patchlab.DataError, match="no labels"):
        PatchAttack(steps=1)(resnet20, train.float(), "frog")  # unlabelled: no target images to take features from
    with pytest.raises(patchlab.ConfigError, match="NPS weight needs the printable palette"):
        PatchAttack(nps=1.0)


def test_feature_cache_key_follows_weights_and_preprocessing():
    from patchlab.features import model_fingerprint

    def make(seed, mean=0.5):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
        net(torch.zeros(1, 3, 8, 8))
        return patchlab.wrap(net, mean=(mean,) * 3, std=(0.5,) * 3, input_size=(3, 8, 8), labels=["a", "b"])

    a, b, c = make(0), make(1), make(0, mean=0.4)
    assert model_fingerprint(a) == model_fingerprint(make(0))  # same weights, same preprocessing
    assert model_fingerprint(a) != model_fingerprint(b)  # in-memory models with other weights never share
    assert model_fingerprint(a) != model_fingerprint(c)  # preprocessing is part of the key


def test_eval_compare_pairs_runs_on_the_same_images(resnet20, tmp_path):
    base = [
        "--threads",
        "1",
        "optimize",
        "--source",
        card("resnet20"),
        "--data",
        str(CIFAR_TEST),
        "--limit-per-class",
        "20",
        "--target",
        "frog",
        "--patch-frac",
        "0.2",
        "--steps",
        "8",
        "--batch-size",
        "16",
        "--placement",
        "random",
        "--device",
        "cpu",
        "--no-cache",
    ]
    for name, loss, seed in [("ce", "ce", 0), ("sw", "sw", 0), ("sw1", "sw", 1)]:
        r = runner.invoke(app, [*base, "--loss", loss, "--seed", str(seed), "--out", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
    ok = runner.invoke(
        app,
        [
            "--threads",
            "1",
            "eval",
            "compare",
            str(tmp_path / "sw"),
            str(tmp_path / "ce"),
            "--models",
            card("resnet20"),
            card("resnet32"),
            "--device",
            "cpu",
            "--json",
            str(tmp_path / "cmp.json"),
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert "mean transfer A - B" in ok.output and "95% CI" in ok.output
    from patchlab.eval.compare import Comparison
    import json

    cmp = Comparison.from_dict(json.loads((tmp_path / "cmp.json").read_text()))
    assert [m.name for m in cmp.models] == ["cifar10-resnet20", "cifar10-resnet32"] and cmp.models[0].is_source
    m = cmp.models[0]
    assert m.diff == pytest.approx(m.a - m.b) and m.ci95[0] <= m.diff <= m.ci95[1] and m.n == 36  # 40 held out, 4 frogs
    bad = runner.invoke(
        app,
        [
            "eval",
            "compare",
            str(tmp_path / "sw1"),
            str(tmp_path / "ce"),
            "--models",
            card("resnet20"),
            "--device",
            "cpu",
        ],
    )
    assert bad.exit_code == 1 and "same held-out images" in bad.output


def test_judge_run_can_take_a_seeded_subset_of_the_held_out_images(short_run_dir, resnet20):
    """``max_images``: the first n of one seeded shuffle, in folder order, the same for every run of the data."""
    from patchlab.eval.transfer import judge_run

    _r, whole, _p, o_all = judge_run(short_run_dir, [resnet20])
    _r, part, _p, o = judge_run(short_run_dir, [resnet20], max_images=7)
    _r, again, _p, _o = judge_run(short_run_dir, [resnet20], max_images=7)
    assert len(part) == 7 < len(whole) and part.paths == again.paths
    pos = [whole.paths.index(p) for p in part.paths]
    assert pos == sorted(pos)  # folder order
    assert torch.equal(o.clean_ok[0], o_all.clean_ok[0][pos])  # the same images, judged the same
    _r, other, _p, _o = judge_run(short_run_dir, [resnet20], max_images=7, subset_seed=1)
    assert other.paths != part.paths
