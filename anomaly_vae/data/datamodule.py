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
        return self.tensors.n_rows

    def __getitem__(self, idx: Any) -> TabularTensors:
        return self.tensors.rows(torch.as_tensor(idx))


class _GroupDataset(_BatchDataset):
    """Indexed by a list of batches (lists of row numbers): a list of batches."""

    def __getitem__(self, idx: Any) -> list[TabularTensors]:  # type: ignore[override]
        return [self.tensors.rows(torch.as_tensor(b)) for b in idx]


class TabularDataModule(pl.LightningDataModule):
    """Training tensors with a seeded shuffle. Validation rows do not go through
    Lightning's loop: the module scores them (``VAEModule(held_out=...)``, batches
    from :func:`held_out_batches`).

    Args:
        train: encoded rows.
        batch_size: rows per optimizer step.
        seed: seed of the shuffling generator, for reproducible runs.
        rows_per_epoch: training rows drawn per epoch (default: all rows once); more
            than the table holds cycles through fresh permutations.
        steps_per_item: on one process, the loader yields lists of up to this many
            consecutive batches, and the module takes one optimizer step per batch
            (``VAEModule.training_step``): the same batches in the same order,
            with Lightning's fixed cost per loop iteration (about 1.5 ms on CPU, a
            fifth of a small table's step) paid once per list. Under a distributed
            strategy every item is one batch, because DDP synchronizes gradients once
            per ``training_step``.
    """

    def __init__(
        self,
        train: TabularTensors,
        batch_size: int,
        seed: int = 0,
        rows_per_epoch: int | None = None,
        steps_per_item: int = 1,
    ) -> None:
        super().__init__()
        self.train = train
        self.batch_size = batch_size
        self.seed = seed
        self.rows_per_epoch = rows_per_epoch
        self.steps_per_item = steps_per_item

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
        distributed = self.trainer is not None and self.trainer.world_size > 1
        if self.steps_per_item > 1 and not distributed:
            # a batch sampler over the batch sampler: lists of consecutive batches (torch
            # annotates its input as indices, but it groups whatever the sampler yields)
            groups = BatchSampler(sampler, self.steps_per_item, drop_last=False)  # type: ignore[arg-type]
            return DataLoader(_GroupDataset(self.train), batch_size=None, sampler=groups)
        return DataLoader(ds, batch_size=None, sampler=sampler)


def held_out_batches(tensors: TabularTensors, batch_size: int) -> list[TabularTensors]:
    """``tensors`` cut in order into batches of ``batch_size`` rows (the last may be
    shorter): the validation batches the training module scores each epoch."""
    return [tensors.rows(slice(i, i + batch_size)) for i in range(0, tensors.n_rows, batch_size)]
