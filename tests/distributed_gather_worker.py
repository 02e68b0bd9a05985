"""Worker of tests/test_distributed.py, run by `accelerate launch --num_processes 2` (CPU, gloo).

Each of the two processes computes the alignment loss on its half of a global batch, with the reference anchors
gathered through `gather_anchors`; after `accelerator.backward` (DistributedDataParallel averages gradients) the
gradients must equal single-process gradients of the same loss on the whole batch. Exits non-zero on a mismatch.
"""

import torch
from accelerate import Accelerator

from lzn_hf.latent_flow import anchors_to_latents, gather_anchors, latents_to_anchors

GLOBAL_BATCH, IN_FEATURES, LATENT_DIM, NUM_CLASSES = 8, 5, 3, 4


def make_problem():
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


def alignment_loss(encoder, images, noise, labels, label_anchors, gather):
    anchors = encoder(images)  # local [B, d]
    latents = anchors_to_latents(anchors, noise, reference_anchors=gather(anchors), num_steps=5)
    _, posteriors = latents_to_anchors(latents, label_anchors, num_steps=10)  # [S, B, C]
    target = posteriors[2:, torch.arange(len(labels)), labels]  # [S - 2, B]
    return -target.max(0).values.mean()


def main():
    accelerator = Accelerator(cpu=True)
    if accelerator.num_processes != 2:
        raise SystemExit(f"expected 2 processes, got {accelerator.num_processes}")
    images, noise, labels, label_anchors, encoder = make_problem()

    loss = alignment_loss(encoder, images, noise, labels, label_anchors, gather=lambda a: a)
    expected = torch.autograd.grad(loss, list(encoder.parameters()))

    model = accelerator.prepare(encoder)  # DistributedDataParallel: averages gradients over ranks
    half = GLOBAL_BATCH // 2
    rows = slice(accelerator.process_index * half, (accelerator.process_index + 1) * half)
    loss = alignment_loss(model, images[rows], noise[rows], labels[rows], label_anchors, gather=gather_anchors)
    accelerator.backward(loss)
    for parameter, grad in zip(model.parameters(), expected):
        torch.testing.assert_close(parameter.grad, grad, rtol=1e-9, atol=1e-12)
    accelerator.print("gradients match")


if __name__ == "__main__":
    main()
