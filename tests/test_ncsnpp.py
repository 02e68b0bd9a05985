"""Tests for the NCSN++ encoder/decoder (lzn_hf.ncsnpp).

Conversion of upstream checkpoints and parity with upstream's outputs: tests/test_conversion_ncsnpp.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lzn_hf import LZNImageDecoderConfig, LZNImageEncoderConfig
from lzn_hf.ncsnpp import NCSNppDecoder, NCSNppEncoder, downsample_2d, upfirdn2d, upsample_2d

_TINY_TRUNK = dict(image_size=16, num_channels=3, nf=16, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[8], latent_dim=8)


def _tiny_encoder(**overrides):
    config = LZNImageEncoderConfig(**{**_TINY_TRUNK, "head_channels": 4, "head_hidden_dim": 32, "head_num_layers": 2, **overrides})
    return NCSNppEncoder(config)


def _tiny_decoder(**overrides):
    return NCSNppDecoder(LZNImageDecoderConfig(**{**_TINY_TRUNK, "num_classes": 10, **overrides}))


# --------------------------------------------------------------------------------------------------
# Module behaviour
# --------------------------------------------------------------------------------------------------


def _randomize(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return module.eval()


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        dict(fir=True, progressive_input="input_skip", head_resolutions=(8, 4)),
        dict(fir=True, progressive_input="input_skip", progressive_combine="cat"),
    ],
    ids=["plain", "fir_input_skip", "input_skip_cat"],
)
def test_encoder_batch_vs_single(overrides):
    torch.manual_seed(0)
    encoder = _randomize(_tiny_encoder(**overrides))
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        batched = encoder(x)
        single = torch.cat([encoder(x[i : i + 1]) for i in range(4)])
    assert batched.shape == (4, 8)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        dict(
            fir=True, progressive="output_skip", progressive_input="input_skip", embedding_type="fourier",
            scale_by_sigma=True, num_classes=0,
        ),
    ],
    ids=["positional_conditional", "fourier_output_skip"],
)
def test_decoder_batch_vs_single(overrides):
    torch.manual_seed(0)
    decoder = _randomize(_tiny_decoder(**overrides))
    x = torch.randn(4, 3, 16, 16)
    t = torch.tensor([1e-3, 0.3, 0.7, 1.0])
    z = torch.randn(4, 8)
    labels = F.one_hot(torch.tensor([0, 3, 3, 9]), 10).float() if decoder.num_classes else None
    with torch.no_grad():
        batched = decoder(x, t, z, labels)
        single = torch.cat(
            [decoder(x[i : i + 1], t[i : i + 1], z[i : i + 1], None if labels is None else labels[i : i + 1])
             for i in range(4)]
        )
    assert batched.shape == x.shape
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_gradients_flow_and_fourier_weight_stays_frozen():
    encoder = _randomize(_tiny_encoder(fir=True, progressive_input="input_skip")).train()
    decoder = _randomize(
        _tiny_decoder(fir=True, progressive="output_skip", progressive_input="input_skip", embedding_type="fourier",
                      scale_by_sigma=True)
    ).train()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    anchors = encoder(x)
    velocity = decoder(torch.randn_like(x), torch.tensor([0.1, 0.8]), anchors, torch.tensor([2, 5]))
    velocity.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in encoder.parameters())
    trainable = [p for p in decoder.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    assert decoder.time_proj.W.grad is None


def test_decoder_label_handling():
    decoder = _randomize(_tiny_decoder())
    x, t, z = torch.randn(2, 3, 16, 16), torch.tensor([0.2, 0.9]), torch.randn(2, 8)
    labels = torch.tensor([1, 7])
    with torch.no_grad():
        from_indices = decoder(x, t, z, labels)
        from_one_hot = decoder(x, t, z, F.one_hot(labels, 10).float())
        scalar_t = decoder(x, 0.5, z, labels)
        vector_t = decoder(x, torch.full((2,), 0.5), z, labels)
    torch.testing.assert_close(from_indices, from_one_hot)
    torch.testing.assert_close(scalar_t, vector_t)
    with pytest.raises(ValueError, match="class_labels"):
        decoder(x, t, z)
    with pytest.raises(ValueError, match="unconditional"):
        _tiny_decoder(num_classes=0)(x, t, z, labels)


def test_encoder_head_layout():
    encoder = _tiny_encoder()
    # stem + 1 res @16, down + 1 res @8, down + 1 res + mid @4
    assert encoder.feature_resolutions == (16, 16, 8, 8, 4, 4, 4)
    assert encoder.head_feature_indices == tuple(range(7))
    partial = _tiny_encoder(head_resolutions=(8, 4))
    assert partial.head_feature_indices == (2, 3, 4, 5, 6)
    with pytest.raises(ValueError, match="selects no feature map"):
        _tiny_encoder(head_resolutions=(2,))


def test_fir_resampling_shapes_and_dc_gain():
    x = torch.ones(2, 3, 8, 8)
    up, down = upsample_2d(x, (1, 3, 3, 1)), downsample_2d(x, (1, 3, 3, 1))
    assert up.shape == (2, 3, 16, 16) and down.shape == (2, 3, 4, 4)
    # a constant image stays constant away from the zero-padded border
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.ones_like(up[..., 2:-2, 2:-2]))
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.ones_like(down[..., 1:-1, 1:-1]))
    # upfirdn2d with a delta kernel is the identity
    torch.testing.assert_close(upfirdn2d(x * 2, torch.ones(1, 1)), x * 2)
