"""Tests for relnas.data: batched augmentation, tensor loaders, DataModules, configs."""
from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from relnas.data import (
    BatchAugment,
    CIFAR10DataModule,
    CIFAR100DataModule,
    DatasetNotFoundError,
    DigitsDataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    SyntheticDataModule,
    TensorBatchLoader,
    TensorDataModule,
)

REPO = Path(__file__).resolve().parents[2]
DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------------- helpers
class IndexDataModule(TensorDataModule):
    """Images whose first two pixels encode their index (to check splits)."""

    name = "index"

    def __init__(self, n_train: int = 100, n_test: int = 40, **kw):
        self.n_train, self.n_test = n_train, n_test
        super().__init__(**kw)

    num_classes = property(lambda self: 10)
    in_channels = property(lambda self: 1)
    image_size = property(lambda self: 8)

    @staticmethod
    def make(n: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.arange(offset, offset + n)
        x = torch.zeros(n, 1, 8, 8, dtype=torch.uint8)
        x[:, 0, 0, 0] = (idx % 256).to(torch.uint8)
        x[:, 0, 0, 1] = (idx // 256).to(torch.uint8)
        return x, idx % 10

    def _load(self):
        return (*self.make(self.n_train, 0), *self.make(self.n_test, 10_000))


def ids(x: torch.Tensor) -> list[int]:
    return (x[:, 0, 0, 0].long() + 256 * x[:, 0, 0, 1].long()).tolist()


def textured(n: int, c: int = 3, s: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, c, s, s), generator=g, dtype=torch.uint8)


# ---------------------------------------------------------------------- augmentation
def test_normalize_mean_std():
    aug = BatchAugment(mean=(0.25, 0.5, 0.75), std=(0.1, 0.2, 0.3))
    x = torch.full((2, 3, 4, 4), 128, dtype=torch.uint8)
    out = aug.normalize(x)
    assert out.dtype == torch.float32 and out.shape == x.shape and out.is_contiguous()
    for c, (m, s) in enumerate(zip((0.25, 0.5, 0.75), (0.1, 0.2, 0.3))):
        assert torch.allclose(out[:, c], torch.full_like(out[:, c], (128 / 255 - m) / s), atol=1e-5)
    # real statistics: normalising with the data's own mean/std gives ~N(0, 1)
    x = textured(64)
    xf = x.float() / 255
    aug = BatchAugment(mean=xf.mean(dim=(0, 2, 3)).tolist(), std=xf.std(dim=(0, 2, 3)).tolist())
    out = aug.normalize(x)
    assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (out.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3


def test_eval_path_equals_no_op_augmentation():
    x = textured(8)
    aug = BatchAugment(crop_padding=0, flip=False, cutout=0, mean=0.5, std=0.25)
    assert torch.equal(aug(x, torch.Generator().manual_seed(0)), aug.normalize(x))


def test_crop_shifts_content():
    p = 4
    x = textured(200, c=2, s=16)
    aug = BatchAugment(crop_padding=p, flip=False, cutout=0, mean=0.0, std=1.0)
    out = aug(x, torch.Generator().manual_seed(1))
    pixels = (out * 255).round().to(torch.uint8)
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    offsets = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                if torch.equal(pixels[i], padded[i, :, dy:dy + 16, dx:dx + 16])]
        assert len(hits) == 1, f"sample {i} is not a crop of its padded image"
        offsets.add(hits[0])
    assert len(offsets) > 40  # offsets are per sample and spread over the 81 possibilities
    assert (p, p) in offsets or len(offsets) > 60


def test_flip_rate_about_half():
    x = textured(4000, c=1, s=8)
    aug = BatchAugment(crop_padding=0, flip=True, cutout=0, mean=0.0, std=1.0)
    pixels = (aug(x, torch.Generator().manual_seed(2)) * 255).round().to(torch.uint8)
    same = (pixels == x).flatten(1).all(1)
    flipped = (pixels == x.flip(3)).flatten(1).all(1)
    assert bool((same ^ flipped).all())
    assert 0.45 < flipped.float().mean().item() < 0.55


def test_cutout_square():
    side, s = 8, 32
    x = torch.full((500, 3, s, s), 255, dtype=torch.uint8)
    aug = BatchAugment(crop_padding=0, flip=False, cutout=side, mean=0.0, std=1.0)
    out = aug(x, torch.Generator().manual_seed(3))
    assert torch.all((out == 0) | (out == 1))
    zero = out == 0
    assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 0], zero[:, 2])  # all channels
    full = 0
    for m in zero[:, 0]:
        n = int(m.sum())
        assert 0 < n <= side * side
        rows = m.any(1).nonzero().flatten()
        cols = m.any(0).nonzero().flatten()
        h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert h * w == n, "cutout region is not a rectangle"
        if rows[0] > 0 and cols[0] > 0 and rows[-1] < s - 1 and cols[-1] < s - 1:  # fully inside
            assert (h, w) == (side, side)
            full += 1
    assert full > 100


