"""Feature hooks on real shared models: auto layer by structure, depth, names, cache, no mutation."""

from __future__ import annotations

import pytest
import torch

from conftest import card
from patchlab import features as Fe
from patchlab.errors import ConfigError
from patchlab.models import load_model


@pytest.fixture(scope="module")
def vit():
    return load_model(card("vit_tiny_p4"))


def test_auto_is_the_classifier_input_of_a_cnn(resnet20):
    x = torch.rand(3, 3, 32, 32)
    with Fe.FeatureExtractor(resnet20, "auto") as fe:
        logits, feats = fe(x)
    (key,) = feats
    assert key == "linear:input"
    # the CIFAR ResNet's pre-logit features: global average pool of layer3
    net = resnet20.net
    with torch.no_grad():
        h = net.layer3(net.layer2(net.layer1(torch.relu(net.bn1(net.conv1(resnet20.normalize(x)))))))
    assert torch.allclose(feats[key], h.mean((2, 3)), atol=1e-5)
    assert torch.allclose(logits, net.linear(feats[key]), atol=1e-5)


def test_auto_is_the_pooled_token_of_a_transformer(vit):
    x = torch.rand(2, 3, 32, 32)
    with Fe.FeatureExtractor(vit, "auto,depth:0.5") as fe:
        _, feats = fe(x)
    with torch.no_grad():
        tokens = vit.net.forward_features(vit.normalize(x))
        pooled = vit.net.forward_head(tokens, pre_logits=True)
    assert torch.allclose(feats["head:input"], pooled, atol=1e-5)
    # an intermediate block's token sequence gives its class token
    assert feats["blocks.6:output"].shape == (2, 192)


def test_depth_picks_blocks_in_forward_order(resnet20):
    blocks = Fe.feature_blocks(resnet20)
    assert blocks == [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    refs = Fe.resolve_layers(resnet20, "depth:0,depth:1,layer2.1")
    assert [r.module for r in refs] == ["layer1.0", "layer3.2", "layer2.1"]
    with Fe.FeatureExtractor(resnet20, refs) as fe:
        _, feats = fe(torch.rand(2, 3, 32, 32))
    assert [v.shape[1] for v in feats.values()] == [16, 64, 32]


def test_bad_layer_specs_are_clear_errors(resnet20):
    with pytest.raises(ConfigError, match="no layer 'layer9'"):
        Fe.resolve_layers(resnet20, "layer9")
    with pytest.raises(ConfigError, match=r"depth must be in \[0, 1\]"):
        Fe.parse_layers("depth:1.5")
    with pytest.raises(ConfigError, match="repeat"):
        Fe.parse_layers("auto,auto")
    with pytest.raises(ConfigError, match="same layer twice"):
        Fe.resolve_layers(resnet20, "depth:1,layer3.2")


def test_hooks_leave_the_model_unchanged(resnet20):
    before = {k: v.clone() for k, v in resnet20.state_dict().items()}
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    fe = Fe.FeatureExtractor(resnet20, "auto,depth:0.5")
    _, feats = fe(x)
    sum(v.sum() for v in feats.values()).backward()
    fe.close()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in resnet20.net.modules())
    after = resnet20.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_target_features_are_cached(resnet20, tmp_path, monkeypatch):
    imgs = (torch.rand(10, 3, 32, 32) * 255).to(torch.uint8)
    fe = Fe.FeatureExtractor(resnet20, "auto")
    first = Fe.target_features(fe, imgs, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 1

    def boom(*a, **k):
        raise AssertionError("features recomputed despite the cache")

    monkeypatch.setattr(Fe, "extract_features", boom)
    again = Fe.target_features(fe, imgs, cache_dir=tmp_path)
    assert torch.equal(first["linear:input"], again["linear:input"])
    with pytest.raises(AssertionError, match="recomputed"):  # other images: a new key
        Fe.target_features(fe, imgs.flip(0), cache_dir=tmp_path)
    fe.close()
