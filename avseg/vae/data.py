"""Image datasets for the autoencoder/VAE baselines; nothing is ever downloaded.

* ``fashion_mnist``: the four IDX files (gzipped or not) from Debian's ``dataset-fashion-mnist``
  (/usr/share/datasets/fashion-mnist), a torchvision ``FashionMNIST/raw`` folder or any folder holding
  them; 28x28 zero-padded to ``pad_to`` (32, as in the book). Splits: train, test (the book validates on
  test) and val (the last ``val_fraction`` of train).
* ``celeba``: a folder of aligned jpgs (``img_align_celeba``, also the Kaggle and torchvision nestings),
  attributes from ``list_attr_celeba.txt`` (torchvision) or ``list_attr_celeba.csv`` (Kaggle), splits
  from ``list_eval_partition.txt/.csv``; every image is squash-resized to ``image_size`` with bilinear
  interpolation and no centre crop or antialiasing, like Keras ``image_dataset_from_directory``.
* ``digits`` (scikit-learn, 1,797 8x8 digits resized to 28 and padded) and ``lfw`` (scikit-image
  ``lfw_subset``: 100 faces then 100 non-faces, 25x25 grey, resized and repeated to RGB, attribute
  ``Face``): tiny offline stand-ins for Fashion-MNIST and CelebA.

Items are dicts ``{"images": FloatTensor [C, H, W] in [0, 1], "labels": LongTensor}`` with a class index
(``[]``) or a 0/1 attribute vector (``[A]``). Datasets expose ``class_names`` or ``attribute_names``.
"""
from __future__ import annotations

import csv
import gzip
import importlib.util
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from avseg.errors import ConfigError, DatasetError

VAE_DATASETS = ("fashion_mnist", "celeba", "digits", "lfw")
BINARIZE_MODES = ("none", "dynamic", "threshold")
FASHION_MNIST_DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGIT_CLASSES = tuple(str(i) for i in range(10))
MNIST_SIDE = 28
STAND_IN_HOLDOUT = 0.2
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# ----------------------------------------------------------------------------- IDX / Fashion-MNIST
def read_idx(path) -> np.ndarray:
    """An IDX file (optionally gzipped): 2 zero bytes, a dtype code, the rank, big-endian int32 dims, data."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path}: cannot be read as an IDX file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() if raw else 'empty'})")
    rank = raw[3]
    header = 4 + 4 * rank
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise DatasetError(f"{path}: IDX header says {dims} ({expected} bytes) but the file holds {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find_file(folder: Path, stem: str) -> Optional[Path]:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def find_fashion_mnist(root) -> Path:
    """The folder under ``root`` (itself, ``FashionMNIST/raw`` or ``raw``) that holds the four IDX files."""
    root = Path(root)
    candidates = [root, root / "FashionMNIST" / "raw", root / "raw"]
    stems = [stem for pair in FASHION_MNIST_FILES.values() for stem in pair]
    for folder in candidates:
        if all(_find_file(folder, stem) for stem in stems):
            return folder
    raise DatasetError(
        f"Fashion-MNIST not found under '{root}': expected {', '.join(stems)} (each optionally .gz) in it, in "
        f"its FashionMNIST/raw or raw subfolder. Install Debian's dataset-fashion-mnist "
        f"(files in {FASHION_MNIST_DEBIAN_ROOT}) or copy the files there; nothing is downloaded"
    )


def load_fashion_mnist(root, part: str) -> Tuple[np.ndarray, np.ndarray]:
    """``part`` train | test -> (images uint8 ``[N, 28, 28]``, labels int64 ``[N]``)."""
    folder = find_fashion_mnist(root)
    image_stem, label_stem = FASHION_MNIST_FILES[part]
    image_path, label_path = _find_file(folder, image_stem), _find_file(folder, label_stem)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetError(f"{image_path}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DatasetError(f"{label_path}: expected {len(images)} labels, got shape {labels.shape}")
    return images, labels.astype(np.int64)


def pad_to_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad ``[N, C, h, w]`` evenly on each side to ``[N, C, size, size]``."""
    height, width = images.shape[-2:]
    if size < max(height, width) or (size - height) % 2 or (size - width) % 2:
        raise ConfigError(f"key 'data.vae.pad_to': {size} cannot pad {height}x{width} images evenly (use >= {max(height, width)}, same parity)")
    dy, dx = (size - height) // 2, (size - width) // 2
    return F.pad(images, (dx, dx, dy, dy))


