"""The data of a run and its order.

* data: scikit-learn's 8x8 digits (offline, fixed held-out split), ``datasets`` image folders, Hub datasets and
  datasets saved with ``save_to_disk`` (PIL resize, pixels in [-1, 1], channels first);
* subsets: :func:`stratified_indices` (seeded, every class in its share) behind :func:`stack_dataset` and
  ``--max_train_samples``: image folders list their rows class by class, so a first-rows subset would hold
  only the first classes;
* order: :class:`EpochShuffleSampler`, a permutation per epoch fixed by ``(seed, epoch)``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .arguments import DataArguments


#: The digits' held-out split is fixed by this seed (independent of the training --seed), stratified, 20 %.
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2
#: Subsets of a split (``--max_eval_samples``, ``--max_train_samples``) are drawn with this seed, whatever the
#: training --seed: every model and every baseline of a comparison sees the same images.
SUBSET_SEED = 0


def stratified_indices(labels: Optional[torch.Tensor], limit: int, num_rows: Optional[int] = None, seed: int = SUBSET_SEED) -> torch.Tensor:
    """``min(limit, M)`` row indices, increasing: a seeded subset in which each class keeps its share of the rows
    (within one row), or a seeded random subset for unlabelled data (``labels`` None: pass ``num_rows``).

    Each class's rows are shuffled; row k of a class of size n gets the key ``(k + 0.5) / n``, and the rows with
    the smallest keys are taken (ties in the seeded shuffle's order), so that any prefix is proportional.
    """
    num_rows = len(labels) if labels is not None else num_rows
    if limit >= num_rows:
        return torch.arange(num_rows)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(num_rows, generator=generator)
    if labels is None:
        return order[:limit].sort().values
    shuffled = labels[order]
    keys = torch.empty(num_rows, dtype=torch.float64)
    for label in shuffled.unique():
        members = (shuffled == label).nonzero().flatten()  # positions in the shuffled order
        keys[members] = (torch.arange(len(members), dtype=torch.float64) + 0.5) / len(members)
    chosen = order[torch.sort(keys, stable=True).indices[:limit]]
    return chosen.sort().values


def _resize_images(images: torch.Tensor, resolution: Optional[int], num_channels: Optional[int]) -> torch.Tensor:
    """Bilinear resize of a [-1, 1] batch to ``resolution`` and channel repeat/average to ``num_channels``."""
    if resolution is not None and tuple(images.shape[-2:]) != (resolution, resolution):
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    if num_channels is not None and images.shape[1] != num_channels:
        if images.shape[1] == 1:
            images = images.expand(-1, num_channels, -1, -1)
        elif num_channels == 1:
            images = images.mean(dim=1, keepdim=True)
        else:
            raise ValueError(f"cannot convert {images.shape[1]}-channel images to {num_channels} channels")
    return images.clamp(-1.0, 1.0).contiguous()


def load_digits(
    split: str = "train",
    resolution: Optional[int] = None,
    num_channels: Optional[int] = None,
    test_fraction: float = DIGITS_TEST_FRACTION,
    split_seed: int = DIGITS_SPLIT_SEED,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 handwritten digits (shipped with scikit-learn, no download), scaled to [-1, 1].

    Args:
        split: ``"train"`` (80 %), ``"test"`` (the fixed, stratified held-out 20 %) or ``"all"``.
        resolution / num_channels: optional resize (bilinear) and channel repeat for bigger models.
    Returns:
        ``(pixel_values [N, C, H, W] float32 in [-1, 1], labels [N] int64)``; values ``v`` in 0..16 map to ``v / 8 - 1``.
    """
    from sklearn.datasets import load_digits as sklearn_load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test", "all"):
        raise ValueError(f"`split` must be 'train', 'test' or 'all', got {split!r}")
    digits = sklearn_load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 8.0 - 1.0)[:, None]  # [1797, 1, 8, 8]
    labels = torch.from_numpy(digits.target.astype(np.int64))  # [1797]
    if split != "all":
        indices = np.arange(len(labels))
        train_idx, test_idx = train_test_split(indices, test_size=test_fraction, random_state=split_seed, stratify=digits.target)
        chosen = torch.from_numpy(np.sort(train_idx if split == "train" else test_idx))
        images, labels = images[chosen], labels[chosen]
    return _resize_images(images, resolution, num_channels), labels


class TensorImageDataset(torch.utils.data.Dataset):
    """In-memory images ``[N, C, H, W]`` (and optional labels ``[N]``) yielding ``{"pixel_values", "labels"}`` dicts."""

    def __init__(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None, class_names: Optional[List[str]] = None):
        if labels is not None and len(labels) != len(pixel_values):
            raise ValueError(f"{len(pixel_values)} images but {len(labels)} labels")
        self.pixel_values, self.labels, self.class_names = pixel_values, labels, class_names

    def __len__(self) -> int:
        return len(self.pixel_values)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        item = {"pixel_values": self.pixel_values[index]}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item


