"""The in-memory datasets: CIFAR-10/100, Fashion-MNIST, sklearn digits, synthetic."""
from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from relnas.data.base import TensorDataModule
from relnas.errors import DataError, DatasetNotFoundError
from relnas.utils.io import load_data_pickle

log = logging.getLogger("relnas.data.base")  # where the data modules report their source

__all__ = [
    "CIFAR10DataModule", "CIFAR100DataModule", "FashionMNISTDataModule", "DigitsDataModule",
    "SyntheticDataModule", "read_idx", "FASHION_MNIST_SYSTEM_DIRS",
]


# ====================================================================== CIFAR
class CIFAR10DataModule(TensorDataModule):
    """CIFAR-10 from the torchvision on-disk format (``<data_dir>/cifar-10-batches-py``).

    The pickled batches are read directly, by an unpickler that admits only containers, strings,
    numbers and numpy arrays (torchvision's class is used only to download, which also verifies
    md5 sums); ``download=true`` fetches them in ``prepare_data``.
    Defaults follow the search protocol (batch 256); ``cutout=16`` is set in the config.
    """

    name = "cifar10"
    default_mean = (0.4914, 0.4822, 0.4465)
    default_std = (0.2470, 0.2435, 0.2616)
    base_folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    label_key = "labels"
    _classes = 10
    _pretty = "CIFAR-10"

    @property
    def num_classes(self) -> int:
        return self._classes

    @property
    def in_channels(self) -> int:
        return 3

    @property
    def image_size(self) -> int:
        return 32

    @property
    def folder(self) -> Path:
        return Path(self.data_dir).expanduser().resolve() / self.base_folder

    def _missing(self) -> list[str]:
        return [f for f in self.train_files + self.test_files if not (self.folder / f).is_file()]

    def _download(self) -> None:
        if not self._missing():
            return
        import torchvision

        cls = torchvision.datasets.CIFAR10 if self._classes == 10 else torchvision.datasets.CIFAR100
        cls(str(Path(self.data_dir).expanduser()), train=True, download=True)

    def _read(self, files: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for f in files:
            try:
                entry = load_data_pickle(self.folder / f)
                x = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                y = [int(v) for v in entry[self.label_key]]
                if len(y) != len(x):
                    raise ValueError(f"{len(x)} images but {len(y)} labels")
            except Exception as e:  # truncated / not a CIFAR batch: one line, not the unpickler's traceback
                what = f"no {e.args[0]!r} entry" if isinstance(e, KeyError) and e.args else \
                    (" ".join(str(e).split()) or type(e).__name__)
                raise DataError(f"{self._pretty}: {self.folder / f} is not a readable CIFAR python batch ({what}); "
                                f"expected a pickled dict with 'data' (N x 3072 uint8) and '{self.label_key}' as in "
                                f"torchvision's {self.base_folder}: download it again") from None
            xs.append(x)
            ys.extend(y)
        return torch.from_numpy(np.concatenate(xs)), torch.tensor(ys, dtype=torch.int64)

    def _load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        missing = self._missing()
        if missing:
            raise DatasetNotFoundError(
                f"{self._pretty} not found: {self.folder} lacks {', '.join(missing)}; set data.download=true "
                f"on a connected machine or put {self.base_folder} under {self.folder.parent}")
        x_tr, y_tr = self._read(self.train_files)
        x_te, y_te = self._read(self.test_files)
        self.source = str(self.folder)
        return x_tr, y_tr, x_te, y_te


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (fine labels) from ``<data_dir>/cifar-100-python`` (torchvision format)."""

    name = "cifar100"
    default_mean = (0.5071, 0.4865, 0.4409)
    default_std = (0.2673, 0.2564, 0.2762)
    base_folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    label_key = "fine_labels"
    _classes = 100
    _pretty = "CIFAR-100"


# ====================================================================== Fashion-MNIST
#: where distribution packages put Fashion-MNIST (Debian: ``fashion-mnist`` package)
FASHION_MNIST_SYSTEM_DIRS = ("/usr/share/datasets/fashion-mnist",)

_FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed when the name ends in ``.gz``."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file")
    ndim = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    arr = np.frombuffer(bytearray(data), dtype=_IDX_DTYPES[data[2]], offset=4 + 4 * ndim)  # writable
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: IDX header says {dims}, found {arr.size} values")
    return arr.reshape(dims)


class FashionMNISTDataModule(TensorDataModule):
    """Fashion-MNIST (1 channel, 10 classes), parsed from IDX files (plain or ``.gz``).

    Looked up, in order, in ``<data_dir>/FashionMNIST/raw`` (torchvision's layout),
    ``<data_dir>/fashion-mnist``, ``<data_dir>/fashion_mnist``, ``<data_dir>`` and the system copy
    ``/usr/share/datasets/fashion-mnist`` (Debian package ``fashion-mnist``); nothing is
    downloaded unless ``download=true`` (torchvision's downloader, into ``<data_dir>``).

    The system copy stands in for the *default* data directory (``default_data_dir``, the
    config's ``paths.default_data_dir``). A ``data_dir`` the user chose (``data.data_dir``,
    ``paths.data_dir``, ``RELNAS_DATA``) that does not exist is an error (one line naming it and
    the expected layout), not a reason to read other files; one that exists without the files
    falls back to the system copy with a warning naming both.

    Args:
        image_size: 28 (native) or larger: the images are zero-padded evenly to this size
            (e.g. 32 for the CIFAR network's auxiliary head).
        search_system_dirs: also look in the system directories.
        default_data_dir: the default data directory; a ``data_dir`` that differs from it was chosen
            by the user and must exist (unless ``download``). None (the Python default): any
            ``data_dir`` may be missing, the system copy stands in.
    """

    name = "fashion_mnist"
    default_mean = (0.2860,)
    default_std = (0.3530,)

    def __init__(self, *args: Any, image_size: int = 28, search_system_dirs: bool = True,
                 default_data_dir: str | os.PathLike | None = None, **kwargs: Any) -> None:
        image_size = int(image_size)
        if image_size < 28 or (image_size - 28) % 2:
            raise ValueError(f"fashion_mnist image_size must be 28 + an even number of pixels, got {image_size}")
        self._image_size = image_size
        self.search_system_dirs = bool(search_system_dirs)
        self.default_data_dir = None if default_data_dir is None else str(default_data_dir)
        super().__init__(*args, **kwargs)

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def in_channels(self) -> int:
        return 1

    @property
    def image_size(self) -> int:
        return self._image_size

    @property
    def chosen_data_dir(self) -> bool:
        """Whether ``data_dir`` was chosen by the user (it differs from ``default_data_dir``)."""
        if self.default_data_dir is None:
            return False
        return Path(self.data_dir).expanduser().resolve() != Path(self.default_data_dir).expanduser().resolve()

    def _missing_chosen_dir(self) -> bool:
        return self.chosen_data_dir and not Path(self.data_dir).expanduser().exists()

    def candidate_dirs(self) -> list[Path]:
        root = Path(self.data_dir).expanduser()
        dirs = [root / "FashionMNIST" / "raw", root / "fashion-mnist", root / "fashion_mnist", root]
        if self.search_system_dirs and not self._missing_chosen_dir():
            dirs += [Path(d) for d in FASHION_MNIST_SYSTEM_DIRS]
        return dirs

    @staticmethod
    def _find_in(d: Path) -> dict[str, Path] | None:
        found = {}
        for key, stem in _FMNIST_FILES.items():
            for name in (stem, stem + ".gz"):
                if (d / name).is_file():
                    found[key] = d / name
                    break
            else:
                return None
        return found

    def locate(self) -> dict[str, Path] | None:
        """Paths of the four IDX files, or None."""
        for d in self.candidate_dirs():
            found = self._find_in(d)
            if found is not None:
                return found
        return None

    def _download(self) -> None:
        if self.locate() is not None:
            return
        import torchvision

        torchvision.datasets.FashionMNIST(str(Path(self.data_dir).expanduser()), train=True, download=True)

    def _load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        files = self.locate()
        root = Path(self.data_dir).expanduser()
        if files is None and self._missing_chosen_dir():
            names = ", ".join(_FMNIST_FILES.values())
            raise DatasetNotFoundError(
                f"the Fashion-MNIST data directory {root} does not exist (data.data_dir, paths.data_dir or "
                f"RELNAS_DATA); put the IDX files ({names}; plain or .gz) in {root / 'FashionMNIST' / 'raw'}, set "
                f"data.download=true on a connected machine, or leave the data directory at its default "
                f"{self.default_data_dir} (where the system copy {FASHION_MNIST_SYSTEM_DIRS[0]} stands in)")
        if files is None:
            looked = ", ".join(str(d) for d in self.candidate_dirs())
            raise DatasetNotFoundError(
                f"Fashion-MNIST not found (looked in {looked}); set data.download=true on a connected machine, "
                f"install the Debian package fashion-mnist, or put the IDX files under "
                f"{Path(self.data_dir).expanduser() / 'FashionMNIST' / 'raw'}")
        pad = (self._image_size - 28) // 2
        folder = files["train_images"].parent
        system = any(str(folder).startswith(d) for d in FASHION_MNIST_SYSTEM_DIRS)
        self.source = f"{folder} (the system copy)" if system else str(folder)
        if system and self.chosen_data_dir:
            log.warning("Fashion-MNIST is not in the chosen data directory %s (looked in %s/FashionMNIST/raw, "
                        "fashion-mnist, fashion_mnist and itself): using the system copy %s", root, root, folder)

        def images(p: Path) -> torch.Tensor:
            x = torch.from_numpy(read_idx(p).astype(np.uint8, copy=False)).unsqueeze(1)
            return F.pad(x, (pad, pad, pad, pad)) if pad else x.contiguous()

        def labels(p: Path) -> torch.Tensor:
            return torch.from_numpy(read_idx(p).astype(np.int64))

        return (images(files["train_images"]), labels(files["train_labels"]),
                images(files["test_images"]), labels(files["test_labels"]))


# ====================================================================== sklearn digits
class DigitsDataModule(TensorDataModule):
    """scikit-learn's 8x8 handwritten digits (1797 images, 1 channel, 10 classes), bundled with
    scikit-learn (no download). Pixel values 0..16 are scaled to 0..255 and the images are
    upscaled to ``image_size`` by bilinear interpolation; a stratified train/test split of
    ``test_size`` (fraction) is drawn with ``dataset_seed``. Normalisation 0.5/0.5.
    """

    name = "digits"
    default_mean = (0.5,)
    default_std = (0.5,)

    def __init__(self, *args: Any, image_size: int = 32, test_size: float = 0.25, dataset_seed: int = 0,
                 **kwargs: Any) -> None:
        if int(image_size) < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if not 0.0 < float(test_size) < 1.0:
            raise ValueError(f"test_size must be in (0, 1), got {test_size}")
        self._image_size = int(image_size)
        self.test_size = float(test_size)
        self.dataset_seed = int(dataset_seed)
        kwargs.setdefault("crop_padding", 0)
        kwargs.setdefault("flip", False)
        super().__init__(*args, **kwargs)

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def in_channels(self) -> int:
        return 1

    @property
    def image_size(self) -> int:
        return self._image_size

    def _load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        x = torch.from_numpy(d.images.astype(np.float32) * (255.0 / 16.0)).unsqueeze(1)
        if self._image_size != 8:
            x = F.interpolate(x, size=(self._image_size, self._image_size), mode="bilinear", align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8)
        y = torch.from_numpy(d.target.astype(np.int64))
        tr, te = train_test_split(np.arange(len(y)), test_size=self.test_size, random_state=self.dataset_seed,
                                  stratify=d.target)
        tr, te = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))
        import sklearn

        self.source = f"scikit-learn {sklearn.__version__} bundled digits (load_digits)"
        return x[tr].contiguous(), y[tr], x[te].contiguous(), y[te]


# ====================================================================== synthetic
class SyntheticDataModule(TensorDataModule):
    """Random, learnable images: ``clip(128 + signal * pattern[label] + noise * N(0,1))``.

    Each class has a fixed random pattern (smooth, per channel) drawn with ``dataset_seed``;
    labels are balanced (cycled, then shuffled). A short training reduces the loss quickly, so
    it is suited to smoke tests and benchmarks without any dataset on disk.
    """

    name = "synthetic"
    default_mean = (0.5,)
    default_std = (0.5,)

    def __init__(self, *args: Any, in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
                 num_train: int = 512, num_test: int = 256, dataset_seed: int = 0, signal: float = 40.0,
                 noise: float = 50.0, **kwargs: Any) -> None:
        if min(int(in_channels), int(image_size), int(num_classes), int(num_train), int(num_test)) < 1:
            raise ValueError("synthetic in_channels, image_size, num_classes, num_train, num_test must be >= 1")
        self._in_channels = int(in_channels)
        self._image_size = int(image_size)
        self._num_classes = int(num_classes)
        self.num_train = int(num_train)
        self.num_test = int(num_test)
        self.dataset_seed = int(dataset_seed)
        self.signal = float(signal)
        self.noise = float(noise)
        super().__init__(*args, **kwargs)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def in_channels(self) -> int:
        return self._in_channels

    @property
    def image_size(self) -> int:
        return self._image_size

    def _load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.dataset_seed)
        c, s, k = self._in_channels, self._image_size, self._num_classes
        coarse = max(2, s // 4)
        patterns = torch.randn(k, c, coarse, coarse, generator=g)
        patterns = F.interpolate(patterns, size=(s, s), mode="bilinear", align_corners=False)
        patterns = patterns / patterns.flatten(1).std(dim=1).clamp_min(1e-6).view(k, 1, 1, 1)

        def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            y = torch.arange(n) % k
            y = y[torch.randperm(n, generator=g)]
            x = 128.0 + self.signal * patterns[y] + self.noise * torch.randn(n, c, s, s, generator=g)
            return x.round().clamp(0, 255).to(torch.uint8), y.to(torch.int64)

        x_tr, y_tr = make(self.num_train)
        x_te, y_te = make(self.num_test)
        self.source = f"generated in memory (synthetic, dataset_seed={self.dataset_seed})"
        return x_tr, y_tr, x_te, y_te