def resize_bilinear(images: torch.Tensor, size: int) -> torch.Tensor:
    """Squash-resize float ``[N, C, h, w]`` to ``[N, C, size, size]`` (half-pixel bilinear, no antialias, as TF)."""
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=False).clamp_(0.0, 1.0)


# ----------------------------------------------------------------------------- datasets
def _binarize(image: torch.Tensor, mode: str, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    if mode == "dynamic":
        return torch.bernoulli(image, generator=generator)
    if mode == "threshold":
        return (image > 0.5).to(image.dtype)
    return image


class TensorImageDataset(Dataset):
    """Images held in memory (``uint8`` 0-255 or float in [0, 1], ``[N, C, H, W]``) with labels.

    ``binarize``: none | dynamic | threshold. Dynamic binarisation draws new pixels on every access when
    ``train``; otherwise one fixed draw seeded by ``binarize_seed`` (a fixed binarised evaluation set).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        binarize: str = "none",
        train: bool = False,
        binarize_seed: int = 0,
        class_names: Optional[Sequence[str]] = None,
        attribute_names: Optional[Sequence[str]] = None,
    ):
        if len(images) != len(labels):
            raise DatasetError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.binarize = binarize
        self.train = train
        self.class_names = list(class_names) if class_names is not None else None
        self.attribute_names = list(attribute_names) if attribute_names is not None else None
        self.fixed_binary = None
        if binarize == "dynamic" and not train:
            generator = torch.Generator().manual_seed(binarize_seed)
            self.fixed_binary = torch.bernoulli(self._float(images), generator=generator).to(torch.uint8)

    @staticmethod
    def _float(images: torch.Tensor) -> torch.Tensor:
        return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        if self.fixed_binary is not None:
            image = self.fixed_binary[index].float()
        else:
            image = _binarize(self._float(self.images[index]), self.binarize)
        return {"images": image, "labels": self.labels[index]}


def _read_rows(path: Path) -> List[List[str]]:
    """Rows of a CelebA list file: whitespace-separated (.txt) or comma-separated (.csv)."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            if path.suffix.lower() == ".csv":
                return [row for row in csv.reader(handle) if row]
            return [line.split() for line in handle if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot be read ({exc})") from None


def read_celeba_attributes(path) -> Tuple[List[str], Dict[str, np.ndarray]]:
    """``list_attr_celeba.txt`` (count, names, rows) or ``.csv`` (``image_id`` header) -> names, file -> 0/1."""
    path = Path(path)
    rows = _read_rows(path)
    if path.suffix.lower() == ".csv":
        if not rows or rows[0][0] != "image_id":
            raise DatasetError(f"{path}: expected a header row starting with 'image_id'")
        names, body = rows[0][1:], rows[1:]
    else:
        if len(rows) < 2:
            raise DatasetError(f"{path}: expected an image count line and an attribute-name line")
        names, body = rows[1], rows[2:]
    table = {}
    for line_number, row in enumerate(body, start=3 if path.suffix.lower() != ".csv" else 2):
        if len(row) != len(names) + 1 or any(value not in ("1", "-1", "0") for value in row[1:]):
            raise DatasetError(f"{path}:{line_number}: expected a file name and {len(names)} values in {{-1, 1}}")
        table[row[0]] = (np.asarray(row[1:], dtype=np.int64) > 0).astype(np.int64)
    return list(names), table


def read_celeba_partition(path) -> Dict[str, int]:
    """``list_eval_partition.txt`` or ``.csv`` -> file -> 0 (train) | 1 (val) | 2 (test)."""
    path = Path(path)
    rows = _read_rows(path)
    if rows and rows[0][0] == "image_id":
        rows = rows[1:]
    try:
        return {row[0]: int(row[1]) for row in rows}
    except (IndexError, ValueError):
        raise DatasetError(f"{path}: expected lines 'file partition' with partition 0, 1 or 2") from None


CELEBA_SPLITS = {"train": 0, "val": 1, "valid": 1, "test": 2}


class CelebAFolder(Dataset):
    """Aligned CelebA jpgs read lazily and squash-resized to ``image_size`` (labels: 0/1 attributes ``[A]``)."""

    def __init__(
        self,
        files: Sequence[Path],
        attributes: Optional[Dict[str, np.ndarray]],
        attribute_names: Optional[Sequence[str]],
        image_size: int,
        binarize: str = "none",
        train: bool = False,
        binarize_seed: int = 0,
    ):
        self.files = list(files)
        self.attributes = attributes
        self.attribute_names = list(attribute_names) if attribute_names is not None else None
        self.class_names = None
        self.image_size = image_size
        self.binarize = binarize
        self.train = train
        self.binarize_seed = binarize_seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        from PIL import Image

        path = self.files[index]
        try:
            with Image.open(path) as handle:
                pixels = np.asarray(handle.convert("RGB"), dtype=np.float32) / 255.0
        except OSError as exc:
            raise DatasetError(f"{path}: cannot be read as an image ({exc})") from None
        image = resize_bilinear(torch.from_numpy(pixels).permute(2, 0, 1)[None], self.image_size)[0]
        generator = None
        if self.binarize == "dynamic" and not self.train:
            generator = torch.Generator().manual_seed(self.binarize_seed * 1_000_003 + index)
        image = _binarize(image, self.binarize, generator)
        if self.attributes is None:
            labels = torch.zeros(0, dtype=torch.long)
        else:
            labels = torch.from_numpy(self.attributes[path.name])
        return {"images": image, "labels": labels}


def _celeba_image_folder(root: Path) -> Path:
    candidates = [root, root / "img_align_celeba", root / "img_align_celeba" / "img_align_celeba", root / "celeba" / "img_align_celeba"]
    for folder in candidates:
        if folder.is_dir() and any(entry.name.lower().endswith(IMAGE_SUFFIXES) for entry in os.scandir(folder)):
            return folder
    raise DatasetError(
        f"CelebA images not found under '{root}': expected aligned jpgs in it or in img_align_celeba/, "
        "img_align_celeba/img_align_celeba/ (Kaggle) or celeba/img_align_celeba/ (torchvision)"
    )


def _find_list_file(folders: Sequence[Path], stem: str) -> Optional[Path]:
    for folder in folders:
        for suffix in (".txt", ".csv"):
            if (folder / (stem + suffix)).is_file():
                return folder / (stem + suffix)
    return None


def build_celeba(root, split: str, image_size: int, attributes_file: Optional[str], val_fraction: float, binarize: str, train: bool, binarize_seed: int) -> CelebAFolder:
    """CelebA split ``train | val | test | all`` (official partition file, else a ``val_fraction`` holdout)."""
    root = Path(root)
    image_folder = _celeba_image_folder(root)
    files = sorted(Path(entry.path) for entry in os.scandir(image_folder) if entry.name.lower().endswith(IMAGE_SUFFIXES))
    search = [root, root / "celeba", image_folder.parent, image_folder.parent.parent]
    attribute_path = Path(attributes_file) if attributes_file else _find_list_file(search, "list_attr_celeba")
    if attributes_file and not attribute_path.is_file():
        raise DatasetError(f"key 'data.vae.attributes_file': '{attributes_file}' is not a file (expected list_attr_celeba.txt or .csv)")
    names, attributes = (None, None)
    if attribute_path is not None:
        names, attributes = read_celeba_attributes(attribute_path)
        missing = [path.name for path in files if path.name not in attributes]
        if missing:
            raise DatasetError(f"{attribute_path}: no attributes for {len(missing)} images of {image_folder}, e.g. {missing[0]}")
    if split != "all":
        partition_path = _find_list_file(search, "list_eval_partition")
        if partition_path is not None:
            if split not in CELEBA_SPLITS:
                raise ConfigError(f"CelebA split '{split}' is not one of train, val, test, all")
            partition = read_celeba_partition(partition_path)
            files = [path for path in files if partition.get(path.name) == CELEBA_SPLITS[split]]
        elif val_fraction > 0:
            files = _holdout(files, split, val_fraction, shuffle_seed=None)
        else:
            raise DatasetError(
                f"CelebA split '{split}': no list_eval_partition.txt/.csv in {', '.join(str(f) for f in search)}; "
                "add one, set data.vae.val_fraction > 0, or use split 'all' (the book trains on every image)"
            )
    if not files:
        raise DatasetError(f"CelebA split '{split}' of {image_folder} holds no images")
    return CelebAFolder(files, attributes, names, image_size, binarize, train, binarize_seed)


def _holdout(items, split: str, fraction: float, shuffle_seed: Optional[int]):
    """``train``: all but the held-out part; ``val``/``test``: the held-out last ``fraction`` (after an optional seeded shuffle)."""
    order = list(range(len(items)))
    if shuffle_seed is not None:
        order = np.random.RandomState(shuffle_seed).permutation(len(items)).tolist()
    cut = len(items) - max(1, int(round(fraction * len(items))))
    if split == "train":
        chosen = order[:cut]
    elif split in ("val", "test"):
        chosen = order[cut:]
    else:
        raise ConfigError(f"split '{split}' is not one of train, val, test")
    if isinstance(items, torch.Tensor):
        return items[torch.as_tensor(chosen, dtype=torch.long)]
    return [items[i] for i in chosen]


def load_digits_images() -> Tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 digits as float ``[N, 1, 28, 28]`` in [0, 1] and labels ``[N]``.

    Read from the ``digits.csv.gz`` the scikit-learn package ships (64 pixel values 0-16, then the label),
    which spares the seconds that importing scikit-learn takes.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("data.name 'digits' needs scikit-learn (pip install scikit-learn); it ships the images")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read scikit-learn's digits ({exc})") from None
    images = torch.from_numpy(table[:, :64].reshape(-1, 1, 8, 8) / 16.0)
    return resize_bilinear(images, MNIST_SIDE), torch.from_numpy(table[:, 64].astype(np.int64))


def load_lfw_images(image_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """scikit-image's ``lfw_subset`` as RGB float ``[200, 3, S, S]`` and the ``Face`` attribute ``[200, 1]``."""
    try:
        from skimage.data import lfw_subset
    except ImportError:
        raise DatasetError("data.name 'lfw' needs scikit-image (pip install scikit-image); it ships lfw_subset") from None
    faces = torch.from_numpy(np.asarray(lfw_subset(), dtype=np.float32))[:, None]
    images = resize_bilinear(faces, image_size).repeat(1, 3, 1, 1)
    labels = torch.zeros(len(images), 1, dtype=torch.long)
    labels[: len(images) // 2] = 1
    return images, labels


def image_shape(cfg) -> Tuple[int, int, int]:
    """``(C, H, W)`` of the items of ``cfg.data`` (models are built to match it)."""
    name, settings = cfg.data.name, cfg.data.vae
    if name in ("fashion_mnist", "digits"):
        return 1, settings.pad_to, settings.pad_to
    if name in ("celeba", "lfw"):
        return 3, settings.image_size, settings.image_size
    raise ConfigError(f"key 'data.name': '{name}' is not a VAE dataset {VAE_DATASETS}")


def build_vae_dataset(cfg, split: str, train: bool = False) -> Dataset:
    """The image dataset of ``cfg.data`` (name, root, ``data.vae``) for ``split``; ``train`` picks dynamic binarisation."""
    name, settings = cfg.data.name, cfg.data.vae
    if settings.binarize not in BINARIZE_MODES:
        raise ConfigError(f"key 'data.vae.binarize': '{settings.binarize}' is not one of {BINARIZE_MODES}")
    if not 0.0 <= settings.val_fraction < 1.0:
        raise ConfigError(f"key 'data.vae.val_fraction': must be in [0, 1), got {settings.val_fraction}")
    common = dict(binarize=settings.binarize, train=train, binarize_seed=settings.binarize_seed)
    if name == "celeba":
        dataset = build_celeba(cfg.data.root, split, settings.image_size, settings.attributes_file, settings.val_fraction, **common)
        if settings.max_images > 0:
            dataset.files = dataset.files[: settings.max_images]
        return dataset
    if name == "fashion_mnist":
        if split not in ("train", "val", "test"):
            raise ConfigError(f"Fashion-MNIST split '{split}' is not one of train, val, test")
        if split == "val" and settings.val_fraction <= 0:
            raise ConfigError("Fashion-MNIST split 'val' needs data.vae.val_fraction > 0 (the book validates on 'test')")
        images, labels = load_fashion_mnist(cfg.data.root, "test" if split == "test" else "train")
        images, labels = torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels)
        if split != "test" and settings.val_fraction > 0:
            images, labels = (_holdout(t, split, settings.val_fraction, shuffle_seed=None) for t in (images, labels))
        images, classes, attributes = pad_to_size(images, settings.pad_to), FASHION_MNIST_CLASSES, None
    elif name == "digits":
        images, labels = load_digits_images()
        images, classes, attributes = pad_to_size(images, settings.pad_to), DIGIT_CLASSES, None
    elif name == "lfw":
        images, labels = load_lfw_images(settings.image_size)
        classes, attributes = None, ["Face"]
    else:
        raise ConfigError(f"key 'data.name': '{name}' is not a VAE dataset {VAE_DATASETS}")
    if name in ("digits", "lfw"):
        fraction = settings.val_fraction or STAND_IN_HOLDOUT
        images, labels = (_holdout(t, split, fraction, shuffle_seed=0) for t in (images, labels))
    if settings.max_images > 0:
        images, labels = images[: settings.max_images], labels[: settings.max_images]
    return TensorImageDataset(images, labels, class_names=classes, attribute_names=attributes, **common)
