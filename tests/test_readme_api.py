"""The README's "From Python" block runs as written, and the API it shows keeps its promises."""

from __future__ import annotations

import re

import pytest
import torch

import patchlab
from conftest import REPO, SHARED


def _block() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## From Python", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "the README's From Python section has no python block"
    return blocks[0]


def test_readme_from_python_block_runs(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    if not (REPO / ".." / "shared").exists():
        pytest.fail(f"../shared is needed beside the repository (looked for {SHARED})")
    ns: dict = {}
    exec(compile(_block(), "README.md:From Python", "exec"), ns)
    res, streamed, report = ns["result"], ns["streamed"], ns["report"]
    assert isinstance(res, patchlab.PatchResult) and isinstance(report, patchlab.TransferResult)
    assert res.patch.shape == streamed.patch.shape and res.patch.shape[0] == 3
    assert len(res.history) >= 1 and res.config["target"] == "frog"
    assert report.models[0].n == 180  # 200 images, 20 of them frogs
    assert ns["patched"].shape == (8, 3, 32, 32)
    # the wrapped network was left as the caller made it
    assert ns["net"].training and all(p.requires_grad for p in ns["net"].parameters())
    out = capsys.readouterr().out
    assert "PatchAttack(loss='sw', steps=5" in out


def test_wrap_does_not_mutate_and_stops_parameter_gradients():
    import timm

    net = timm.create_model("resnet18", pretrained=False, num_classes=3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    m = patchlab.wrap(net, mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(3, 32, 32), labels=["a", "b", "c"])
    x = torch.rand(4, 3, 40, 40, requires_grad=True)
    m(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())  # no gradient went into the caller's weights
    assert net.training and all(p.requires_grad for p in net.parameters())
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics untouched too
    # eval mode inside: the same input twice gives the same output (no batch statistics)
    with torch.no_grad():
        assert torch.equal(m(x[:1]), m(x[:1]))
    with pytest.raises(patchlab.ConfigError, match="std must be positive"):
        patchlab.wrap(net, mean=(0.5,) * 3, std=(0.5, 0.0, 0.5), input_size=(3, 32, 32), labels=["a", "b", "c"])


def test_result_objects_round_trip():
    res = patchlab.PatchResult(
        patch=torch.rand(3, 4, 4),
        history=[{"step": 1, "loss": 1.0, "tsuc": 0.5, "terms": {}}],
        config={"loss": "sw"},
        target_class="frog",
        models=["m"],
        steps=1,
        seconds=0.5,
    )
    back = patchlab.PatchResult.from_dict(res.to_dict())
    assert torch.allclose(back.patch, res.patch) and back.history == res.history and back.final_tsuc == 0.5