def test_cutout_after_normalisation():
    aug = BatchAugment(crop_padding=0, flip=False, cutout=4, mean=0.5, std=0.5)
    out = aug(torch.zeros(20, 1, 8, 8, dtype=torch.uint8), torch.Generator().manual_seed(0))
    assert set(torch.unique(out).tolist()) == {-1.0, 0.0}  # 0 is the cutout value, -1 is black


def test_augment_deterministic_for_generator_seed():
    x = textured(16)
    aug = BatchAugment(crop_padding=4, flip=True, cutout=16, mean=0.5, std=0.5)
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == torch.float32


# ---------------------------------------------------------------------- loader
def test_loader_batches_and_len():
    x, y = IndexDataModule.make(10, 0)
    eval_loader = TensorBatchLoader(x, y, batch_size=4)
    assert len(eval_loader) == 3
    batches = list(eval_loader)
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    assert ids(torch.cat([b[0] for b in batches])) == list(range(10))
    train = TensorBatchLoader(x, y, batch_size=4, shuffle=True, seed=0)
    e1 = ids(torch.cat([b[0] for b in train]))
    e2 = ids(torch.cat([b[0] for b in train]))
    assert sorted(e1) == list(range(10)) and e1 != e2  # new permutation each epoch
    train.set_seed(0)
    assert ids(torch.cat([b[0] for b in train])) == e1
    assert len(TensorBatchLoader(x, y, batch_size=4, drop_last=True)) == 2


