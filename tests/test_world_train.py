"""The embedded world's model zoo: small architectures, seeded training, cards, cache, CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from patchlab.cli import app
from patchlab.errors import ConfigError, DataError, ModelLoadError
from patchlab.models import load_model, read_card
from patchlab.models.load import build_network
from patchlab.models.small import LeNet, SmallResNet
from patchlab.world import (
    DEFAULT_MODELS,
    ModelSpec,
    TrainConfig,
    ensure_zoo,
    make_world,
    read_zoo,
    sign_classes,
    train_zoo,
)
from patchlab.world import train as train_mod

runner = CliRunner()
NC = len(sign_classes())

#: A quick zoo for unit tests: the default families, few steps.
QUICK = TrainConfig(
    models=(
        ModelSpec("lenet", "patchlab", "lenet", {"input_size": 32}, input_size=32, epochs=8, batch_size=32, lr=3e-3),
        ModelSpec(
            "resnet",
            "patchlab",
            "small_resnet",
            {"widths": [8, 16, 32], "blocks": [1, 1, 1], "stem_stride": 2},
            input_size=64,
            epochs=8,
            batch_size=32,
            lr=4e-3,
        ),
        ModelSpec(
            "vit",
            "timm",
            "vit_tiny_patch16_224",
            {
                "img_size": 32,
                "patch_size": 8,
                "embed_dim": 32,
                "depth": 1,
                "num_heads": 2,
                "global_pool": "avg",
                "class_token": False,
            },
            input_size=32,
            epochs=10,
            batch_size=32,
            lr=3e-3,
        ),
    )
)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return make_world(tmp_path_factory.mktemp("w") / "world", 30, 64, 0, scenes_per_class=0, workers=1).root


@pytest.fixture(scope="module")
def zoo(world, tmp_path_factory):
    return train_zoo(world, tmp_path_factory.mktemp("z") / "zoo", seed=0, config=QUICK)


# ---------------------------------------------------------------- architectures
def test_lenet_is_seed_004_shaped():
    net = LeNet(num_classes=11)
    assert [m.kernel_size for m in (net.conv1, net.conv2)] == [(5, 5), (5, 5)]
    assert (net.conv1.out_channels, net.conv2.out_channels) == (32, 64)
    assert (net.fc1.in_features, net.fc1.out_features, net.fc2.out_features) == (64 * 5 * 5, 256, 128)
    assert isinstance(net.in1, torch.nn.InstanceNorm2d) and net.in1.affine
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 11)
    assert LeNet(num_classes=4, input_size=64)(torch.rand(1, 3, 64, 64)).shape == (1, 4)
    with pytest.raises(ValueError, match="at least 16 x 16"):
        LeNet(input_size=12)


def test_small_resnet_shapes_and_stem_stride():
    net = SmallResNet(num_classes=7, widths=(8, 16), blocks=(2, 1), stem_stride=2)
    assert net(torch.rand(3, 3, 64, 64)).shape == (3, 7)
    assert net.conv1.stride == (2, 2)
    with pytest.raises(ValueError, match="equally long"):
        SmallResNet(widths=(8, 16), blocks=(1,))


def test_every_default_model_builds_through_the_card_factory():
    for spec in DEFAULT_MODELS:
        net = build_network(spec.framework, spec.arch, {**spec.kwargs, "num_classes": NC})
        x = torch.rand(2, 3, spec.input_size, spec.input_size)
        assert net(x).shape == (2, NC), spec.name
    families = {(s.framework, s.arch) for s in DEFAULT_MODELS}
    assert len(families) == 3 and ("timm", "vit_tiny_r_s16_p8_224") in families
    with pytest.raises(ModelLoadError, match="unknown framework 'keras'"):
        build_network("keras", "lenet")


def test_augment_is_seeded_and_never_flips():
    spec = DEFAULT_MODELS[0]
    x = torch.rand(4, 3, 32, 32)
    a = train_mod.augment(x, spec, torch.Generator().manual_seed(3))
    b = train_mod.augment(x, spec, torch.Generator().manual_seed(3))
    c = train_mod.augment(x, spec, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and 0 <= a.min() and a.max() <= 1
    still = replace(spec, shift=0.0, scale=0.0, rotate=0.0, jitter=0.0)
    assert torch.allclose(train_mod.augment(x, still, torch.Generator().manual_seed(0)), x, atol=1e-5)
    # an arrow pointing right stays pointing right: the left half keeps its content
    img = torch.zeros(1, 3, 32, 32)
    img[..., 8:24, 18:30] = 1.0
    out = train_mod.augment(img, spec, torch.Generator().manual_seed(1))
    assert out[..., 16:].sum() > 3 * out[..., :16].sum()


# ---------------------------------------------------------------- training
def test_quick_zoo_learns_far_above_chance(zoo, world):
    assert [m.name for m in zoo.models] == ["lenet", "resnet", "vit"]
    by = {m.name: m for m in zoo.models}
    # chance is 1/11 = 9 %; these few steps reach about 75 / 40 / 30 %
    assert by["lenet"].val_accuracy > 0.5
    for m in zoo.models:
        assert m.val_accuracy > 2.0 / NC and m.val_n == 6 * NC and m.train_seconds > 0
        assert m.card.is_file() and m.weights.suffix == ".safetensors" and m.weights.is_file()


def test_cards_are_in_the_shared_format_and_load(zoo, world):
    for m in zoo.models:
        card = json.loads(m.card.read_text())
        for key in (
            "name",
            "framework",
            "arch",
            "kwargs",
            "input_size",
            "resize",
            "mean",
            "std",
            "labels",
            "weights",
            "val_accuracy",
            "train_seconds",
            "train_config",
            "world",
            "weights_sha256",
        ):
            assert key in card, (m.name, key)
        assert card["labels"] == sign_classes() and card["weights"] == m.weights.name
        assert card["train_config"]["seed"] == 0 and card["world"]["fingerprint"] == zoo.world["fingerprint"]
        assert all(0.0 < s < 1.0 for s in card["std"]) and all(0.0 < v < 1.0 for v in card["mean"])
        read_card(m.card)
        model = load_model(str(m.card))
        assert model.labels == sign_classes()
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, NC)


def test_models_check_reports_the_cards_val_accuracy(zoo, world, tmp_path):
    out = tmp_path / "acc.json"
    res = runner.invoke(
        app,
        ["models", "check", *map(str, zoo.cards), "--data", str(world / "val"), "--device", "cpu", "--json", str(out)],
    )
    assert res.exit_code == 0, res.output
    got = {m["name"]: m["accuracy"] for m in json.loads(out.read_text())["models"]}
    for m in zoo.models:
        assert got[f"world-{m.name}"] == pytest.approx(m.val_accuracy, abs=1e-6)


def test_same_seed_same_weights_and_global_rng_untouched(world, tmp_path):
    one = TrainConfig(models=(replace(QUICK.models[1], epochs=1),))
    state = torch.random.get_rng_state()
    a = train_zoo(world, tmp_path / "a", seed=5, config=one)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = train_zoo(world, tmp_path / "b", seed=5, config=one)
    c = train_zoo(world, tmp_path / "c", seed=6, config=one)
    assert a.models[0].weights_sha256 == b.models[0].weights_sha256
    assert a.models[0].weights_sha256 != c.models[0].weights_sha256


def test_resume_keeps_finished_models_and_retrains_damaged_ones(world, tmp_path, monkeypatch):
    one = TrainConfig(models=QUICK.models[:2]).scaled(0.1)
    first = train_zoo(world, tmp_path / "z", config=one)
    assert not any(m.cached for m in first.models)
    again = train_zoo(world, tmp_path / "z", config=one)
    assert all(m.cached for m in again.models) and again.cached
    assert [m.weights_sha256 for m in again.models] == [m.weights_sha256 for m in first.models]
    first.models[1].weights.write_bytes(b"rotten")
    trained = []
    real = train_mod.train_model
    monkeypatch.setattr(
        train_mod, "train_model", lambda spec, *a, **k: trained.append(spec.name) or real(spec, *a, **k)
    )
    third = train_zoo(world, tmp_path / "z", config=one)
    assert trained == ["resnet"] and third.models[0].cached and not third.models[1].cached
    assert third.models[1].weights_sha256 == first.models[1].weights_sha256  # same seed, same weights


def test_ensure_zoo_trains_once_then_returns_the_cache(world, tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHLAB_CACHE", str(tmp_path / "cache"))
    cfg = TrainConfig(models=QUICK.models[:1]).scaled(0.25)
    first = ensure_zoo(world, config=cfg)
    assert not first.cached and first.root.parent == tmp_path / "cache" / "zoos"
    monkeypatch.setattr(train_mod, "train_model", lambda *a, **k: pytest.fail("trained a cached zoo"))
    second = ensure_zoo(world, config=cfg)
    assert second.cached and second.root == first.root and second.cards == first.cards
    assert ensure_zoo(world, config=cfg, cache_dir=tmp_path / "cache").cached
    monkeypatch.undo()
    monkeypatch.setenv("PATCHLAB_CACHE", str(tmp_path / "cache"))
    first.models[0].weights.write_bytes(b"corrupt")  # a damaged cache is rebuilt, not trusted
    with pytest.raises(ModelLoadError, match="does not match its hash"):
        read_zoo(first.root)
    third = ensure_zoo(world, config=cfg)
    assert not third.cached and read_zoo(third.root).models[0].weights_sha256 == first.models[0].weights_sha256
    other = ensure_zoo(world, config=cfg, seed=1)
    assert other.root != first.root


def test_training_contract_errors(world, tmp_path):
    with pytest.raises(DataError, match="is not a patchlab world"):
        train_zoo(tmp_path, tmp_path / "z")
    with pytest.raises(ConfigError, match="names must be unique"):
        TrainConfig(models=(QUICK.models[0], QUICK.models[0]))
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 3, H, W\)"):
        train_mod.train_model(QUICK.models[0], torch.zeros(4, 32, 32), torch.zeros(4, dtype=torch.long), NC)
    with pytest.raises(ModelLoadError, match="is not a patchlab model zoo"):
        read_zoo(tmp_path)


# ---------------------------------------------------------------- CLI
def test_cli_train_on_a_non_world_is_one_line_and_exit_1(tmp_path):
    res = runner.invoke(app, ["world", "train", "--data", str(tmp_path), "--out", str(tmp_path / "z")])
    assert res.exit_code == 1
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "is not a patchlab world" in lines[0]


def test_cli_train_default_zoo_then_keeps_it(world, tmp_path):
    """The real command on a tiny world (two steps an epoch), then again: every model kept."""
    out = tmp_path / "zoo"
    res = runner.invoke(app, ["world", "train", "--data", str(world), "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    zoo = read_zoo(out)
    assert [m.name for m in zoo.models] == [s.name for s in DEFAULT_MODELS]
    assert "val accuracy" in res.output and f"models check {out}/*.json" in res.output
    res = runner.invoke(app, ["world", "train", "--data", str(world), "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert res.output.count("(kept)") == len(DEFAULT_MODELS)


def test_ensure_zoo_builds_its_own_world_when_given_none(tmp_path):
    cfg = TrainConfig(models=QUICK.models[:1]).scaled(0.25)
    zoo = ensure_zoo(None, n_per_class=4, size=32, world_seed=3, seed=0, config=cfg, cache_dir=tmp_path)
    worlds = list((tmp_path / "worlds").iterdir())
    assert len(worlds) == 1 and zoo.world["config"]["seed"] == 3 and zoo.world["config"]["size"] == 32
    assert zoo.world["root"] == str(worlds[0])
    again = ensure_zoo(None, n_per_class=4, size=32, world_seed=3, seed=0, config=cfg, cache_dir=tmp_path)
    assert again.cached and again.root == zoo.root
