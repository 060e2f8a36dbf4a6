"""Importance-sampled log-likelihood (the IWAE bound) with per-feature contributions.

For a record x and K samples z_k = mu(x) + sigma(x) * eps_k from q(z|x),

    log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x)
    log p(x) ~= logsumexp_k log w_k - log K

(K = 1 is the ELBO). One fixed eps matrix [K, L] drawn from ``seed`` is shared by every
record (common random numbers), and scores of two records are compared under the same
noise. Work is chunked over rows and over samples with a running logsumexp, so memory
is bounded by rows per pass x ``sample_chunk`` decoder evaluations whatever K is.

A record's score is the same bits in any batch: every pass of a model has exactly the
same number of rows (``row_chunk``, or :func:`pass_rows` of the model; the last chunk
is padded with copies of its last row), because CPU kernels pick
their blocking and summation order from a tensor's shape: a record scored alone, in a
pass of one row, came out up to 2.5e-7 nats away from the same record in a full pass.

One exception keeps that promise while making small requests cheaper: a last chunk of
few rows may run in a shorter pass (16 rows or more, see :data:`MIN_PASS_ROWS`), but only
once that shorter pass has been seen to give the full pass's bits for the same model,
scorer, thread count and device (:func:`_short_pass_verdict`). The first such call runs
both and keeps the full pass's result if they differ; the verdict is then kept for the
model's life. Bits depend on a kernel's shapes, never on its values, so one comparison
over a pass's K x rows distinct samples decides it.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anomaly_vae.nn.base import VAEProtocol, gaussian_kl, standard_normal_log_prob

#: Most K the scorer accepts; K=5000 (the image benchmark's evaluation) fits well under it.
MAX_K = 100_000

#: An estimate resting on fewer effective importance samples than this is flagged
#: ``unreliable``: a handful of draws carry it, so it is likely too low (the bound is
#: loose) and its delta-method ``stderr``, computed from the same few weights, is not
#: to be trusted. Measured at K=64: 0.0% of held-out normal cardio rows and 0.3% of
#: satellite's fall below 5, against 3% and 26% of their outliers.
MIN_ESS = 5.0


def unreliable(ess: np.ndarray, k: int) -> np.ndarray:
    """[N] bool: effective sample size below ``MIN_ESS`` (below K / 2 when K < 10, so a
    small K is judged against what it can reach; never at K = 1, an ELBO)."""
    return np.asarray(ess) < min(MIN_ESS, k / 2.0)


@dataclass
class ScoreResult:
    """Per-record scores, all in nats. Shapes: [N] unless noted.

    Attributes:
        log_likelihood: the importance-sampled estimate of log p(x).
        stderr: Monte Carlo standard error of ``log_likelihood`` (delta method on the
            mean importance weight); NaN when K = 1.
        elbo: the mean of log w_k over the K samples (an ELBO estimate).
        kl: the analytic KL(q(z|x) || p(z)).
        contributions: [N, F] per-feature log-likelihood terms averaged under the
            normalized importance weights; they sum to the reconstruction part of
            ``log_likelihood`` and show which features made a record unlikely.
        ess: Kish's effective sample size of the importance weights,
            (sum w)^2 / sum w^2, in [1, K]: near 1 when one sample carries the estimate,
            and then ``stderr`` (computed from the same weights) is not to be trusted.
        unreliable: [N] bool, ``ess`` below :data:`MIN_ESS` (see :func:`unreliable`).
        latent_mean: [N, L] the posterior means mu(x), in the model's dtype (the encoder
            pass the samples start from; drift monitoring needs them beside the scores).
    """

    log_likelihood: np.ndarray
    stderr: np.ndarray
    elbo: np.ndarray
    kl: np.ndarray
    contributions: np.ndarray
    ess: np.ndarray
    unreliable: np.ndarray
    latent_mean: np.ndarray

    def __len__(self) -> int:
        return int(self.log_likelihood.shape[0])

    @classmethod
    def concat(cls, parts: list[ScoreResult], n_features: int) -> ScoreResult:
        if not parts:
            e = np.zeros(0)
            return cls(
                e, e, e, e, np.zeros((0, n_features)), e, np.zeros(0, dtype=bool),
                np.zeros((0, 0), dtype=np.float32),
            )  # fmt: skip
        return cls(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__)
        )


class ImportanceSampler:
    """Scores records of any :class:`~anomaly_vae.nn.base.VAEProtocol` model.

    Args:
        k: importance samples per record (1 = ELBO), 1..MAX_K.
        seed: seed of the shared eps matrix (common random numbers).
        row_chunk: records per decoder pass, always: a shorter last chunk is padded to
            it. None (the default) takes :func:`pass_rows` of the model scored: a number
            fixed by the model's shape, so a record's arithmetic is still the same in
            any batch.
        sample_chunk: samples per decoder pass; fixed (not derived from the batch) so
            that the arithmetic for a record is the same in any batch.
        kernel: ``"fused"`` (the default) or ``"reference"``, the kernel the fused one
            is tested against. Both do the same float32 arithmetic on every element;
            the fused kernel does less bookkeeping around it (see
            :meth:`_score_chunk_fused`), so its results equal the reference's to the
            float64 rounding of the sums over samples (a few 1e-15 nats).
        short_passes: let a short last chunk (a small request) run in a shorter pass
            where that is verified to give the full pass's bits (see the module's
            docstring); False pads every chunk to the full pass. Ignored with an
            explicit ``row_chunk``.
    """

    def __init__(
        self,
        k: int = 64,
        seed: int = 0,
        row_chunk: int | None = None,
        sample_chunk: int = 64,
        kernel: str = "fused",
        short_passes: bool = True,
    ) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            msg = f"k must be an integer in [1, {MAX_K}], got {k!r}"
            raise ValueError(msg)
        if (row_chunk is not None and row_chunk < 1) or sample_chunk < 1:
            msg = f"row_chunk and sample_chunk must be >= 1, got {row_chunk}, {sample_chunk}"
            raise ValueError(msg)
        if kernel not in KERNELS:
            msg = f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}"
            raise ValueError(msg)
        self.kernel = kernel
        self.k = k
        self.seed = int(seed)
        self.row_chunk = None if row_chunk is None else int(row_chunk)
        self.sample_chunk = int(sample_chunk)
        self.short_passes = bool(short_passes)
        self._eps: dict[tuple[int, torch.dtype], Tensor] = {}
        self._chunks: dict[tuple[int, torch.dtype, torch.device], list[tuple[Tensor, Tensor]]] = {}

    def rows_per_pass(self, model: object) -> int:
        """Records per decoder pass for ``model``: ``row_chunk``, or :func:`pass_rows`."""
        return self.row_chunk if self.row_chunk is not None else pass_rows(model)

    def eps(self, latent_dim: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """The shared standard-normal draws, [K, latent_dim]."""
        key = (latent_dim, dtype)
        if key not in self._eps:
            g = torch.Generator().manual_seed(self.seed)
            self._eps[key] = torch.randn(self.k, latent_dim, generator=g, dtype=torch.float64).to(
                dtype
            )
        return self._eps[key]

    def score(
        self,
        model: VAEProtocol,
        batch: Any,
        n: int,
        *,
        index: Callable[[Any, slice], Any] | None = None,
        progress: Callable[[int], object] | None = None,
        contributions: bool = True,
    ) -> ScoreResult:
        """Score ``n`` records held in ``batch``.

        Args:
            model: the VAE (put in eval mode for the call).
            batch: the model's input for all n records (a tensor or a NamedTuple of them).
            n: number of records.
            index: how to take rows ``slice`` of ``batch``; default ``batch[slice]`` for a
                tensor, or ``batch.rows(slice)``.
            progress: called with the number of records finished after each chunk.
            contributions: compute per-feature contributions; without them the result's
                ``contributions`` is [N, 0] and scoring is cheaper.
        """
        take = index or _default_index
        was_training = getattr(model, "training", False)
        if isinstance(model, torch.nn.Module):
            model.eval()
        parts: list[ScoreResult] = []
        n_features = 0
        kernel = self._kernel()
        per_pass = self.rows_per_pass(model)
        device = model_device(model)
        try:
            with torch.inference_mode():
                for start in range(0, n, per_pass):
                    sl = slice(start, min(n, start + per_pass))
                    rows = sl.stop - sl.start
                    short = self._short_pass(rows, per_pass)
                    if short < per_pass:
                        res = self._score_short(model, take(batch, sl), short, per_pass, device,
                                                contributions)  # fmt: skip
                    else:
                        chunk = to_device(_pad_rows(take(batch, sl), per_pass - rows), device)
                        res = kernel(model, chunk, contributions)
                    if rows < per_pass:
                        res = ScoreResult(*(getattr(res, f)[:rows] for f in _FIELDS))
                    n_features = res.contributions.shape[1]
                    parts.append(res)
                    if progress is not None:
                        progress(sl.stop - sl.start)
        finally:
            if isinstance(model, torch.nn.Module) and was_training:
                model.train()
        return ScoreResult.concat(parts, n_features)

    def _kernel(self) -> Callable[[VAEProtocol, Any, bool], ScoreResult]:
        """The pass function of ``kernel``: the reference or the fused one."""
        return self._score_chunk if self.kernel == "reference" else self._score_chunk_fused

    def _short_pass(self, rows: int, per_pass: int) -> int:
        """Rows of the pass for a chunk of ``rows`` records: ``per_pass``, or for a short
        last chunk the smallest ``MIN_PASS_ROWS`` times a power of two that holds it.
        An explicit ``row_chunk`` is kept always, as documented."""
        if self.row_chunk is not None or not self.short_passes or rows >= per_pass:
            return per_pass
        short = MIN_PASS_ROWS
        while short < rows:
            short *= 2
        return min(short, per_pass)

    def _score_short(
        self,
        model: VAEProtocol,
        rows: Any,
        short: int,
        per_pass: int,
        device: torch.device,
        with_contrib: bool,
    ) -> ScoreResult:
        """Score ``rows`` (fewer than ``short``) in a pass of ``short`` rows where that
        has been seen to give the bits of a ``per_pass``-row pass; otherwise in the full
        pass. The first call for a setting runs both and records the verdict."""
        kernel = self._kernel()
        n = _n_rows(rows)
        key = (short, per_pass, self.k, self.sample_chunk, self.kernel, with_contrib,
               torch.get_num_threads(), str(device))  # fmt: skip
        verdict = _short_pass_verdict(model, key)
        if verdict:
            return kernel(model, to_device(_pad_rows(rows, short - n), device), with_contrib)
        full = kernel(model, to_device(_pad_rows(rows, per_pass - n), device), with_contrib)
        if verdict is None:
            got = kernel(model, to_device(_pad_rows(rows, short - n), device), with_contrib)
            _record_short_pass(model, key, _same_bits(got, full, short))
        return full

    def _sample_chunks(
        self, latent_dim: int, dtype: torch.dtype, device: torch.device
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Each sample chunk of eps with its log N(eps; 0, I), [s, L] and [s], on
        ``device``, after this thread's yield point (see :func:`yield_point`)."""
        pause = getattr(_YIELD, "hook", None)
        for chunk in self._eps_chunks(latent_dim, dtype, device):
            if pause is not None:
                pause()
            yield chunk

    def _score_chunk(self, model: VAEProtocol, batch: Any, with_contrib: bool) -> ScoreResult:
        mu, logvar = model.encode(batch)  # [n, L]
        std = (0.5 * logvar).exp()
        n = mu.shape[0]
        f64 = torch.float64
        run_max = torch.full((n,), -math.inf, dtype=f64, device=mu.device)
        sum_w = torch.zeros(n, dtype=f64, device=mu.device)  # sum exp(log w - run_max)
        sum_w2 = torch.zeros(n, dtype=f64, device=mu.device)
        sum_logw = torch.zeros(n, dtype=f64, device=mu.device)
        contrib: Tensor | None = None
        for e, _ in self._sample_chunks(model.latent_dim, mu.dtype, mu.device):
            z = mu.unsqueeze(0) + std.unsqueeze(0) * e.unsqueeze(1)  # [s, n, L]
            log_q = standard_normal_log_prob(e).unsqueeze(1) - (0.5 * logvar).sum(-1)  # [s, n]
            feat = model.feature_log_prob(z, batch)  # [s, n, F]
            # the sum over features in the model's dtype; only [s, n] goes to float64
            log_w = (feat.sum(-1) + standard_normal_log_prob(z) - log_q).to(f64)
            sum_logw += log_w.sum(0)
            new_max = torch.maximum(run_max, log_w.max(0).values)
            # rescale what was summed under the old maximum; exp(-inf) = 0 on the first chunk
            shift = torch.where(torch.isfinite(run_max), (run_max - new_max).exp(), 0.0)
            w = (log_w - new_max).exp()  # [s, n]
            sum_w = sum_w * shift + w.sum(0)
            sum_w2 = sum_w2 * shift.pow(2) + w.pow(2).sum(0)
            if with_contrib:
                wf = (w.unsqueeze(-1) * feat.to(f64)).sum(0)
                contrib = wf if contrib is None else contrib * shift.unsqueeze(-1) + wf
            run_max = new_max
        return self._finish(mu, logvar, run_max, sum_w, sum_w2, sum_logw, contrib)

    def _eps_chunks(
        self, latent_dim: int, dtype: torch.dtype, device: torch.device
    ) -> list[tuple[Tensor, Tensor]]:
        """The eps matrix's sample chunks with log N(eps; 0, I) of each, [s, L] and [s],
        on ``device``: they depend on no record, so they are computed once per sampler
        and device, by the same operations the reference kernel repeats on every pass.
        The draws are made on the CPU whatever the device, so every device scores under
        the same noise."""
        key = (latent_dim, dtype, device)
        if key not in self._chunks:
            eps = self.eps(latent_dim, dtype).to(device)
            self._chunks[key] = [
                (e, standard_normal_log_prob(e))
                for e in (
                    eps[s : s + self.sample_chunk] for s in range(0, self.k, self.sample_chunk)
                )
            ]
        return self._chunks[key]

    def _score_chunk_fused(self, model: VAEProtocol, batch: Any, with_contrib: bool) -> ScoreResult:
        """:meth:`_score_chunk` with less bookkeeping and the same arithmetic.

        Every float32 operation on the decoder's terms is the reference's, in its order,
        so log w is the same bits. What changes: the per-chunk constants (log N(eps))
        come from a cache; ``0.5 * logvar`` is computed once for the scale and for
        log q; and when one sample chunk holds all K samples (K <= ``sample_chunk``,
        the default K), the running-maximum rescaling is skipped, which leaves the same
        sums (the reference multiplies zeros by zero there), so only the running
        log-sum-exp over several chunks can differ, by float64 rounding.
        """
        mu, logvar = model.encode(batch)  # [n, L]
        half = 0.5 * logvar
        std = half.exp()
        half_sum = half.sum(-1)  # [n]
        n = mu.shape[0]
        f64 = torch.float64
        run_max: Tensor | None = None
        sum_w = sum_w2 = sum_logw = torch.zeros(n, dtype=f64, device=mu.device)
        contrib: Tensor | None = None
        for e, log_pe in self._sample_chunks(model.latent_dim, mu.dtype, mu.device):
            z = mu.unsqueeze(0) + std.unsqueeze(0) * e.unsqueeze(1)  # [s, n, L]
            log_q = log_pe.unsqueeze(1) - half_sum  # [s, n]
            feat = model.feature_log_prob(z, batch)  # [s, n, F]
            log_w = (feat.sum(-1) + standard_normal_log_prob(z) - log_q).to(f64)
            top = log_w.max(0).values
            if run_max is None:  # the first chunk: nothing summed yet to rescale
                w = log_w.sub(top).exp_()
                sum_logw, sum_w, sum_w2 = log_w.sum(0), w.sum(0), w.pow(2).sum(0)
                if with_contrib:
                    contrib = (w.unsqueeze(-1) * feat.to(f64)).sum(0)
                run_max = top
                continue
            new_max = torch.maximum(run_max, top)
            shift = (run_max - new_max).exp()
            w = log_w.sub(new_max).exp_()
            sum_logw = sum_logw + log_w.sum(0)
            sum_w = sum_w * shift + w.sum(0)
            sum_w2 = sum_w2 * shift.pow(2) + w.pow(2).sum(0)
            if with_contrib:
                assert contrib is not None
                contrib = contrib * shift.unsqueeze(-1) + (w.unsqueeze(-1) * feat.to(f64)).sum(0)
            run_max = new_max
        assert run_max is not None
        return self._finish(mu, logvar, run_max, sum_w, sum_w2, sum_logw, contrib)

    def _finish(
        self,
        mu: Tensor,
        logvar: Tensor,
        run_max: Tensor,
        sum_w: Tensor,
        sum_w2: Tensor,
        sum_logw: Tensor,
        contrib: Tensor | None,
    ) -> ScoreResult:
        """The scores of one pass from its running sums (both kernels)."""
        n = mu.shape[0]
        f64 = torch.float64
        k = self.k
        log_lik = run_max + sum_w.log() - math.log(k)
        if k > 1:
            mean_w = sum_w / k
            var_w = ((sum_w2 - sum_w.pow(2) / k) / (k - 1)).clamp(min=0.0)
            stderr = (var_w / k).sqrt() / mean_w
        else:
            stderr = torch.full((n,), math.nan, dtype=f64, device=mu.device)
        ess = to_numpy(sum_w.pow(2) / sum_w2)
        if contrib is None:
            contributions = torch.zeros(n, 0, dtype=f64, device=mu.device)
        else:
            contributions = contrib / sum_w.unsqueeze(-1)
        return ScoreResult(
            log_likelihood=to_numpy(log_lik),
            stderr=to_numpy(stderr),
            elbo=to_numpy(sum_logw / k),
            kl=to_numpy(gaussian_kl(mu, logvar).to(f64)),
            contributions=to_numpy(contributions),
            # the ratio is unchanged by the running maximum both sums are scaled by
            ess=ess,
            unreliable=unreliable(ess, k),
            latent_mean=to_numpy(mu),
        )