@pytest.mark.parametrize("n", [100, 101])
def test_sharding_world_size_2(n):
    x, y = IndexDataModule.make(n, 0)
    shards = [ids(torch.cat([b[0] for b in TensorBatchLoader(x, y, 8, shuffle=True, seed=5, rank=r, world_size=2)]))
              for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == n // 2
    assert not set(shards[0]) & set(shards[1])
    assert len(set(shards[0]) | set(shards[1])) == 2 * (n // 2)
    loaders = [TensorBatchLoader(x, y, 8, rank=r, world_size=2, remainder="pad") for r in range(2)]
    padded = [ids(torch.cat([b[0] for b in lo])) for lo in loaders]
    assert len(padded[0]) == len(padded[1]) == -(-n // 2)
    assert set(padded[0]) | set(padded[1]) == set(range(n))


def test_datamodule_shards_from_arguments():
    dm = IndexDataModule(batch_size=7)
    dm.setup()
    # in DDP each process has its own generator with the same seed; emulate that by reseeding
    dm.set_seed(0)
    a = ids(torch.cat([b[0] for b in dm.train_dataloader(rank=0, world_size=2)]))
    dm.set_seed(0)
    b = ids(torch.cat([b[0] for b in dm.train_dataloader(rank=1, world_size=2)]))
    assert not set(a) & set(b) and len(a) == len(b) == 50


# ---------------------------------------------------------------------- datamodule
def test_train_portion_split():
    dm = IndexDataModule(n_train=100, train_portion=0.7, split_seed=3)
    dm.setup()
    tr, va = ids(dm.train_data[0]), ids(dm.val_data[0])
    assert len(tr) == 70 and len(va) == 30
    assert not set(tr) & set(va) and set(tr) | set(va) == set(range(100))
    assert len(dm.train_dataloader()) == 1 and len(dm.val_dataloader()) == 1
    dm2 = IndexDataModule(n_train=100, train_portion=0.7, split_seed=3)
    dm2.setup()
    assert ids(dm2.train_data[0]) == tr
    dm3 = IndexDataModule(n_train=100, train_portion=0.7, split_seed=4)
    dm3.setup()
    assert set(ids(dm3.train_data[0])) != set(tr)
    assert min(ids(dm.test_data[0])) == 10_000  # the test set is kept apart


def test_training_mode_splits():
    dm = IndexDataModule(n_train=100, n_test=40)
    dm.setup()
    assert len(dm.train_data[0]) == 100 and ids(dm.val_data[0]) == ids(dm.test_data[0])
    dm = IndexDataModule(n_train=100, val_size=10, split_seed=1)
    dm.setup()
    tr, va = ids(dm.train_data[0]), ids(dm.val_data[0])
    assert len(tr) == 90 and len(va) == 10 and not set(tr) & set(va)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5, 1.5])
def test_train_portion_validation(bad):
    with pytest.raises(ValueError, match="train_portion"):
        SyntheticDataModule(train_portion=bad)
    with pytest.raises(ValueError, match="train_portion"):
        ImageFolderDataModule(train_portion=bad)


def test_shapes_dtypes_and_preprocess():
    dm = SyntheticDataModule(in_channels=3, image_size=16, num_classes=5, num_train=50, num_test=20,
                             batch_size=16, eval_batch_size=64, cutout=4)
    dm.setup()
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (5, 3, 16)
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.uint8 and x.shape == (16, 3, 16, 16) and y.dtype == torch.int64
    assert int(y.max()) < 5
    xt = dm.preprocess(x, train=True)
    xe = dm.preprocess(x, train=False)
    assert xt.dtype == xe.dtype == torch.float32 and xt.shape == xe.shape == x.shape
    assert not torch.equal(xt, xe)
    assert torch.allclose(xe, (x.float() / 255 - 0.5) / 0.5, atol=1e-6)
    xv, yv = next(iter(dm.val_dataloader()))
    assert len(xv) == 20 and len(dm.val_dataloader()) == 1
    dm_noaug = SyntheticDataModule(num_train=8, num_test=8, augment=False)
    assert torch.equal(dm_noaug.preprocess(x, train=True), dm_noaug.preprocess(x, train=False))


def test_on_after_batch_transfer_uses_trainer_state():
    dm = SyntheticDataModule(num_train=32, num_test=16, cutout=8)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    dm.trainer = SimpleNamespace(training=True, global_rank=0, world_size=1)
    xt, yt = dm.on_after_batch_transfer((x, y), 0)
    dm.trainer = SimpleNamespace(training=False, global_rank=0, world_size=1)
    xe, ye = dm.on_after_batch_transfer((x, y), 0)
    assert torch.equal(yt, y) and torch.equal(xe, dm.preprocess(x, train=False))
    assert not torch.equal(xt, xe)


def _epoch(dm, n_batches=3):
    out = []
    for i, (x, y) in enumerate(dm.train_dataloader()):
        if i == n_batches:
            break
        out.append((dm.preprocess(x, train=True), y))
    return out


def test_datamodule_determinism_and_set_seed():
    kw = dict(num_train=64, num_test=16, batch_size=16, cutout=8)
    a, b, c = (SyntheticDataModule(**kw) for _ in range(3))
    for dm in (a, b, c):
        dm.setup()
    for dm in (a, b):
        dm.set_seed(11)
    c.set_seed(12)
    ea, eb, ec = _epoch(a), _epoch(b), _epoch(c)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(ea, eb))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(ea, ec))
    # a second epoch differs, set_seed replays the first, state_dict restores mid-stream
    assert not torch.equal(_epoch(a)[0][0], ea[0][0])
    a.set_seed(11)
    assert torch.equal(_epoch(a)[0][0], ea[0][0])
    state = a.state_dict()
    nxt = _epoch(a)
    b.load_state_dict(state)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(_epoch(b), nxt))


