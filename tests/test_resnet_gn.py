"""Tests for the case-study-2 ResNet-50-GN encoder (lzn_hf.resnet_gn).

Conversion of upstream checkpoints and parity with upstream's outputs: tests/test_conversion_resnet_gn.py.
"""

from __future__ import annotations

import torch

from lzn_hf import LZNImageEncoderConfig
from lzn_hf.resnet_gn import ResNetGNEncoder


def _encoder(depths, latent_dim=256) -> ResNetGNEncoder:
    return ResNetGNEncoder(LZNImageEncoderConfig(encoder_type="resnet_gn", depths=list(depths), latent_dim=latent_dim))


# ------------------------------------------------------------------------------- module behaviour
def test_initialisation_matches_upstream_description():
    model = _encoder((1, 2, 1, 1))
    for stage in model.stages:
        for block in stage.blocks:
            assert torch.all(block.norm3.weight == 0) and torch.all(block.norm3.bias == 0)
            for norm in (block.norm1, block.norm2):
                assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
            if block.shortcut is not None:
                assert torch.all(block.shortcut.norm.weight == 1)
    last_norm = model.head.norms[-1]
    assert torch.all(last_norm.bias == 0) and torch.all(last_norm.weight == 1)
    # with zero-init residual branches every non-first block starts as an identity (+ReLU of non-negative input)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        h = model.stem((x + 1) / 2)
        h = model.stages[0](h)
        block = model.stages[1].blocks[0]
        y = block(h)
        assert torch.equal(model.stages[1].blocks[1](y), y)


def test_shapes_and_input_rescale():
    model = _encoder((1, 1, 1, 1), latent_dim=64).eval()
    assert model.feature_dim == 2048
    x = torch.rand(3, 3, 48, 40) * 2 - 1
    with torch.no_grad():
        anchors, features = model(x, return_features=True)
        stem_out = model.stem((x + 1) / 2)
    assert anchors.shape == (3, 64) and features.shape == (3, 2048)
    assert stem_out.shape == (3, 64, 12, 10)


def test_gradient_checkpointing_same_output_and_grads():
    torch.manual_seed(0)
    model = _encoder((1, 2, 1, 1), latent_dim=64)
    with torch.no_grad():  # make every branch active (zero-init gammas would hide mistakes)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.rand(2, 3, 32, 32) * 2 - 1

    def run(flag: bool):
        model.gradient_checkpointing = flag
        model.zero_grad(set_to_none=True)
        anchors, features = model.forward_with_features(x)
        (anchors.square().sum() + features.sum()).backward()
        return anchors.detach(), features.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    a0, f0, g0 = run(False)
    a1, f1, g1 = run(True)
    assert torch.allclose(a0, a1, atol=1e-6, rtol=0) and torch.allclose(f0, f1, atol=1e-6, rtol=0)
    assert g0.keys() == g1.keys()
    for name in g0:
        assert torch.allclose(g0[name], g1[name], atol=1e-5, rtol=1e-5), name
    with torch.no_grad():  # checkpointing is bypassed without grad
        assert torch.allclose(model(x), a0, atol=1e-6, rtol=0)