#: Importance-sample counts :func:`choose_k` picks from, fewest first; the last is the
#: count the others are judged against (the scorer's K before it was sized).
AUTO_K = (8, 16, 32, 64)
#: :func:`choose_k` takes a K whose estimates fall short of the largest candidate's by at
#: most this much on average over the held-out rows, in nats (a likelihood ratio of
#: 1.05). The mean estimate at K = 64 of InternetAds, musk, optdigits and mnist ranged
#: over 0.4-1.0 nats across four eps seeds; those tables kept 64 in all their ADBench fits.
AUTO_K_MAX_GAP = 0.05
#: ... and which flags at most this share of those rows ``unreliable`` beyond what the
#: largest candidate flags (one record in a hundred).
AUTO_K_MAX_UNRELIABLE = 0.01
#: Most held-out rows :func:`choose_k` scores: enough to resolve a share of 0.01; at
#: 8 + 16 + 32 + 64 samples each, the cost of scoring 3,750 rows at K = 64 once.
AUTO_K_ROWS = 2000


@dataclass(frozen=True)
class KChoice:
    """What :func:`choose_k` measured and chose.

    Attributes:
        k: the chosen importance-sample count.
        rows: held-out rows scored.
        gap: by candidate K, the mean over the rows of log p(x) at the largest candidate
            minus log p(x) at K, in nats (the bound tightens with K in expectation; with
            the shared eps of one seed a smaller K can come out above).
        unreliable: by candidate K, the share of the rows flagged ``unreliable``.
    """

    k: int
    rows: int
    gap: dict[int, float]
    unreliable: dict[int, float]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (string keys)."""
        return {
            "k": self.k,
            "rows": self.rows,
            "gap_nats": {str(k): v for k, v in self.gap.items()},
            "unreliable_share": {str(k): v for k, v in self.unreliable.items()},
        }


def choose_k(
    model: VAEProtocol,
    batch: Any,
    n: int,
    *,
    seed: int = 0,
    candidates: tuple[int, ...] = AUTO_K,
    index: Callable[[Any, slice], Any] | None = None,
) -> KChoice:
    """The fewest importance samples whose estimates are as good as the most's.

    Scores the first ``min(n, AUTO_K_ROWS)`` records of ``batch`` (held-out rows, never
    the training rows) at every candidate K with the scorer's shared eps of ``seed``, and
    returns the smallest K whose mean shortfall against the largest candidate is at most
    :data:`AUTO_K_MAX_GAP` nats and whose ``unreliable`` share exceeds the largest's by at
    most :data:`AUTO_K_MAX_UNRELIABLE`; the largest candidate if none does. Deterministic
    for a model, rows and seed: nothing is timed.

    Why: detection on the ADBench tables does not rest on K between 8 and 64
    (benchmarks/RESULTS.md, the K ablation), while scoring time is nearly proportional
    to K. A model whose posterior q(z|x) is a good proposal gets the same estimate from
    8 samples as from 64; one whose posterior is poor (wide tables of ordinal or binary
    columns) needs them all, and keeps them.
    """
    if not candidates or sorted(set(candidates)) != list(candidates):
        msg = f"candidates must be distinct and increasing, got {candidates!r}"
        raise ValueError(msg)
    m = min(n, AUTO_K_ROWS)
    if m < 1:
        msg = "choose_k needs at least one held-out row"
        raise ValueError(msg)
    rows = (index or _default_index)(batch, slice(0, m))
    results = {
        k: ImportanceSampler(k=k, seed=seed).score(model, rows, m, contributions=False)
        for k in candidates
    }
    top = results[candidates[-1]]
    gap = {k: float(np.mean(top.log_likelihood - r.log_likelihood)) for k, r in results.items()}
    flagged = {k: int(np.count_nonzero(r.unreliable)) for k, r in results.items()}
    chosen = next(
        k
        for k in candidates
        if k == candidates[-1]
        or (
            gap[k] <= AUTO_K_MAX_GAP
            # counted, not as shares: no rounding at the boundary
            and flagged[k] - flagged[candidates[-1]] <= AUTO_K_MAX_UNRELIABLE * m
        )
    )
    share = {k: c / m for k, c in flagged.items()}
    return KChoice(k=chosen, rows=m, gap=gap, unreliable=share)


#: Rows of every pass of a model whose decoder has ``PASS_OUTPUTS`` or more outputs per
#: sample (see :func:`pass_rows`).
BASE_PASS_ROWS = 64
#: A narrower decoder gets passes of up to ``MAX_PASS_ROWS`` rows, so a pass holds about
#: ``BASE_PASS_ROWS * PASS_OUTPUTS`` outputs per sample.
PASS_OUTPUTS = 64
MAX_PASS_ROWS = 256


def pass_rows(model: object) -> int:
    """Records per decoder pass for ``model``, from its decoder's output width alone.

    A narrow decoder's pass does little arithmetic per operation, so fixed costs per
    operation (dispatch, allocation, threads) dominate it: more rows per pass amortize
    them. A pass's rows are fixed per model, so a record is scored by the same
    arithmetic in any batch; a one-record request pays one padded pass. 64 rows
    (``BASE_PASS_ROWS``) times a power of two up to ``MAX_PASS_ROWS``: the largest
    with at most about ``BASE_PASS_ROWS * PASS_OUTPUTS`` decoder outputs per sample.
    A model without a readable decoder width gets ``BASE_PASS_ROWS``.
    """
    decoder = getattr(model, "decoder", None)
    last = decoder[-1] if isinstance(decoder, torch.nn.Sequential) and len(decoder) else None
    outputs = getattr(last, "out_features", None)
    if not isinstance(outputs, int) or outputs < 1:
        return BASE_PASS_ROWS
    rows = BASE_PASS_ROWS
    while rows * 2 <= MAX_PASS_ROWS and rows * 2 * outputs <= BASE_PASS_ROWS * PASS_OUTPUTS:
        rows *= 2
    return rows


#: Fewest rows of a shorter pass for a small request. On the CPUs measured, passes of
#: 16, 32 and 128 rows gave a 64-row pass's bits at 1 and 2 threads, and one WDBC record
#: cost 0.72 ms in a 16-row pass against 1.18 ms in a 64-row one; passes of 4-8 rows
#: differed by 1.8e-15 nats and of 1-2 rows by up to 5.6e-6, so they are never tried.
MIN_PASS_ROWS = 16
#: Per model (held weakly, so a dropped model takes its entries with it): whether a
#: shorter pass gave the full pass's bits, by (short rows, full rows, K, sample chunk,
#: kernel, contributions, threads, device).
_SHORT_PASS_OK: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], bool]] = (
    weakref.WeakKeyDictionary()
)
_SHORT_PASS_LOCK = threading.Lock()


def _short_pass_verdict(model: object, key: tuple[Any, ...]) -> bool | None:
    """The recorded verdict for ``model`` and ``key``; None if not yet seen. A model
    that cannot be held weakly is never verified (False): it keeps the full pass."""
    with _SHORT_PASS_LOCK:
        try:
            return _SHORT_PASS_OK.get(model, {}).get(key)
        except TypeError:
            return False


def _record_short_pass(model: object, key: tuple[Any, ...], same: bool) -> None:
    with _SHORT_PASS_LOCK, contextlib.suppress(TypeError):
        _SHORT_PASS_OK.setdefault(model, {})[key] = same


def _same_bits(got: ScoreResult, want: ScoreResult, rows: int) -> bool:
    """Whether the first ``rows`` rows of two results are the same bits in every field
    (NaN and signed zeros included)."""
    return all(
        np.ascontiguousarray(getattr(got, f)[:rows]).tobytes()
        == np.ascontiguousarray(getattr(want, f)[:rows]).tobytes()
        for f in _FIELDS
    )


def _n_rows(chunk: Any) -> int:
    """Rows of a tensor or of a NamedTuple of tensors (rows first)."""
    return int(chunk.shape[0]) if isinstance(chunk, Tensor) else int(chunk[0].shape[0])


#: The scoring kernels: the fused default and the reference it is tested against.
KERNELS = ("fused", "reference")
_FIELDS = tuple(ScoreResult.__dataclass_fields__)
_YIELD = threading.local()


@contextlib.contextmanager
def yield_point(hook: Callable[[], None]) -> Iterator[None]:
    """Call ``hook`` before every sample chunk of every scoring pass this thread runs
    inside the block: a point where long scoring can wait for other work (the service
    parks a costly request there while cheap ones are scored) or stop (an exception
    from ``hook`` ends the scoring). The arithmetic is not changed by waiting."""
    previous = getattr(_YIELD, "hook", None)
    _YIELD.hook = hook
    try:
        yield
    finally:
        _YIELD.hook = previous


def _pad_rows(chunk: Any, pad: int) -> Any:
    """``chunk`` (a tensor or a NamedTuple of tensors, rows first) with its last row
    repeated ``pad`` more times: every pass then has the same shape, and a kernel's
    arithmetic for a row (its blocking, its summation order) does not depend on how many
    rows came with it."""
    if pad <= 0:
        return chunk
    if isinstance(chunk, Tensor):
        return torch.cat([chunk, chunk[-1:].expand(pad, *chunk.shape[1:])])
    return type(chunk)(*(_pad_rows(t, pad) for t in chunk))


def model_device(model: object) -> torch.device:
    """The device ``model``'s parameters are on (the CPU for a model without any): the
    scorer computes there, so scoring on a GPU is ``detector.to("cuda")``."""
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


def to_device(chunk: Any, device: torch.device) -> Any:
    """``chunk`` (a tensor or a NamedTuple of tensors) on ``device``; as it is when it
    is there already (no copy on the CPU)."""
    if isinstance(chunk, Tensor):
        return chunk if chunk.device == device else chunk.to(device)
    return type(chunk)(*(to_device(t, device) for t in chunk))


def to_numpy(t: Tensor) -> np.ndarray:
    """A result tensor as numpy; copied to the host only from another device."""
    return (t if t.device.type == "cpu" else t.cpu()).numpy()


def _default_index(batch: Any, sl: slice) -> Any:
    if isinstance(batch, Tensor):
        return batch[sl]
    return batch.rows(sl)