def test_digits():
    dm = DigitsDataModule(image_size=32, test_size=0.25, dataset_seed=0)
    dm.setup()
    assert dm.train_data[0].shape == (1347, 1, 32, 32) and dm.test_data[0].shape == (450, 1, 32, 32)
    assert dm.train_data[0].dtype == torch.uint8 and int(dm.train_data[0].max()) > 200
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (10, 1, 32)
    other = DigitsDataModule(image_size=8, dataset_seed=1)
    other.setup()
    assert other.train_data[0].shape[-1] == 8


def test_synthetic_is_seeded_and_learnable():
    a = SyntheticDataModule(num_train=200, num_test=100, image_size=8, dataset_seed=1)
    b = SyntheticDataModule(num_train=200, num_test=100, image_size=8, dataset_seed=1)
    a.setup(), b.setup()
    assert torch.equal(a.train_data[0], b.train_data[0])
    # nearest class mean on the training set classifies the test set well above chance
    x, y = a.train_data[0].float().flatten(1), a.train_data[1]
    means = torch.stack([x[y == k].mean(0) for k in range(10)])
    xt, yt = a.test_data[0].float().flatten(1), a.test_data[1]
    acc = (torch.cdist(xt, means).argmin(1) == yt).float().mean()
    assert acc > 0.5


# ---------------------------------------------------------------------- on-disk datasets
def test_cifar10_missing_message(tmp_path):
    dm = CIFAR10DataModule(data_dir=str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as ei:
        dm.setup()
    msg = str(ei.value)
    assert isinstance(ei.value, FileNotFoundError)
    assert "\n" not in msg and str(tmp_path) in msg and "data.download=true" in msg
    assert "cifar-10-batches-py" in msg


def _write_cifar(root: Path, folder: str, train_files, test_files, label_key, n_per_file, n_classes):
    d = root / folder
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for f in (*train_files, *test_files):
        # torchvision layout: rows of 3072 = R plane, G plane, B plane (CHW flattened)
        data = np.zeros((n_per_file, 3, 32, 32), dtype=np.uint8)
        for c in range(3):
            data[:, c] = 10 * (c + 1)
        data[:, :, 0, 0] = rng.integers(0, 256, (n_per_file, 3))
        labels = rng.integers(0, n_classes, n_per_file).tolist()
        with open(d / f, "wb") as fh:
            pickle.dump({"data": data.reshape(n_per_file, -1), label_key: labels, "batch_label": f}, fh)
    meta = {"batches.meta": "label_names", "meta": "fine_label_names"}
    for name, key in meta.items():
        with open(d / name, "wb") as fh:
            pickle.dump({key: [f"c{i}" for i in range(n_classes)]}, fh)


def test_cifar10_standin(tmp_path):
    _write_cifar(tmp_path, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                 "labels", 4, 10)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), batch_size=8, train_portion=0.5)
    dm.setup()
    assert dm.train_data[0].shape == (10, 3, 32, 32) and dm.val_data[0].shape == (10, 3, 32, 32)
    assert dm.test_data[0].shape == (4, 3, 32, 32)
    for c in range(3):
        assert int(dm.train_data[0][0, c, 5, 5]) == 10 * (c + 1)  # channel order kept
    assert dm.mean == (0.4914, 0.4822, 0.4465) and (dm.num_classes, dm.in_channels, dm.image_size) == (10, 3, 32)
    x, y = next(iter(dm.train_dataloader()))
    assert dm.preprocess(x, train=True).shape == (8, 3, 32, 32)


