"""Convert a checkpoint released by the LZN authors into an `LZNModel` folder (safetensors).

    python scripts/convert_original_checkpoint.py \
        --checkpoint_path 000008000-000200000.pt --config cifar10-joint --output_dir lzn-cifar10-joint

`--config` is a preset (`cifar10-generation`, `afhq-cat-generation`, `celebahq-generation`,
`lsun-bedroom-generation`, `imagenet-representation`, `cifar10-joint`) or a parity fixture's
`reference_config.json`. EMA weights by default (what the authors evaluate); `--no_ema` takes the raw ones.
The file is read with `torch.load(weights_only=True)`. The model folder also gets an image processor, so
`transformers.pipeline("image-feature-extraction", model=DIR)` works on it. `--pipeline` writes an
`LZNPipeline` folder instead (generation checkpoints). The folder is written to a temporary sibling and renamed
into place when complete; an existing model folder is replaced only with `--overwrite`.
"""

import argparse

from lzn_hf.conversion import check_output_dir, convert_original_checkpoint, resolve_config, save_converted


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint_path", required=True, help="upstream .pt file")
    parser.add_argument("--config", required=True, help="preset name or reference_config.json")
    parser.add_argument("--output_dir", required=True, help="where to write the LZNModel folder")
    parser.add_argument("--no_ema", action="store_true", help="convert the raw weights instead of the EMA ones")
    parser.add_argument("--pipeline", action="store_true", help="write an LZNPipeline folder (generation checkpoints)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model folder at --output_dir")
    parser.add_argument("--push_to_hub", default=None, metavar="REPO_ID", help="also upload the folder to this Hub repo")
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_output_dir(args.output_dir, args.overwrite)  # before the conversion, which can take minutes
        config = resolve_config(args.config)
        if args.pipeline and config.image_decoder_config is None:
            raise ValueError("--pipeline needs a generation checkpoint: this config has no image decoder")
        model = convert_original_checkpoint(args.checkpoint_path, config, use_ema=not args.no_ema)
        output = save_converted(model, args.output_dir, pipeline=args.pipeline, overwrite=args.overwrite)
    except (ValueError, OSError) as error:  # bad input: the message says what and how to proceed, no traceback
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    print(f"wrote {args.output_dir} ({model.num_parameters():,} parameters, {'raw' if args.no_ema else 'EMA'} weights)")
    if args.push_to_hub:
        output.push_to_hub(args.push_to_hub)


if __name__ == "__main__":
    main()
