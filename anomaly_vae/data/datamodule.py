"""Lightning DataModule for encoded tables (imported on the training path only)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

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
    """Training tensors with a seeded shuffle. Validation rows do not go through
    Lightning's loop: the module scores them (``TabularVAEModule(held_out=...)``, batches
    from :func:`held_out_batches`).

    Args:
        train: encoded rows.
        batch_size: rows per optimizer step.
        seed: seed of the shuffling generator, for reproducible runs.
        rows_per_epoch: training rows drawn per epoch (default: all rows once); more
            than the table holds cycles through fresh permutations.
    """

    def __init__(
        self,
        train: TabularTensors,
        batch_size: int,
        seed: int = 0,
        rows_per_epoch: int | None = None,
    ) -> None:
        super().__init__()
        self.train = train
        self.batch_size = batch_size
        self.seed = seed
        self.rows_per_epoch = rows_per_epoch

    def train_dataloader(self) -> DataLoader[TabularTensors]:
        ds = _BatchDataset(self.train)
        base = RandomSampler(
            ds,
            num_samples=max(len(ds), self.rows_per_epoch or 0),
            generator=torch.Generator().manual_seed(self.seed),
        )
        # drop a last batch of 1 row only: it would make a noisy, tiny step
        n = len(base)
        drop_last = n % self.batch_size == 1 and n > self.batch_size
        sampler = BatchSampler(base, self.batch_size, drop_last=drop_last)
        return DataLoader(ds, batch_size=None, sampler=sampler)


def held_out_batches(tensors: TabularTensors, batch_size: int) -> list[TabularTensors]:
    """``tensors`` cut in order into batches of ``batch_size`` rows (the last may be
    shorter): the validation batches the training module scores each epoch."""
    return [tensors.rows(slice(i, i + batch_size)) for i in range(0, len(tensors), batch_size)]