def test_cifar100_standin(tmp_path):
    _write_cifar(tmp_path, "cifar-100-python", ["train"], ["test"], "fine_labels", 6, 100)
    dm = CIFAR100DataModule(data_dir=str(tmp_path))
    dm.setup()
    assert dm.train_data[0].shape == (6, 3, 32, 32) and dm.num_classes == 100
    with pytest.raises(DatasetNotFoundError, match="cifar-100-python"):
        CIFAR100DataModule(data_dir=str(tmp_path / "nowhere")).setup()


def test_fashion_mnist_missing(tmp_path):
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), search_system_dirs=False)
    with pytest.raises(DatasetNotFoundError) as ei:
        dm.setup()
    assert "\n" not in str(ei.value) and str(tmp_path) in str(ei.value)


def test_fashion_mnist_idx_in_data_dir(tmp_path):
    import gzip

    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)

    def idx(path, arr, gz):
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        (gzip.open if gz else open)(path, "wb").write(header + arr.astype(np.uint8).tobytes())

    imgs = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    idx(raw / "train-images-idx3-ubyte", imgs, False)
    idx(raw / "train-labels-idx1-ubyte", np.array([1, 2, 3]), False)
    idx(raw / "t10k-images-idx3-ubyte.gz", imgs[:2], True)
    idx(raw / "t10k-labels-idx1-ubyte.gz", np.array([4, 5]), True)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), image_size=32, search_system_dirs=False)
    dm.setup()
    x = dm.train_data[0]
    assert x.shape == (3, 1, 32, 32) and dm.test_data[0].shape == (2, 1, 32, 32)
    assert torch.equal(x[:, 0, 2:30, 2:30], torch.from_numpy(imgs.astype(np.uint8)))
    assert dm.train_data[1].tolist() == [1, 2, 3] and dm.test_data[1].tolist() == [4, 5]
    with pytest.raises(ValueError):
        FashionMNISTDataModule(image_size=31)


@pytest.mark.skipif(not DEBIAN_FMNIST.is_dir(), reason="Debian fashion-mnist package not installed")
def test_fashion_mnist_debian(tmp_path):
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), image_size=32, train_portion=0.5)
    dm.setup()
    assert dm.train_data[0].shape == (30000, 1, 32, 32) and dm.val_data[0].shape == (30000, 1, 32, 32)
    assert dm.test_data[0].shape == (10000, 1, 32, 32)
    assert int(dm.train_data[0][:, :, :2].max()) == 0  # zero padding
    assert sorted(torch.unique(dm.test_data[1]).tolist()) == list(range(10))
    mean = dm.test_data[0][:, :, 2:30, 2:30].float().mean().item() / 255
    assert abs(mean - 0.2860) < 0.01
    assert (dm.num_classes, dm.in_channels, dm.image_size, dm.mean, dm.std) == (10, 1, 32, (0.2860,), (0.3530,))


