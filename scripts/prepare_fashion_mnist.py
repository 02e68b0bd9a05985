"""Write Fashion-MNIST as a saved `datasets.DatasetDict` from the Debian package's IDX files (offline).

    apt-get update && apt-get install -y dataset-fashion-mnist
    python scripts/prepare_fashion_mnist.py --output_dir /work/datasets/fashion-mnist

Reads `{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz` in `--source_dir` (default: the package's folder,
/usr/share/datasets/fashion-mnist) and writes `train` (60,000) and `test` (10,000) splits with columns `image`
(28x28 grayscale PIL) and `label` (ClassLabel: T-shirt/top ... Ankle boot), atomically. Load it with
`datasets.load_from_disk(OUTPUT_DIR)`. `--sample_grid PNG` also saves the first training images of each class.
"""

import argparse
import time

from lzn_hf.datasets_offline import FASHION_MNIST_DIR, prepare_fashion_mnist, report_prepared_dataset


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source_dir", default=FASHION_MNIST_DIR, help="folder of the (gzipped) IDX files")
    parser.add_argument("--output_dir", required=True, help="where to write the saved DatasetDict")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing saved dataset at --output_dir")
    parser.add_argument("--sample_grid", default=None, metavar="PNG", help="also save the first images of each class here")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    dataset_dict = prepare_fashion_mnist(args.output_dir, args.source_dir, overwrite=args.overwrite)
    print(report_prepared_dataset(dataset_dict, args.output_dir, time.perf_counter() - start, args.sample_grid))


if __name__ == "__main__":
    main()