def _pil_to_tensor(image, resolution: int, num_channels: int) -> torch.Tensor:
    """PIL image -> ``[C, R, R]`` in [-1, 1]: resize the short side to R (bicubic), centre crop, scale."""
    from PIL import Image

    image = image.convert("L" if num_channels == 1 else "RGB")
    width, height = image.size
    scale = resolution / min(width, height)
    new_size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    image = image.resize(new_size, resample=Image.BICUBIC)
    left, top = (new_size[0] - resolution) // 2, (new_size[1] - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32).reshape(resolution, resolution, num_channels)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def load_image_dataset(
    resolution: int,
    num_channels: int,
    dataset_name: Optional[str] = None,
    train_data_dir: Optional[str] = None,
    dataset_config_name: Optional[str] = None,
    split: str = "train",
    image_column: Optional[str] = None,
    label_column: Optional[str] = None,
    cache_dir: Optional[str] = None,
    max_samples: Optional[int] = None,
):
    """An image folder (``load_dataset("imagefolder", data_dir=...)``) or a Hub dataset, as a `datasets.Dataset`
    whose items are ``{"pixel_values": [C, R, R] in [-1, 1], "labels": int}`` (labels only when the data has them).

    Images are resized (short side, bicubic) and centre-cropped to ``resolution`` with PIL; no torchvision.
    Returns ``(dataset, class_names or None)``.
    """
    from datasets import load_dataset

    source = f"image folder {train_data_dir!r}" if train_data_dir else f"dataset {dataset_name!r}"
    try:
        if train_data_dir is not None:
            dataset = load_dataset("imagefolder", data_dir=train_data_dir, cache_dir=cache_dir, split=split)
        elif is_saved_dataset(dataset_name):
            dataset = _load_saved_split(dataset_name, split)
        else:
            dataset = load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir, split=split)
    except Exception as error:  # offline, unknown id, missing split: say which and how to get around it
        raise RuntimeError(
            f"could not load the {split!r} split of {source}: {error}. Offline, use --dataset_name digits, the path of a "
            "dataset saved with save_to_disk, or --train_data_dir with a local image folder."
        ) from error
    columns = dataset.column_names
    image_column = image_column or next((c for c in ("image", "img", "pixel_values") if c in columns), None)
    if image_column not in columns:
        raise ValueError(f"image column {image_column!r} not found in {source}; columns are {columns} (pass --image_column)")
    if label_column is None:
        label_column = next((c for c in ("label", "labels", "fine_label") if c in columns), None)
    elif label_column not in columns:
        raise ValueError(f"label column {label_column!r} not found in {source}; columns are {columns}")
    class_names = None
    if label_column is not None:
        feature = dataset.features[label_column]
        class_names = list(feature.names) if hasattr(feature, "names") else None
        if label_column != "labels":  # one name for the labels: dataset_labels() reads them without decoding images
            dataset = dataset.remove_columns([c for c in ("labels",) if c in columns]).rename_column(label_column, "labels")
            label_column = "labels"
    dataset = dataset.select_columns([c for c in (image_column, label_column) if c is not None])
    if max_samples is not None:
        dataset = dataset.select(stratified_indices(dataset_labels(dataset), max_samples, len(dataset)).tolist())
    dataset, decode = _image_decoder(dataset, image_column, source)
    if train_data_dir is not None:
        check_images(dataset, image_column, source)

    def transform(batch):
        out = {"pixel_values": [_pil_to_tensor(decode(image), resolution, num_channels) for image in batch[image_column]]}
        if label_column is not None:
            out["labels"] = [int(label) for label in batch[label_column]]
        return out

    dataset.set_transform(transform)
    return dataset, class_names


def _image_decoder(dataset, image_column: str, source: str):
    """``(dataset with its image column cast to Image(decode=False), decode)``: ``decode`` turns one stored image (a
    PIL image, or the ``{"path", "bytes"}`` of an undecoded ``Image`` column) into a PIL image; a file PIL cannot read
    raises ``ValueError`` naming it (drawn hours into a run, the message says which file to fix)."""
    from datasets import Image as ImageFeature
    from PIL import Image

    if isinstance(dataset.features.get(image_column), ImageFeature) and dataset.features[image_column].decode:
        dataset = dataset.cast_column(image_column, ImageFeature(decode=False))

    def decode(stored):
        if not isinstance(stored, dict):
            return stored
        name = stored.get("path") or "an image stored in the dataset"
        try:
            image = Image.open(_image_source(stored))
            image.load()
        except Exception as error:
            raise ValueError(f"cannot read the image {name} of {source}: {type(error).__name__}: {error}") from error
        return image

    return dataset, decode


