"""Convert a checkpoint released by the LZN authors into an `LZNModel` folder (safetensors).

    python scripts/convert_original_checkpoint.py \
        --checkpoint_path 000008000-000200000.pt --config cifar10-joint --output_dir lzn-cifar10-joint

`--config` is a preset (`cifar10-generation`, `afhq-cat-generation`, `celebahq-generation`,
`lsun-bedroom-generation`, `imagenet-representation`, `cifar10-joint`) or a parity fixture's
`reference_config.json`. EMA weights by default (what the authors evaluate); `--no_ema` takes the raw ones.
The file is read with `torch.load(weights_only=True)`. The model folder also gets an image processor, so
`transformers.pipeline("image-feature-extraction", model=DIR)` works on it. `--pipeline` writes an
`LZNPipeline` folder instead (generation checkpoints).
"""

import argparse

from lzn_hf.conversion import convert_original_checkpoint
from lzn_hf.image_processing_lzn import lzn_image_processor


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint_path", required=True, help="upstream .pt file")
    parser.add_argument("--config", required=True, help="preset name or reference_config.json")
    parser.add_argument("--output_dir", required=True, help="where to write the LZNModel folder")
    parser.add_argument("--no_ema", action="store_true", help="convert the raw weights instead of the EMA ones")
    parser.add_argument("--pipeline", action="store_true", help="write an LZNPipeline folder (generation checkpoints)")
    parser.add_argument("--push_to_hub", default=None, metavar="REPO_ID", help="also upload the folder to this Hub repo")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    model = convert_original_checkpoint(args.checkpoint_path, args.config, use_ema=not args.no_ema)
    if args.pipeline:
        if model.image_decoder is None:
            raise SystemExit("--pipeline needs a generation checkpoint (this config has no image decoder)")
        from lzn_hf.pipeline_lzn import LZNPipeline

        output = LZNPipeline(image_decoder=model.image_decoder, label_anchors=model.label_anchors)
    else:
        output = model
        encoder = model.config.image_encoder_config
        lzn_image_processor(encoder.image_size, encoder.num_channels).save_pretrained(args.output_dir)
    output.save_pretrained(args.output_dir)
    print(f"wrote {args.output_dir} ({model.num_parameters():,} parameters, {'raw' if args.no_ema else 'EMA'} weights)")
    if args.push_to_hub:
        output.push_to_hub(args.push_to_hub)


if __name__ == "__main__":
    main()
