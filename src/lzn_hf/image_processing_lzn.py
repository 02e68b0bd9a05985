"""Image processor for LZN encoders: the stock ViT (PIL backend) processor plus a channel-count guarantee.

Resize to the model's resolution, scale to [0, 1], normalise with mean = std = 0.5, so pixels land in
[-1, 1]. `transformers` pipelines load every image as RGB; a 1-channel model (the digits demo) needs it
back in grayscale, which is the one thing added here. Saved beside a model, it lets
`transformers.pipeline(...)` and `AutoImageProcessor` prepare PIL images for LZN models.
"""

from transformers import ViTImageProcessorPil

__all__ = ["LZNImageProcessor", "lzn_image_processor"]


class LZNImageProcessor(ViTImageProcessorPil):
    """`ViTImageProcessorPil` that converts PIL images to `num_channels` channels ("L" for 1, "RGB" for 3)."""

    model_input_names = ["pixel_values"]

    def __init__(self, num_channels: int = 3, **kwargs):
        if num_channels not in (1, 3):
            raise ValueError(f"`num_channels` must be 1 or 3, got {num_channels}")
        kwargs.setdefault("image_mean", [0.5] * num_channels)
        kwargs.setdefault("image_std", [0.5] * num_channels)
        super().__init__(**kwargs)
        self.num_channels = num_channels

    def process_image(self, image, do_convert_rgb=None, input_data_format=None, **kwargs):
        if hasattr(image, "convert"):  # PIL
            image = image.convert("L" if self.num_channels == 1 else "RGB")
            do_convert_rgb = False
        return super().process_image(image, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format, **kwargs)


def lzn_image_processor(image_size: int, num_channels: int = 3) -> LZNImageProcessor:
    """The processor for a model taking `num_channels` x `image_size` x `image_size` images in [-1, 1].

    The paper's ImageNet evaluation (Resize(256) + CenterCrop(224)) is not reproduced: crop first.
    """
    return LZNImageProcessor(
        num_channels=num_channels,
        do_resize=True,
        size={"height": image_size, "width": image_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
    )
