"""The tabular VAE: an MLP encoder and a decoder with one likelihood per column kind.

Numeric columns get a Student-t (or Gaussian) with a learned, per-record location and
scale; categorical columns a categorical distribution over the training categories plus an
"unknown" slot; discrete columns (integer levels) either the same or an ordinal
likelihood, a logistic with learned location and scale binned at the levels (and the
level's position, not a one-hot vector, as the encoder's input); boolean
columns a Bernoulli. Missing features (mask False) contribute 0 nats: they are
marginalized out of the likelihood, which a factorized decoder allows exactly.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from anomaly_vae.nn.base import LOG_2PI, mlp

#: Lower bound of an ordinal column's logistic scale, in units of half the column's level
#: range: keeps the bin probabilities' gradients finite; a bin's probability is at most 1
#: whatever the scale, so this is no noise floor.
ORDINAL_MIN_SCALE = 1e-3
#: Stands in for the infinite outer edges of an ordinal column's first and last bins (in
#: the same units): finite, so no 0 * inf reaches a gradient.
_EDGE = 1e4


def log_sigmoid_diff(a: Tensor, b: Tensor) -> Tensor:
    """log(sigmoid(b) - sigmoid(a)) for a < b, elementwise: the log-probability a logistic
    puts between a and b (standardized). Stable in both tails (mirrored where the bin lies
    right of the centre) and for narrow bins (expm1)."""
    flip = (a + b) > 0
    a, b = torch.where(flip, -b, a), torch.where(flip, -a, b)
    la, lb = F.logsigmoid(a), F.logsigmoid(b)
    return lb + torch.log(-torch.expm1((la - lb).clamp(max=-1e-12)))


class TabularTensors(NamedTuple):
    """N records in model space; see ``anomaly_vae.data.preprocessing.TabularArrays``.

    num [N, n_num] float, num_mask [N, n_num] bool, cat [N, n_cat] long (-1 missing),
    bin [N, n_bin] float, bin_mask [N, n_bin] bool.

    A NamedTuple, so ``len()`` counts its five fields, as ``_replace`` and ``_make``
    require; :attr:`n_rows` counts the records.
    """

    num: Tensor
    num_mask: Tensor
    cat: Tensor
    bin: Tensor
    bin_mask: Tensor

    @classmethod
    def from_arrays(cls, arrays: object) -> TabularTensors:
        """From a ``TabularArrays`` (or anything with the same attributes)."""
        return cls(
            torch.from_numpy(np.ascontiguousarray(arrays.num)),  # type: ignore[attr-defined]
            torch.from_numpy(np.ascontiguousarray(arrays.num_mask)),  # type: ignore[attr-defined]
            torch.from_numpy(np.ascontiguousarray(arrays.cat)),  # type: ignore[attr-defined]
            torch.from_numpy(np.ascontiguousarray(arrays.bin)),  # type: ignore[attr-defined]
            torch.from_numpy(np.ascontiguousarray(arrays.bin_mask)),  # type: ignore[attr-defined]
        )

    def rows(self, idx: Tensor | slice) -> TabularTensors:
        return TabularTensors(*(t[idx] for t in self))

    @property
    def n_rows(self) -> int:
        """N, the records held."""
        return int(self.num.shape[0])


class TabularVAE(torch.nn.Module):
    """VAE over mixed-type rows.

    Args:
        n_numeric: number of numeric columns.
        category_counts: for each categorical column, the number of training categories
            (the decoder adds one "unknown" slot to each).
        n_boolean: number of boolean columns.
        latent_dim: size of z.
        hidden: widths of the encoder's hidden layers; the decoder mirrors them.
        log_scale: [n_numeric] log of the preprocessing scale of each numeric column,
            so that numeric log-likelihoods are densities in the columns' own units.
        min_sigma: floor of the decoder's scale in standardized units.
        student_df: None for a Gaussian numeric likelihood; a number for a Student-t
            with that many degrees of freedom (and the decoder's location and scale). Its
            tails are polynomial, so one column far off (a rare value in a nearly
            constant column) costs O(log r) nats instead of O(r^2) and cannot outvote
            every other column of the record.
        ordinal_levels: for each categorical column, None (a categorical likelihood over
            its categories) or its levels, ascending numbers (a discrete column's values):
            an ordinal likelihood, the probability a logistic with a learned location and
            scale puts on each level's bin (the bins meet halfway between levels; the
            outer ones are open). Two decoder outputs per column instead of one per
            level, and the encoder reads the level's position instead of a one-hot
            vector, so neighbouring levels share strength. Needs ``unknown_log_prob``.
        unknown_log_prob: the log-probability of a categorical column's "unknown" slot
            (a category never seen in training), fixed rather than learned, the known
            categories sharing the rest; None learns it like the others. Training never
            shows the unknown slot, so a learned one only sinks as fast as softmax
            gradients push it (about -2 nats after a short fit): too probable for a value
            nobody has seen. The detector fixes it at log 1/(n_train + 2) (Laplace's rule
            of succession).
    """

    log_scale: Tensor

    def __init__(
        self,
        n_numeric: int,
        category_counts: list[int],
        n_boolean: int,
        latent_dim: int,
        hidden: list[int],
        log_scale: list[float] | None = None,
        min_sigma: float = 1e-2,
        student_df: float | None = None,
        unknown_log_prob: float | None = None,
        ordinal_levels: list[list[float] | None] | None = None,
    ) -> None:
        super().__init__()
        if unknown_log_prob is not None and not unknown_log_prob < 0:
            msg = f"unknown_log_prob must be < 0 or None, got {unknown_log_prob!r}"
            raise ValueError(msg)
        self.unknown_log_prob = None if unknown_log_prob is None else float(unknown_log_prob)
        if student_df is not None and not student_df > 0:
            msg = f"student_df must be > 0 or None, got {student_df!r}"
            raise ValueError(msg)
        self.student_df = None if student_df is None else float(student_df)
        self.n_numeric = n_numeric
        self.category_counts = list(category_counts)
        self.n_boolean = n_boolean
        self.latent_dim = latent_dim
        self.hidden = list(hidden)
        self.min_sigma = min_sigma
        self.cat_sizes = [c + 1 for c in self.category_counts]  # + unknown slot
        self.n_features = n_numeric + len(self.cat_sizes) + n_boolean
        if self.n_features == 0:
            msg = "a TabularVAE needs at least one column"
            raise ValueError(msg)
        self.ordinal_levels = self._check_ordinal(ordinal_levels)
        ordinal = [j for j, lv in enumerate(self.ordinal_levels) if lv is not None]
        nominal = [j for j, lv in enumerate(self.ordinal_levels) if lv is None]
        self._ordinal_cols, self._nominal_cols = ordinal, nominal
        self._ordinal_idx = torch.tensor(ordinal, dtype=torch.long)
        self._nominal_idx = torch.tensor(nominal, dtype=torch.long)
        # the decoder's categorical logits cover the nominal columns only
        nominal_sizes = [self.cat_sizes[j] for j in nominal]
        # columns in (nominal, ordinal) order -> schema order
        self._cat_order = torch.argsort(torch.tensor(nominal + ordinal, dtype=torch.long))
        # the encoder sees nominal columns one-hot, ordinal ones as their level's position
        self.input_dim = n_numeric + sum(nominal_sizes) + len(ordinal) + n_boolean
        out_dim = 2 * n_numeric + sum(nominal_sizes) + 2 * len(ordinal) + n_boolean
        self.encoder = mlp([self.input_dim, *hidden, 2 * latent_dim])
        self.decoder = mlp([latent_dim, *reversed(hidden), out_dim])
        ls = torch.zeros(n_numeric) if log_scale is None else torch.tensor(log_scale)
        self.register_buffer("log_scale", ls.to(torch.float32))
        self._init_nominal_layout(nominal_sizes, [self.category_counts[j] for j in nominal])
        self._init_ordinal_layout([lv for lv in self.ordinal_levels if lv is not None])

    def _check_ordinal(
        self, ordinal_levels: list[list[float] | None] | None
    ) -> list[list[float] | None]:
        """Validated copy of ``ordinal_levels`` (all None when not given)."""
        if ordinal_levels is None:
            return [None] * len(self.category_counts)
        if len(ordinal_levels) != len(self.category_counts):
            msg = (
                f"ordinal_levels has {len(ordinal_levels)} entries for "
                f"{len(self.category_counts)} categorical columns"
            )
            raise ValueError(msg)
        out: list[list[float] | None] = []
        for j, (levels, count) in enumerate(zip(ordinal_levels, self.category_counts, strict=True)):
            if levels is None:
                out.append(None)
                continue
            lv = [float(v) for v in levels]
            if len(lv) != count or not all(math.isfinite(v) for v in lv):
                msg = f"ordinal_levels[{j}] must be {count} finite numbers, got {levels!r}"
                raise ValueError(msg)
            if any(b <= a for a, b in itertools.pairwise(lv)):
                msg = f"ordinal_levels[{j}] must be strictly ascending, got {levels!r}"
                raise ValueError(msg)
            out.append(lv)
        if any(lv is not None for lv in out) and self.unknown_log_prob is None:
            msg = "ordinal columns need a fixed unknown_log_prob"
            raise ValueError(msg)
        return out

    def _init_nominal_layout(self, sizes: list[int], counts: list[int]) -> None:
        """Index tensors over the nominal columns' logits and one-hot encoder inputs
        (``sizes`` include the unknown slot); derived from the config, so not buffers."""
        offsets = np.cumsum([0, *sizes]).tolist()
        self._nom_offsets: list[int] = [int(o) for o in offsets]
        # Categorical columns are scored together as one padded [.., n_cat, max_size]
        # block (a few kernels instead of a few per column: 64 discrete columns made the
        # per-column loop dominate training), unless padding would more than double the
        # work (a few very wide columns among narrow ones), where the loop is cheaper.
        total = self._nom_offsets[-1]
        width = max(sizes, default=0)
        self._padded = bool(sizes) and len(sizes) * width <= 2 * total
        pad = torch.full((len(sizes), width), total, dtype=torch.long)
        for j, (a, size) in enumerate(zip(self._nom_offsets, sizes, strict=False)):
            pad[j, :size] = torch.arange(a, a + size)
        self._pad_index = pad.flatten()
        self._nom_start = torch.tensor(self._nom_offsets[:-1], dtype=torch.long)
        self._segment = torch.repeat_interleave(
            torch.arange(len(sizes)), torch.tensor(sizes, dtype=torch.long)
        )  # the nominal column of each logit
        self._unknown_slot = torch.tensor(counts, dtype=torch.long)
        self._unknown_pos = torch.tensor(self._nom_offsets[1:], dtype=torch.long) - 1

    def _init_ordinal_layout(self, levels: list[list[float]]) -> None:
        """The ordinal columns' levels in units of half each column's level range around
        its midpoint (so in [-1, 1]): ``_ord_position`` [n_ord, width + 1] (width = most
        levels; 0 past a column's last level, which the unknown slot reads), and the
        bins' edges ``_ord_lower``/``_ord_upper`` [n_ord, width] (padding bins empty);
        ``_ord_counts`` [n_ord]."""
        width = max((len(lv) for lv in levels), default=0)
        position = torch.zeros((len(levels), width + 1))
        lower = torch.full((len(levels), width), _EDGE)
        upper = torch.full((len(levels), width), _EDGE)
        for j, lv in enumerate(levels):
            v = torch.tensor(lv, dtype=torch.float64)
            half = (v[-1] - v[0]) / 2 if len(lv) > 1 else torch.tensor(1.0, dtype=v.dtype)
            u = (v - (v[0] + v[-1]) / 2) / half
            mid = (u[1:] + u[:-1]) / 2
            position[j, : len(lv)] = u.float()
            lower[j, : len(lv)] = torch.cat([torch.tensor([-_EDGE], dtype=v.dtype), mid]).float()
            upper[j, : len(lv)] = torch.cat([mid, torch.tensor([_EDGE], dtype=v.dtype)]).float()
        self._ord_position, self._ord_lower, self._ord_upper = position, lower, upper
        self._ord_counts = torch.tensor([len(lv) for lv in levels], dtype=torch.long)

    # ------------------------------------------------------------------ encoder
    def encoder_input(self, batch: TabularTensors) -> Tensor:
        """[N, input_dim]: standardized numerics (0 where missing), one-hot nominal
        categories (all zero where missing), each ordinal column's level position in
        [-1, 1] (0, the middle, where missing or unknown), booleans (0 where missing).

        Ordinal columns enter as one number rather than one-hot, so the encoder too sees
        neighbouring levels as near (the categorical-levels ablation in
        benchmarks/RESULTS.md measures what that buys).
        """
        parts = [batch.num.to(self.log_scale.dtype)]
        idx = batch.cat
        if self._nominal_cols:
            nominal = (
                idx
                if not self._ordinal_cols
                else idx.index_select(1, self._nominal_idx.to(idx.device))
            )
            total = self._nom_offsets[-1]
            # one scatter for every column: slot offset + category, or a spare last
            # column (dropped) where the value is missing
            pos = torch.where(nominal >= 0, nominal + self._nom_start.to(idx.device), total)
            onehot = parts[0].new_zeros(idx.shape[0], total + 1).scatter_(1, pos, 1.0)
            parts.append(onehot[:, :total])
        if self._ordinal_cols:
            ordinal = idx.index_select(1, self._ordinal_idx.to(idx.device))
            table = self._ord_position.to(idx.device, parts[0].dtype)
            width = table.shape[1]
            # missing (-1) reads the spare last position, 0; so does the unknown slot
            where = torch.where(ordinal >= 0, ordinal, width - 1)
            where = where + torch.arange(ordinal.shape[1], device=idx.device) * width
            parts.append(table.flatten()[where])
        parts.append(batch.bin.to(parts[0].dtype))
        return torch.cat(parts, dim=-1)

    def encode(self, batch: TabularTensors) -> tuple[Tensor, Tensor]:
        """q(z|x): (mu, logvar), each [N, latent_dim]; logvar is clamped to [-12, 8]."""
        h = self.encoder(self.encoder_input(batch))
        mu, logvar = h.chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)

    # ------------------------------------------------------------------ decoder
    def _heads(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Decoder outputs for z [..., L]: numeric mean and sigma [..., n_num], the nominal
        categorical columns' logits side by side [..., sum of their sizes], the ordinal
        columns' logistic locations then raw scales [..., 2 * n_ord], boolean logits
        [..., n_bin].

        The last layer runs once per head on row blocks of its weight, so each head is a
        contiguous tensor: elementwise kernels on strided column slices of one wide output
        were 4x slower (softplus alone was a fifth of scoring time).
        """
        h = self.decoder[:-1](z)
        last = self.decoder[-1]
        assert isinstance(last, torch.nn.Linear)
        w, b = last.weight, last.bias
        n = self.n_numeric
        mean = F.linear(h, w[:n], b[:n])
        sigma = F.softplus(F.linear(h, w[n : 2 * n], b[n : 2 * n])) + self.min_sigma
        base = 2 * n
        ords = base + self._nom_offsets[-1]
        tail = ords + 2 * len(self._ordinal_cols)
        cat_logits = F.linear(h, w[base:ords], b[base:ords])
        ord_params = F.linear(h, w[ords:tail], b[ords:tail])
        bin_logits = F.linear(h, w[tail:], b[tail:])
        return mean, sigma, cat_logits, ord_params, bin_logits

    def _split(self, cat_logits: Tensor) -> list[Tensor]:
        """[..., sum of nominal sizes] -> one [..., size] logits view per nominal column."""
        return [
            cat_logits[..., a:c]
            for a, c in zip(self._nom_offsets[:-1], self._nom_offsets[1:], strict=True)
        ]

    def _categorical_log_prob_inference(self, idx: Tensor, cat_logits: Tensor) -> Tensor | None:
        """Scoring's [..., N, n_nominal] log-probabilities without a padded copy: the chosen
        logit minus each column's logsumexp, the sums taken as one segment sum of
        exp(logit - row max). None when a whole column
        underflows under the row's maximum (the caller then takes the exact path)."""
        start = self._nom_start.to(idx.device)
        where = (idx.clamp(min=0) + start).expand(*cat_logits.shape[:-2], *idx.shape)
        chosen = cat_logits.gather(-1, where)
        top = cat_logits.amax(-1, keepdim=True)
        e = (cat_logits - top).exp_()
        segment = self._segment.to(idx.device)
        sums = e.new_zeros(*e.shape[:-1], len(self._nominal_cols)).index_add_(-1, segment, e)
        if bool((sums < 1e-30).any()):
            return None
        return chosen.sub_(top).sub_(sums.log_())

    def _categorical_log_prob(
        self, batch: TabularTensors, cat_logits: Tensor, ord_params: Tensor
    ) -> Tensor:
        """[..., N, n_cat] log-probability of each observed category (or level); 0 where
        missing. Columns in schema order, nominal and ordinal alike."""
        if not self._ordinal_cols:
            return self._nominal_log_prob(batch.cat, cat_logits)
        dev = batch.cat.device
        parts = []
        if self._nominal_cols:
            nominal = batch.cat.index_select(1, self._nominal_idx.to(dev))
            parts.append(self._nominal_log_prob(nominal, cat_logits))
        ordinal = batch.cat.index_select(1, self._ordinal_idx.to(dev))
        parts.append(self._ordinal_log_prob(ordinal, ord_params))
        both = parts[0] if len(parts) == 1 else torch.cat(parts, -1)
        return both.index_select(-1, self._cat_order.to(dev))

    def _with_unknown(self, idx: Tensor, known: Tensor, counts: Tensor) -> Tensor:
        """The fixed unknown slot: ``known`` log-probabilities (normalized over the known
        categories) scaled to share 1 - e^u, u where ``idx`` is the unknown slot
        (``counts``), 0 where missing (-1)."""
        u = self.unknown_log_prob
        assert u is not None
        out = torch.where(idx == counts.to(idx.device), u, known + math.log1p(-math.exp(u)))
        return out * (idx >= 0).to(out.dtype)  # missing: marginalized, 0

    def _nominal_log_prob(self, idx: Tensor, cat_logits: Tensor) -> Tensor:
        """[..., N, n_nominal] for the nominal columns' categories ``idx`` [N, n_nominal]."""
        if self.unknown_log_prob is None:
            return self._categorical_terms(idx, cat_logits)
        # fixed unknown slot: normalize over the known slots only, give them 1 - e^u
        pos = self._unknown_pos.to(cat_logits.device)
        if torch.is_grad_enabled():
            cat_logits = cat_logits.index_fill(-1, pos, -math.inf)
        else:
            cat_logits = cat_logits.index_fill_(-1, pos, -math.inf)
        known = self._categorical_terms(idx, cat_logits)
        return self._with_unknown(idx, known, self._unknown_slot)

    def _ordinal_scale(self, ord_params: Tensor) -> tuple[Tensor, Tensor]:
        """Logistic location and scale [..., n_ord] each, in half-range units."""
        n = len(self._ordinal_cols)
        loc, raw = ord_params[..., :n], ord_params[..., n:]
        return loc, F.softplus(raw) + ORDINAL_MIN_SCALE

    def _ordinal_log_prob(self, idx: Tensor, ord_params: Tensor) -> Tensor:
        """[..., N, n_ord] log-probability of the ordinal columns' levels ``idx``
        [N, n_ord]: the logistic's mass on each level's bin, then the unknown slot."""
        loc, scale = self._ordinal_scale(ord_params)
        dev = idx.device
        counts = self._ord_counts.to(dev)
        width = self._ord_lower.shape[1]
        level = torch.minimum(idx.clamp(min=0), counts - 1)  # unknown/missing: any real bin
        flat = level + torch.arange(len(counts), device=dev) * width
        lower = self._ord_lower.to(dev, loc.dtype).flatten()[flat]
        upper = self._ord_upper.to(dev, loc.dtype).flatten()[flat]
        known = log_sigmoid_diff((lower - loc) / scale, (upper - loc) / scale)
        return self._with_unknown(idx, known, counts)

    def _ordinal_level_log_probs(self, ord_params: Tensor) -> Tensor:
        """[..., n_ord, width] log-probability of every level of every ordinal column
        (padding levels -inf), for decoding and sampling."""
        loc, scale = self._ordinal_scale(ord_params)
        lower = self._ord_lower.to(loc.device, loc.dtype)
        upper = self._ord_upper.to(loc.device, loc.dtype)
        lp = log_sigmoid_diff(
            (lower - loc.unsqueeze(-1)) / scale.unsqueeze(-1),
            (upper - loc.unsqueeze(-1)) / scale.unsqueeze(-1),
        )
        counts = self._ord_counts.to(loc.device)
        real = torch.arange(lower.shape[1], device=loc.device) < counts.unsqueeze(-1)
        return lp.masked_fill(~real, -math.inf)

    def _categorical_terms(self, idx: Tensor, cat_logits: Tensor) -> Tensor:
        """log softmax of each nominal column's logits at the observed category,
        [..., N, n_nominal]; 0 where missing."""
        observed = (idx >= 0).to(cat_logits.dtype)
        if not torch.is_grad_enabled():
            fast = self._categorical_log_prob_inference(idx, cat_logits)
            if fast is not None:
                return fast.mul_(observed)
        if self._padded:
            lead = cat_logits.shape[:-1]
            spare = cat_logits.new_full((*lead, 1), -math.inf)  # padding slots: p = 0
            padded = torch.cat([cat_logits, spare], -1)
            padded = padded.index_select(-1, self._pad_index.to(idx.device))
            logp = padded.view(*lead, len(self._nominal_cols), -1).log_softmax(-1)
            where = idx.clamp(min=0).expand(*logp.shape[:-1]).unsqueeze(-1)
            return logp.gather(-1, where).squeeze(-1) * observed
        parts = []
        for j, lg in enumerate(self._split(cat_logits)):
            logp = lg.log_softmax(-1)
            where = idx[:, j].clamp(min=0).expand(*logp.shape[:-1]).unsqueeze(-1)
            parts.append(logp.gather(-1, where) * observed[:, j].unsqueeze(-1))
        return torch.cat(parts, -1)

    def _numeric_log_prob(self, batch: TabularTensors, mean: Tensor, sigma: Tensor) -> Tensor:
        """[..., N, n_num] log density of each numeric value in its own units (nats);
        0 where the value is missing. Consumes ``mean`` and ``sigma`` under inference."""
        x = batch.num.to(mean.dtype)
        nu = self.student_df
        if nu is not None:
            # log t_nu(x; mean, sigma) = c(nu) - log sigma - (nu+1)/2 log(1 + r^2/nu)
            c = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)
            const = self.log_scale - c
            if torch.is_grad_enabled():
                r2 = ((x - mean) / sigma).square()
                lp = torch.log1p(r2 / nu) * (-(nu + 1) / 2) - sigma.log() - const
            else:
                r = (x - mean).div_(sigma)
                lp = r.mul_(r).div_(nu).log1p_().mul_(-(nu + 1) / 2)
                lp = lp.sub_(sigma.log_()).sub_(const)
        else:
            const = self.log_scale + 0.5 * LOG_2PI
            if torch.is_grad_enabled():
                lp = -0.5 * ((x - mean) / sigma).square() - sigma.log() - const
            else:  # scoring: the same formula in place, on the [S, N, n] temporaries
                r = (x - mean).div_(sigma)
                lp = r.mul_(r).mul_(-0.5).sub_(sigma.log_()).sub_(const)
        if not bool(batch.num_mask.all()):
            lp = lp.mul_(batch.num_mask.to(lp.dtype))
        return lp

    def feature_log_prob(self, z: Tensor, batch: TabularTensors) -> Tensor:
        """log p(x_f | z) per column, in the columns' own units: z [S, N, L] -> [S, N, F].

        F orders numeric, then categorical, then boolean columns. Missing features give 0.
        """
        mean, sigma, cat_logits, ord_params, bin_logits = self._heads(z)
        parts: list[Tensor] = []
        if self.n_numeric:
            parts.append(self._numeric_log_prob(batch, mean, sigma))
        if self.cat_sizes:
            parts.append(self._categorical_log_prob(batch, cat_logits, ord_params))
        if self.n_boolean:
            xb = batch.bin.to(bin_logits.dtype)
            if torch.is_grad_enabled():
                lp = -F.binary_cross_entropy_with_logits(
                    bin_logits, xb.expand_as(bin_logits), reduction="none"
                )
            else:
                # scoring: log sigmoid(+-l) = -softplus(l * (1 - 2x)), with the sign flip in
                # place on the fresh logits; 1.6x faster than the BCE kernel on wide tables
                lp = F.softplus(bin_logits.mul_(1.0 - 2.0 * xb)).neg_()
            if not bool(batch.bin_mask.all()):
                lp = lp * batch.bin_mask.to(lp.dtype)
            parts.append(lp)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    @torch.no_grad()
    def decode_mean(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The decoder's most likely record for z [N, L]: numeric means [N, n_num]
        (standardized), category indices [N, n_cat] (never the unknown slot), booleans
        [N, n_bin] in {0, 1}."""
        mean, _, cat_logits, ord_params, bin_logits = self._heads(z)
        cats = [lg[..., :-1].argmax(-1) for lg in self._split(cat_logits)]
        if self._ordinal_cols:
            cats.extend(self._ordinal_level_log_probs(ord_params).argmax(-1).unbind(-1))
        return mean, self._stack_categories(cats, z), (bin_logits > 0).to(mean.dtype)

    def _stack_categories(self, cats: list[Tensor], z: Tensor) -> Tensor:
        """Per-column category indices, nominal columns then ordinal ones, each [N] ->
        [N, n_cat] in schema order."""
        if not cats:
            return torch.zeros(*z.shape[:-1], 0, dtype=torch.long)
        cat = torch.stack(cats, -1)
        return cat.index_select(-1, self._cat_order.to(cat.device)) if self._ordinal_cols else cat

    @torch.no_grad()
    def sample_x(self, z: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, ...]:
        """Draw x ~ p(x|z) for z [N, L]; same layout as :meth:`decode_mean`.
        Categorical draws exclude the unknown slot (it has no label to write)."""
        mean, sigma, cat_logits, ord_params, bin_logits = self._heads(z)
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        if self.student_df is not None:  # t = normal / sqrt(chi2_nu / nu)
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
            chi2 = np.random.default_rng(seed).chisquare(self.student_df, tuple(mean.shape))
            eps = eps / torch.from_numpy(chi2 / self.student_df).to(mean.dtype).sqrt()
        num = mean + sigma * eps
        cats = [
            torch.multinomial(lg[..., :-1].softmax(-1), 1, generator=generator).squeeze(-1)
            for lg in self._split(cat_logits)
        ]
        if self._ordinal_cols:
            probs = self._ordinal_level_log_probs(ord_params).exp()  # [N, n_ord, width]
            flat = probs.reshape(-1, probs.shape[-1])
            draw = torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])
            cats.extend(draw.unbind(-1))
        cat = self._stack_categories(cats, z)
        u = torch.rand(bin_logits.shape, generator=generator, dtype=bin_logits.dtype)
        return num, cat, (u < bin_logits.sigmoid()).to(mean.dtype)

    def config(self) -> dict[str, object]:
        """Constructor arguments (without log_scale, which travels in the weights)."""
        return {
            "n_numeric": self.n_numeric,
            "category_counts": self.category_counts,
            "n_boolean": self.n_boolean,
            "latent_dim": self.latent_dim,
            "hidden": self.hidden,
            "min_sigma": self.min_sigma,
            "student_df": self.student_df,
            "unknown_log_prob": self.unknown_log_prob,
            # only when used, so a bundle without ordinal columns reads as before
            **({"ordinal_levels": self.ordinal_levels} if self._ordinal_cols else {}),
        }


def default_architecture(n_rows: int, input_dim: int) -> tuple[int, list[int]]:
    """Latent size and hidden widths sized from the data.

    The latent grows with the square root of the input width (2..16); hidden widths are
    a power of two near twice the input width, 32..256, two layers, halved when rows
    are too few to fit them.
    """
    latent = int(min(16, max(2, math.ceil(math.sqrt(input_dim)))))
    width = int(min(256, max(32, 2 ** math.ceil(math.log2(max(2, 2 * input_dim))))))
    if n_rows < 1000:
        width = max(32, width // 2)
    return latent, [width, width // 2 if width >= 64 else width]


#: Lower bound of :func:`default_min_sigma` and :func:`scott_min_sigma`, in standardized
#: units: below it, many-row tables resolve density spikes that hurt detection more than
#: the finer structure helps (the floor's history is in the commit messages).
MIN_SIGMA_LOWER = 0.6

#: Training rows up to which :func:`default_min_sigma` is one standard deviation.
FULL_FLOOR_ROWS = 10_000


def default_min_sigma(n_rows: int) -> float:
    """Noise floor of the numeric columns' decoder scale, in standardized units.

    ``(FULL_FLOOR_ROWS / n_rows) ** (1 / 4)`` clipped to ``[MIN_SIGMA_LOWER, 1]``: one
    standard deviation up to 10,000 training rows, then lower as rows grow, reaching
    0.6 from about 77,000. A floor keeps the decoder from turning integer-valued and
    near-constant columns into density spikes, and it smooths the density the scores
    come from; only many rows resolve finer structure worth scoring.

    The rows alone decide it. Scott's rule (:func:`scott_min_sigma`, the previous
    default) also raised the floor with the column count, which left tables of a few
    thousand rows over few columns with a floor too low for detection.
    ``FULL_FLOOR_ROWS`` and the exponent were read off the ADBench benchmark (what they
    buy and cost per set: benchmarks/RESULTS.md, the scott-floor and fixed-floor
    ablations).

    Args:
        n_rows: training rows (>= 1).
    """
    rule = (FULL_FLOOR_ROWS / max(1, n_rows)) ** 0.25
    return float(max(MIN_SIGMA_LOWER, min(1.0, rule)))


def scott_min_sigma(n_rows: int, n_columns: int) -> float:
    """The previous default floor (``min_sigma="scott"``), in standardized units.

    Scott's rule, ``n_rows ** (-1 / (n_columns + 4))``: the bandwidth a Gaussian kernel
    density estimate would use on ``n_rows`` standardized points in ``n_columns``
    dimensions, clipped to ``[MIN_SIGMA_LOWER, 1]``.

    Args:
        n_rows: training rows (>= 1).
        n_columns: modelled columns of every kind (>= 1).
    """
    rule = max(1, n_rows) ** (-1.0 / (max(1, n_columns) + 4))
    return float(max(MIN_SIGMA_LOWER, min(1.0, rule)))
