"""The one LightningModule both detectors train through: the training loop only.

The math lives in ``nn/`` (any VAE that follows :class:`~anomaly_vae.nn.base.VAEProtocol`:
the tabular ``TabularVAE``, the image ``ConvVAE``); this module adds beta and KL
warm-up, optional robust trimming, the optimizer, logging, and model selection on the
held-out ELBO: early stopping and keeping the best epoch's weights, one mechanism for
every kind of data.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch

from anomaly_vae.nn.base import VAEProtocol, single_sample_elbo
from anomaly_vae.nn.tabular import TabularTensors


class VAEModule(pl.LightningModule):
    """Trains an injected VAE (a :class:`TabularVAE`, or any module that follows
    :class:`~anomaly_vae.nn.base.VAEProtocol`, such as the image ``ConvVAE``) on the
    (beta-)ELBO.

    Where the held-out ELBO comes from is the data kind's choice: tables hand their
    validation batches to ``held_out`` (scored here with common random numbers); images
    give Lightning a validation loader (``validation_step``). Model selection is the same
    either way: with ``patience`` set, the best epoch's weights are kept and put back, and
    training stops after ``patience`` epochs without a better value.

    Args:
        net: the VAE.
        beta: weight of the KL term (beta-VAE; 1 is the plain ELBO).
        kl_warmup_epochs: the KL weight rises linearly from 0 to ``beta`` over these epochs.
        lr, weight_decay: AdamW settings.
        trim_fraction: fraction of each batch's highest-loss rows left out of the
            gradient (robust training on contaminated data); 0 disables it.
        robust_validation: with ``trim_fraction``, the validation ELBO that early stopping
            and the kept epoch watch is the mean over each batch's best
            ``1 - trim_fraction`` rows.
        held_out: validation batches (moved to the training device when training
            starts) that the module scores itself at the end of every training epoch,
            instead of in Lightning's validation loop,
            whose fixed cost per epoch (about 17 ms on CPU) is a large share of a small
            table's epoch. Under DDP each rank scores every ``world_size``-th batch and
            the sums are all-reduced, so every rank sees the same value. The best
            epoch's weights are put back when training ends (``best_epoch``). None:
            validation, if any, comes from Lightning's loop (``validation_step``).
        patience: stop after this many epochs without a better validation ELBO (None:
            never stop early). Either source of the validation ELBO is watched the same
            way; the best epoch's weights are kept whenever there is one.
        held_out_seed: seed of the latent draws for the held-out ELBO. Batch ``i`` uses
            ``held_out_seed + i`` in every epoch (common random numbers), so epochs are
            compared on the same noise and the value does not depend on the world size.
        log_metrics: also send each epoch's train ELBO and held-out ELBO to Lightning
            (``self.log``: loggers, ``callback_metrics``). ``history`` has them either
            way; the detectors turn this off, because each call costs about 1 ms, a few
            percent of a small table's fit. Lightning's validation loop
            (``validation_step``) always logs ``val_elbo``, for callbacks that monitor it.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        beta: float = 1.0,
        kl_warmup_epochs: int = 0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        trim_fraction: float = 0.0,
        robust_validation: bool = True,
        held_out: Sequence[Any] | None = None,
        patience: int | None = None,
        held_out_seed: int = 0,
        log_metrics: bool = True,
    ) -> None:
        super().__init__()
        self.log_metrics = log_metrics
        self.robust_validation = robust_validation
        self.net = net
        self.beta = beta
        self.kl_warmup_epochs = kl_warmup_epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.trim_fraction = trim_fraction
        self.history: list[dict[str, float]] = []
        self._epoch_sums: dict[str, list[float]] = {}
        self.held_out = list(held_out) if held_out else []
        self.patience = patience
        self.held_out_seed = held_out_seed
        #: epoch of the best held-out ELBO (-1: none yet, or no ``held_out``)
        self.best_epoch = -1
        self._best_elbo = -math.inf
        self._best_state: dict[str, torch.Tensor] | None = None
        self._stale_epochs = 0
        # one optimizer, one step per batch: stepping by hand skips the closure machinery
        # of automatic optimization (same arithmetic, bit-identical weights, less
        # overhead per step, which is most of a small table's step)
        self.automatic_optimization = False

    @property
    def _vae(self) -> VAEProtocol:
        assert isinstance(self.net, VAEProtocol)
        return self.net

    def current_beta(self) -> float:
        if self.kl_warmup_epochs <= 0:
            return self.beta
        return self.beta * min(1.0, (self.current_epoch + 1) / self.kl_warmup_epochs)

    def training_loss(self, batch: Any) -> torch.Tensor:
        """Negative (beta-)ELBO per row, averaged over the rows kept by trimming: [], nats."""
        _, _, objective = single_sample_elbo(self._vae, batch, beta=self.current_beta())
        rows = batch.n_rows if isinstance(batch, TabularTensors) else len(batch)
        self._accumulate("train_elbo", float(objective.detach().mean()), rows)
        return -self._untrimmed(objective).mean()

    def _untrimmed(self, elbo: torch.Tensor) -> torch.Tensor:
        """The rows of ``elbo`` [N] left after trimming the ``trim_fraction`` lowest
        (the highest-loss rows, the likeliest outliers): [M]; all rows when trimming is
        off or N <= 4."""
        if self.trim_fraction <= 0 or elbo.numel() <= 4:
            return elbo
        keep = max(1, round(elbo.numel() * (1.0 - self.trim_fraction)))
        return torch.topk(elbo, keep).values

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """One optimizer step per batch; ``batch`` is one batch or a list of batches
        (``TabularDataModule(steps_per_item=...)``), stepped in order. Returns the last
        step's loss."""
        optimizer = self.optimizers()
        assert isinstance(optimizer, pl.core.optimizer.LightningOptimizer)
        for one in batch if isinstance(batch, list) else [batch]:
            loss = self.training_loss(one)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
        return loss.detach()

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        # Lightning's generic collection walk costs more than the copy on small batches
        if isinstance(batch, TabularTensors):
            return TabularTensors(*(t.to(device) for t in batch))
        if isinstance(batch, list) and all(isinstance(b, TabularTensors) for b in batch):
            return [TabularTensors(*(t.to(device) for t in b)) for b in batch]
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _validation_rows(
        self, batch: Any, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """ELBO (beta 1, nats) of the rows of ``batch`` that vote in model selection: [M]."""
        _, _, elbo = single_sample_elbo(self._vae, batch, beta=1.0, generator=generator)
        # robust_validation: model selection as robust as the training, the trimmed rows
        # of each validation batch do not vote
        return self._untrimmed(elbo) if self.robust_validation else elbo

    def validation_step(self, batch: TabularTensors, batch_idx: int) -> None:
        elbo = self._validation_rows(batch)
        self._accumulate("val_elbo", float(elbo.mean()), len(elbo))

    def held_out_elbo(self) -> float:
        """Mean ELBO per voting row (nats) over all ``held_out`` batches and ranks."""
        trainer = self._trainer  # None when called outside a fit (tests)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        generator = torch.Generator(device=self.device)
        was_training = self.net.training
        self.net.eval()
        with torch.no_grad():
            for i in range(rank, len(self.held_out), world):
                batch = self.held_out[i]
                generator.manual_seed(self.held_out_seed + i)
                elbo = self._validation_rows(batch, generator)
                sums[0] += elbo.sum()
                sums[1] += elbo.numel()
        self.net.train(was_training)
        if trainer is not None and world > 1:
            sums = trainer.strategy.reduce(sums, reduce_op="sum")
        return float(sums[0] / sums[1])

    def on_train_start(self) -> None:
        # onto the training device once, not at every epoch's end
        self.held_out = [self.trainer.strategy.batch_to_device(b) for b in self.held_out]

    def _select(self, value: float) -> None:
        """Keep the weights if ``value`` is the best held-out ELBO so far; stop training
        after ``patience`` epochs without one, or at once on a non-finite value."""
        if value > self._best_elbo:
            self._best_elbo, self.best_epoch, self._stale_epochs = value, self.current_epoch, 0
            self._best_state = copy.deepcopy(self.net.state_dict())
            return
        self._stale_epochs += 1
        if not math.isfinite(value) or (
            self.patience is not None and self._stale_epochs >= self.patience
        ):
            self.trainer.should_stop = True

    def on_train_end(self) -> None:
        if self._best_state is not None:
            self.net.load_state_dict(self._best_state)

    def _accumulate(self, key: str, value: float, n: int) -> None:
        s = self._epoch_sums.setdefault(key, [0.0, 0.0])
        s[0] += value * n
        s[1] += n

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._epoch_sums.pop("val_elbo", None)
            return
        s = self._epoch_sums.pop("val_elbo", None)
        if s and s[1]:
            # sync_dist: under DDP every rank sees the mean over ranks, so early stopping
            # and the kept best epoch agree across processes
            self.log("val_elbo", s[0] / s[1], prog_bar=True, sync_dist=True)

    def on_train_epoch_end(self) -> None:
        row: dict[str, float] = {"epoch": float(self.current_epoch)}
        s = self._epoch_sums.pop("train_elbo", None)
        if s and s[1]:
            row["train_elbo"] = s[0] / s[1]
            if self.log_metrics:
                self.log("train_elbo", row["train_elbo"], prog_bar=True, sync_dist=True)
        if self.held_out:
            row["val_elbo"] = self.held_out_elbo()  # already the mean over ranks
            if self.log_metrics:
                self.log("val_elbo", row["val_elbo"], prog_bar=True, sync_dist=True)
        else:
            # Lightning's validation loop ran just before this hook; its value (a float32
            # tensor, mean over ranks) is what selection compares
            val = self.trainer.callback_metrics.get("val_elbo")
            if val is not None:
                row["val_elbo"] = float(val)
        if "val_elbo" in row:
            self._select(row["val_elbo"])
        self.history.append(row)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # the fused kernel saves about a third of the optimizer's time on small CPU models
        fused = all(p.device.type == "cpu" for p in self.parameters())
        return torch.optim.AdamW(
            self.parameters(), lr=self.lr, weight_decay=self.weight_decay, fused=fused or None
        )


def quiet_trainer(**kwargs: Any) -> pl.Trainer:
    """A ``pl.Trainer(**kwargs)`` without Lightning's logger, checkpoints, model summary
    and per-batch progress bars: the detectors keep the per-epoch ``history`` and show
    :class:`EpochProgress` instead."""
    return pl.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        **kwargs,
    )


class EpochProgress(pl.Callback):
    """One progress bar over epochs with the last finished epoch's train and validation
    ELBO (nats, from the module's ``history``), instead of Lightning's per-batch bars,
    which flood logs for small tables.

    The bar moves when the next epoch starts and when training ends: Lightning calls a
    callback's ``on_train_epoch_end`` before the module's, where the epoch's row is written.
    """

    def __init__(self, max_epochs: int) -> None:
        self.max_epochs = max_epochs
        self.bar: Any = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return  # one bar per run, not per process
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.max_epochs, unit="epoch", desc="training", leave=True)

    def _show(self, pl_module: pl.LightningModule) -> None:
        rows = getattr(pl_module, "history", None)
        if self.bar is None or not rows:
            return
        self.bar.set_postfix({k: f"{v:.2f}" for k, v in rows[-1].items() if "elbo" in k})
        self.bar.update(len(rows) - self.bar.n)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._show(pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._show(pl_module)
        if self.bar is not None:
            self.bar.close()
            self.bar = None
