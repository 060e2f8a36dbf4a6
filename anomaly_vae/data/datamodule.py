"""Lightning DataModule for encoded tables (imported on the training path only)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from anomaly_vae.nn.tabular import TabularTensors


class _BatchDataset(Dataset[TabularTensors]):
    """Indexed by a list of row numbers: one fancy-index per batch instead of one
    ``__getitem__`` and a collate per row, which is the cost that dominates small MLPs."""

    def __init__(self, tensors: TabularTensors) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors)

    def __getitem__(self, idx: Any) -> TabularTensors:
        return self.tensors.rows(torch.as_tensor(idx))


class TabularDataModule(pl.LightningDataModule):
    """Train and validation tensors with a seeded shuffle.

    Args:
        train, val: encoded rows; ``val`` may be None (no validation, no early stopping).
        batch_size: rows per optimizer step.
        seed: seed of the shuffling generator, for reproducible runs.
        rows_per_epoch: training rows drawn per epoch (default: all rows once); more
            than the table holds cycles through fresh permutations.
    """

    def __init__(
        self,
        train: TabularTensors,
        val: TabularTensors | None,
        batch_size: int,
        seed: int = 0,
        rows_per_epoch: int | None = None,
    ) -> None:
        super().__init__()
        self.train = train
        self.val = val
        self.batch_size = batch_size
        self.seed = seed
        self.rows_per_epoch = rows_per_epoch

    def _loader(self, tensors: TabularTensors, shuffle: bool) -> DataLoader[TabularTensors]:
        ds = _BatchDataset(tensors)
        base = (
            RandomSampler(
                ds,
                num_samples=max(len(ds), self.rows_per_epoch or 0),
                generator=torch.Generator().manual_seed(self.seed),
            )
            if shuffle
            else SequentialSampler(ds)
        )
        # drop a last batch of 1 row only: it would make a noisy, tiny step
        n = len(base)
        drop_last = shuffle and n % self.batch_size == 1 and n > self.batch_size
        sampler = BatchSampler(base, self.batch_size, drop_last=drop_last)
        return DataLoader(ds, batch_size=None, sampler=sampler)

    def train_dataloader(self) -> DataLoader[TabularTensors]:
        return self._loader(self.train, shuffle=True)

    def val_dataloader(self) -> DataLoader[TabularTensors] | list[Any]:
        if self.val is None:
            return []
        return self._loader(self.val, shuffle=False)
