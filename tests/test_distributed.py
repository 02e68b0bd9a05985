"""Two CPU processes (gloo): gradients through `gather_anchors` equal single-process gradients on the global batch."""

import torch
from accelerate import Accelerator, debug_launcher

from lzn_hf.latent_flow import anchors_to_latents, gather_anchors, latents_to_anchors

GLOBAL_BATCH, IN_FEATURES, LATENT_DIM, NUM_CLASSES = 8, 5, 3, 4


def _problem():
    """A tiny linear "encoder" and data, in float64 so that only real differences show."""
    torch.set_default_dtype(torch.float64)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(GLOBAL_BATCH, IN_FEATURES, generator=generator)
    noise = torch.randn(GLOBAL_BATCH, LATENT_DIM, generator=generator)
    labels = torch.arange(GLOBAL_BATCH) % NUM_CLASSES
    label_anchors = torch.randn(NUM_CLASSES, LATENT_DIM, generator=generator)
    encoder = torch.nn.Linear(IN_FEATURES, LATENT_DIM)
    with torch.no_grad():
        encoder.weight.copy_(torch.randn(LATENT_DIM, IN_FEATURES, generator=generator))
        encoder.bias.copy_(torch.randn(LATENT_DIM, generator=generator))
    return images, noise, labels, label_anchors, encoder


def _alignment_loss(encoder, images, noise, labels, label_anchors, gather):
    anchors = encoder(images)  # local [B, d]
    latents = anchors_to_latents(anchors, noise, reference_anchors=gather(anchors), num_steps=5)
    _, posteriors = latents_to_anchors(latents, label_anchors, num_steps=10)  # [S, B, C]
    target = posteriors[2:, torch.arange(len(labels)), labels]  # [S - 2, B]
    return -target.max(0).values.mean()


def _worker():
    accelerator = Accelerator(cpu=True)
    images, noise, labels, label_anchors, encoder = _problem()
    assert accelerator.num_processes == 2

    loss = _alignment_loss(encoder, images, noise, labels, label_anchors, gather=lambda a: a)
    expected = torch.autograd.grad(loss, list(encoder.parameters()))

    model = accelerator.prepare(encoder)  # DistributedDataParallel: averages gradients over ranks
    rows = slice(accelerator.process_index * 4, (accelerator.process_index + 1) * 4)
    loss = _alignment_loss(model, images[rows], noise[rows], labels[rows], label_anchors, gather=gather_anchors)
    accelerator.backward(loss)
    for parameter, grad in zip(model.parameters(), expected):
        torch.testing.assert_close(parameter.grad, grad, rtol=1e-9, atol=1e-12)


def test_gather_anchors_gradients_match_single_process():
    debug_launcher(_worker, num_processes=2)