def check_images(dataset, image_column: str, source: str) -> int:
    """Open every image file of an undecoded image column with PIL (``verify``: the header and, for PNG, the
    checksums; no pixel decoding) before training starts; ``ValueError`` listing the unreadable files (first 10,
    and how many). Returns the number checked."""
    from PIL import Image

    bad = []
    for stored in dataset[image_column] if len(dataset) else []:
        if not isinstance(stored, dict):
            continue
        path = stored.get("path")
        try:
            with Image.open(_image_source(stored)) as image:
                image.verify()
        except Exception as error:
            bad.append(f"{path}: {type(error).__name__}: {error}")
    if bad:
        listed = "\n  ".join(bad[:10])
        raise ValueError(f"{len(bad)} of the {len(dataset)} images of {source} cannot be read (fix or remove them):\n  {listed}")
    return len(dataset)


def _image_source(stored):
    """The file object or path PIL opens for an undecoded ``Image`` value."""
    import io

    return io.BytesIO(stored["bytes"]) if stored.get("bytes") is not None else stored["path"]


def is_saved_dataset(path: Optional[str]) -> bool:
    """True when ``path`` is a folder written by ``datasets``' ``save_to_disk`` (a ``DatasetDict`` or one ``Dataset``)."""
    return path is not None and os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, name)) for name in ("dataset_dict.json", "state.json"))


def _load_saved_split(path: str, split: str):
    from datasets import DatasetDict, load_from_disk

    saved = load_from_disk(path)
    if isinstance(saved, DatasetDict):
        if split not in saved:
            raise ValueError(f"no {split!r} split in the saved DatasetDict (splits: {sorted(saved)})")
        return saved[split]
    if split != "train":
        raise ValueError(f"the saved dataset is one Dataset (no {split!r} split); it serves as the training split")
    return saved


def load_training_data(data: "DataArguments", resolution: int, num_channels: int, with_test: bool = True):
    """The training set (and the held-out set when there is one, with ``with_test``) of ``data`` (its
    ``dataset_name`` / ``train_data_dir``, columns, cache and ``max_train_samples``).

    Returns ``(train_dataset, test_dataset or None, class_names or None)``; ``digits`` gives in-memory
    :class:`TensorImageDataset` objects and its fixed held-out 20 %.
    """
    if data.train_data_dir is not None and data.dataset_name is not None:
        raise ValueError("pass --train_data_dir or --dataset_name, not both")
    if data.dataset_name == "digits":
        train = TensorImageDataset(*load_digits("train", resolution, num_channels), class_names=[str(i) for i in range(10)])
        if data.max_train_samples is not None:
            keep = stratified_indices(train.labels, data.max_train_samples)
            train = TensorImageDataset(train.pixel_values[keep], train.labels[keep], train.class_names)
        test = TensorImageDataset(*load_digits("test", resolution, num_channels)) if with_test else None
        return train, test, train.class_names
    common = dict(
        resolution=resolution, num_channels=num_channels, dataset_name=data.dataset_name, train_data_dir=data.train_data_dir,
        dataset_config_name=data.dataset_config_name, image_column=data.image_column, label_column=data.label_column,
        cache_dir=data.cache_dir,
    )
    train, class_names = load_image_dataset(split="train", max_samples=data.max_train_samples, **common)
    test = None
    if with_test:
        for split in ("test", "validation"):
            try:
                test, _ = load_image_dataset(split=split, **common)
                break
            except (RuntimeError, ValueError):
                continue
    return train, test, class_names


def dataset_labels(dataset) -> Optional[torch.Tensor]:
    """The labels ``[M]`` of a :class:`TensorImageDataset` or of a dataset from :func:`load_image_dataset`, read
    without decoding an image; None for unlabelled data."""
    if isinstance(dataset, TensorImageDataset):
        return dataset.labels
    if "labels" not in dataset.column_names:
        return None
    return torch.tensor(list(dataset.with_format(None)["labels"]), dtype=torch.int64)


def stack_dataset(dataset, limit: Optional[int] = None, seed: int = SUBSET_SEED) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """A dataset as tensors: ``(pixel_values [M, C, H, W], labels [M] or None)``; the whole split in its order, or,
    with ``limit`` below its size, a seeded stratified subset of ``limit`` rows (:func:`stratified_indices`)."""
    labels = dataset_labels(dataset)
    indices = stratified_indices(labels, len(dataset) if limit is None else limit, len(dataset), seed)
    if isinstance(dataset, TensorImageDataset):
        return dataset.pixel_values[indices], None if labels is None else labels[indices]
    items = [dataset[i] for i in indices.tolist()]
    pixel_values = torch.stack([item["pixel_values"] for item in items])
    return pixel_values, None if labels is None else labels[indices]


class EpochShuffleSampler(torch.utils.data.Sampler):
    """A random permutation per epoch, fixed by ``(seed, epoch)``: resuming at epoch e, batch k sees the same data.

    Call :meth:`set_epoch` before each epoch (Accelerate's data loaders forward their ``set_epoch`` here).
    """

    def __init__(self, num_samples: int, seed: int = 0):
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())