def test_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for cls in ("cat", "dog"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(d / f"{i}.png")
    dm = ImageFolderDataModule(data_dir=str(tmp_path), image_size=16, batch_size=3, eval_batch_size=4,
                               num_workers=0, pin_memory=False)
    assert dm.num_classes == 2 and dm.classes == ["cat", "dog"]
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    xv, yv = next(iter(dm.val_dataloader()))
    assert xv.shape == (4, 3, 16, 16) and len(dm.test_dataloader().dataset) == 4
    # shuffling follows set_seed (random transforms too when num_workers > 0: the workers are seeded
    # from the loader's generator; with num_workers=0 they use the global RNG)
    plain = ImageFolderDataModule(data_dir=str(tmp_path), image_size=16, batch_size=8, num_workers=0,
                                  pin_memory=False, augment=False)
    plain.setup()
    plain.set_seed(1)
    first = next(iter(plain.train_dataloader()))[0]
    plain.set_seed(1)
    assert torch.equal(first, next(iter(plain.train_dataloader()))[0])
    plain.set_seed(2)
    assert not torch.equal(first, next(iter(plain.train_dataloader()))[0])
    search = ImageFolderDataModule(data_dir=str(tmp_path), image_size=16, num_workers=0, train_portion=0.5)
    search.setup()
    assert len(search.train_set) == 4 and len(search.val_set) == 4
    assert not set(search.train_set.indices) & set(search.val_set.indices)
    # val_augment (the authors' search): the search-validation images get the training transform
    assert search.val_set.dataset.transform is not search.train_set.dataset.transform
    official = ImageFolderDataModule(data_dir=str(tmp_path), image_size=16, num_workers=0, train_portion=0.5,
                                     val_augment=True)
    official.setup()
    assert official.val_set.dataset.transform is official.train_set.dataset.transform
    with pytest.raises(DatasetNotFoundError, match="not found"):
        ImageFolderDataModule(data_dir=str(tmp_path / "none")).setup()


# ---------------------------------------------------------------------- configs, Lightning
# The data modules are chosen by the Hydra config group configs/data/ (its files' _target_).
DATA_CONFIGS = {"cifar10": CIFAR10DataModule, "cifar100": CIFAR100DataModule,
                "fashion_mnist": FashionMNISTDataModule, "digits": DigitsDataModule,
                "imagefolder": ImageFolderDataModule, "synthetic": SyntheticDataModule}


def test_every_data_config_is_listed():
    assert {p.stem for p in (REPO / "configs" / "data").glob("*.yaml")} == set(DATA_CONFIGS)


@pytest.mark.parametrize("name", sorted(DATA_CONFIGS))
def test_hydra_configs_instantiate(name, tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path)},
                            "data": OmegaConf.load(REPO / "configs" / "data" / f"{name}.yaml")})
    dm = instantiate(cfg.data)
    assert type(dm) is DATA_CONFIGS[name]
    assert dm.data_dir == str(tmp_path) or name == "imagefolder"
    if name in ("cifar10", "cifar100"):
        assert dm.batch_size == 256 and dm.batch_augment.cutout == 16 and dm.download is False


def test_lightning_fit_uses_augmentation():
    import lightning as L
    import torch.nn.functional as F

    seen = {"train": [], "val": []}

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3 * 8 * 8, 4)

        def training_step(self, batch, _):
            x, y = batch
            seen["train"].append(x)
            return F.cross_entropy(self.lin(x.flatten(1)), y)

        def validation_step(self, batch, _):
            seen["val"].append(batch[0])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = SyntheticDataModule(num_train=64, num_test=32, image_size=8, num_classes=4, batch_size=16, cutout=4)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Tiny(), datamodule=dm)
    assert len(seen["train"]) == 4 and len(seen["val"]) == 1
    assert all(x.dtype == torch.float32 for x in seen["train"] + seen["val"])
    assert torch.equal(seen["val"][0], dm.preprocess(dm.val_data[0], train=False))
    assert any((x == 0).any() for x in seen["train"])  # cutout zeros in training batches


def test_set_seed_in_epoch_start_hook_makes_resume_bit_exact():
    """The search calls ``set_seed`` in ``on_train_epoch_start``; the shuffle must follow it even for
    the first epoch of a fit (Lightning calls ``iter()`` on the loader before that hook), so a
    resumed search that starts a fresh fit at candidate k sees exactly the original batches."""
    import lightning as L

    class Seeder(L.Callback):
        def __init__(self, first):
            self.first = first

        def on_train_epoch_start(self, trainer, pl_module):
            trainer.datamodule.set_seed(self.first + trainer.current_epoch)

    class Rec(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.batches = []

        def training_step(self, batch, _):
            self.batches.append((self.current_epoch, batch[0].clone(), batch[1].clone()))
            return self.w * 0 + batch[0].float().mean() * 0 + self.w.square()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def fit(epochs, first):
        dm = SyntheticDataModule(num_train=48, num_test=16, image_size=8, batch_size=16, cutout=4)
        m = Rec()
        L.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                  limit_val_batches=0, callbacks=[Seeder(first)]).fit(m, datamodule=dm)
        return m.batches

    full = fit(3, 100)
    resumed = fit(1, 102)
    last = [b for b in full if b[0] == 2]
    assert len(last) == len(resumed) == 3
    for (_, xa, ya), (_, xb, yb) in zip(last, resumed):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
