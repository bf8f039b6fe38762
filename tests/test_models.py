"""Model references, cards, weights and the frozen [0, 1] wrapper."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import CIFAR_MODELS, card
from patchlab.errors import ModelLoadError
from patchlab.models import CifarResNet, WrappedModel, list_models, load_model, read_state_dict

CARDS = sorted(p.stem for p in CIFAR_MODELS.glob("*.json"))


@pytest.mark.parametrize("name", CARDS)
def test_every_shared_card_loads_and_classifies(name, cifar_small):
    model = load_model(card(name))
    assert isinstance(model, WrappedModel)
    assert model.labels == json.loads(Path(card(name)).read_text())["labels"]
    x = cifar_small.float(slice(0, 40))
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (40, 10)
    # real weights: far above the 10% of chance on 40 real photographs
    acc = (logits.argmax(1) == cifar_small.labels[:40]).float().mean().item()
    assert acc >= 0.6, f"{name} accuracy {acc:.2f} on 40 airplanes: weights or preprocessing are wrong"


def test_wrapper_is_frozen_and_state_dict_unchanged_by_forward_backward(resnet20):
    before = {k: v.clone() for k, v in resnet20.state_dict().items()}
    x = torch.rand(8, 3, 48, 40, requires_grad=True)  # any size: the wrapper resizes
    resnet20.train()  # must stay in eval mode: BN statistics must not move
    assert not resnet20.training and not resnet20.net.training
    loss = resnet20(x).logsumexp(1).sum()
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in resnet20.parameters())
    after = resnet20.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"{k} changed"


def test_wrapper_checks_the_image_contract(resnet20):
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, H, W\)"):
        resnet20(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="floating point"):
        resnet20(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_named_layers_and_classifier_are_reachable(resnet20):
    names = resnet20.layer_names()
    assert "layer3.2.conv2" in names and "linear" in names
    assert isinstance(resnet20.get_layer("layer2"), torch.nn.Sequential)
    name, module = resnet20.classifier()
    assert name == "linear" and module.out_features == 10
    with pytest.raises(Exception, match="has no layer 'nope'"):
        resnet20.get_layer("nope")


def test_cifar_resnet_architecture_matches_he_et_al():
    # He et al. 2016 table 6: ResNet-20 has 0.27M parameters, ResNet-56 0.85M
    n20 = sum(p.numel() for p in CifarResNet(20).parameters())
    n56 = sum(p.numel() for p in CifarResNet(56).parameters())
    assert 0.26e6 < n20 < 0.28e6 and 0.84e6 < n56 < 0.86e6
    assert {"cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56", "cifar_resnet110"} <= set(
        list_models("cifar_resnet*")
    )
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(21)


def test_legacy_checkpoint_reads_with_module_prefix_removed():
    sd = read_state_dict(CIFAR_MODELS / "resnet20.th")
    assert "conv1.weight" in sd and not any(k.startswith("module.") for k in sd)


def test_missing_card_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="model not found"):
        load_model(str(tmp_path / "nope.json"))
    with pytest.raises(ModelLoadError, match="model not found"):
        load_model(tmp_path / "nope.json")  # a pathlib.Path, as a notebook passes it


def test_a_card_given_as_a_path_loads():
    m = load_model(Path(card("resnet20")))
    assert m.name == load_model(card("resnet20")).name and m.info.arch == "cifar_resnet20"
    with pytest.raises(TypeError, match="card path"):
        load_model(20)  # type: ignore[arg-type]


def test_weights_that_do_not_fit_name_the_keys(tmp_path):
    c = json.loads(Path(card("resnet32")).read_text())
    c["weights"] = str(CIFAR_MODELS / "resnet20.th")
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(c))
    with pytest.raises(ModelLoadError, match=r"do not fit the architecture: missing \d+ keys: layer1\.3"):
        load_model(str(p))


def test_pickle_that_needs_code_is_refused(tmp_path):
    import argparse

    p = tmp_path / "evil.pt"  # an arbitrary object: loading it would run pickle code
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)}, p)
    with pytest.raises(ModelLoadError, match="refusing to load .*weights_only=True"):
        read_state_dict(p)


def test_local_weights_for_a_timm_name_infer_classes(tmp_path):
    import timm

    net = timm.create_model("resnet10t", pretrained=False, num_classes=7)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    model = load_model("timm:resnet10t", weights=tmp_path / "w.safetensors")
    assert model.num_classes == 7 and model.input_hw == (224, 224)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model(x), net.eval()(model.normalize(x)), atol=1e-5)


def test_uncached_hub_weights_offline_say_how_to_pass_local_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError, match="--weights PATH"):
        load_model("timm:resnet10t")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ModelLoadError, match="--weights PATH"):
        load_model("torchvision:resnet18")


def test_cached_timm_weights_are_used_without_network(monkeypatch, tmp_path):
    """A hub file already in the cache (huggingface_hub's layout) loads offline."""
    import huggingface_hub.constants
    import timm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = timm.models.get_pretrained_cfg("resnet10t").hf_hub_id
    root = tmp_path / "hub" / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("abc")
    net = timm.create_model("resnet10t", pretrained=False)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(snap / "model.safetensors"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = load_model("timm:resnet10t")
    assert model.num_classes == 1000 and len(model.labels) == 1000
    assert torch.equal(model.net.state_dict()["fc.weight"], net.state_dict()["fc.weight"])


def test_unknown_scheme_name_is_clear():
    with pytest.raises(ModelLoadError, match="timm has no architecture 'no_such_net'"):
        load_model("timm:no_such_net")
    with pytest.raises(ModelLoadError, match="patchlab has no built-in architecture"):
        load_model("patchlab:no_such_net")


def test_card_with_label_count_mismatch(tmp_path):
    c = json.loads(Path(card("resnet20")).read_text())
    c["labels"] = c["labels"][:9]
    c["weights"] = str(CIFAR_MODELS / "resnet20.th")
    p = tmp_path / "c.json"
    p.write_text(json.dumps(c))
    with pytest.raises(ModelLoadError, match="9 labels but the network has 10 outputs"):
        load_model(str(p))
