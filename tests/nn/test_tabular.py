"""The tabular VAE's shapes, finiteness and missing-value handling."""

from __future__ import annotations

import math

import pytest
import torch

from anomaly_vae.nn.base import single_sample_elbo
from anomaly_vae.nn.tabular import (
    FULL_FLOOR_ROWS,
    MIN_SIGMA_LOWER,
    ORDINAL_MIN_SCALE,
    TabularTensors,
    TabularVAE,
    default_architecture,
    default_min_sigma,
    log_sigmoid_diff,
    scott_min_sigma,
)
from tests.helpers import assert_tensor_is_good


def _batch(n: int = 5) -> TabularTensors:
    g = torch.Generator().manual_seed(0)
    return TabularTensors(
        torch.randn(n, 3, generator=g),
        torch.ones(n, 3, dtype=torch.bool),
        torch.tensor([[0, 2], [1, 0], [2, 1], [3, 0], [-1, 1]])[:n],  # 3 = unknown, -1 missing
        torch.tensor([[1.0], [0.0], [1.0], [0.0], [1.0]])[:n],
        torch.ones(n, 1, dtype=torch.bool),
    )


def test_tensors_count_rows_apart_from_the_tuple_fields():
    """n_rows counts records; len() stays the tuple's, so _replace works at any row count
    (it checks len() against the five fields)."""
    b = _batch(3)
    assert b.n_rows == 3 and len(b) == 5
    swapped = b._replace(num=b.num + 1)
    assert swapped.n_rows == 3 and torch.equal(swapped.num, b.num + 1)
    assert b.rows(slice(1, 3)).n_rows == 2


def test_shapes_and_finiteness():
    torch.manual_seed(0)
    net = TabularVAE(3, [3, 2], 1, latent_dim=4, hidden=[16, 8], log_scale=[0.0, 1.0, -1.0])
    b = _batch()
    mu, logvar = net.encode(b)
    assert_tensor_is_good(mu, (5, 4))
    assert_tensor_is_good(logvar, (5, 4))
    lp = net.feature_log_prob(torch.randn(7, 5, 4), b)
    assert_tensor_is_good(lp, (7, 5, 6))  # 3 numeric + 2 categorical + 1 boolean
    assert torch.all(lp[..., 3:] <= 0)  # discrete likelihoods are probabilities
    rec, kl, elbo = single_sample_elbo(net, b)
    assert_tensor_is_good(elbo, (5,))
    assert torch.all(kl >= 0)


def test_missing_features_contribute_zero_and_jacobian_applies():
    torch.manual_seed(0)
    net = TabularVAE(3, [3, 2], 1, latent_dim=2, hidden=[8], log_scale=[0.0, 0.0, 0.0])
    b = _batch()
    b.num_mask[0, 1] = False
    b.bin_mask[2, 0] = False
    z = torch.randn(3, 5, 2)
    lp = net.feature_log_prob(z, b)
    assert torch.all(lp[:, 0, 1] == 0) and torch.all(lp[:, 2, 5] == 0)
    assert torch.all(lp[:, 4, 3] == 0)  # categorical -1 = missing
    net.log_scale.fill_(1.0)  # scale e: densities in the columns' own units drop by 1 nat
    lp2 = net.feature_log_prob(z, b)
    torch.testing.assert_close(lp2[:, 1, :3], lp[:, 1, :3] - 1.0)


def test_default_architecture_grows_with_data():
    small = default_architecture(200, 6)
    big = default_architecture(100_000, 400)
    assert small[0] <= big[0] and small[1][0] <= big[1][0]
    assert 2 <= small[0] <= 16 and 2 <= big[0] <= 16


@pytest.mark.parametrize("student_df", [None, 3.0])
def test_scoring_and_training_paths_compute_the_same_log_density(student_df):
    """feature_log_prob runs in place under inference and out of place with autograd;
    both must equal the Gaussian (or Student-t)/Bernoulli densities written out by hand
    with torch.distributions."""
    torch.manual_seed(0)
    net = TabularVAE(
        3, [3, 2], 1, latent_dim=4, hidden=[16, 8], log_scale=[0.0, 1.0, -1.0],
        student_df=student_df,
    )  # fmt: skip
    b = _batch()
    b.num_mask[1, 2] = False
    b.bin_mask[3, 0] = False
    z = torch.randn(6, 5, 4)
    with torch.inference_mode():
        fast = net.feature_log_prob(z, b)
    with torch.enable_grad():
        slow = net.feature_log_prob(z, b)
    torch.testing.assert_close(fast, slow.detach())
    with torch.no_grad():  # the reference: torch.distributions on the decoder's raw output
        out = net.decoder(z)
        mean = out[..., :3]
        sigma = torch.nn.functional.softplus(out[..., 3:6]) + net.min_sigma
        dist = (
            torch.distributions.Normal(mean, sigma)
            if student_df is None
            else torch.distributions.StudentT(student_df, mean, sigma)
        )
        ref = (dist.log_prob(b.num) - net.log_scale) * b.num_mask
        bern = torch.distributions.Bernoulli(logits=out[..., -1:]).log_prob(b.bin) * b.bin_mask
    torch.testing.assert_close(fast[..., :3], ref)
    torch.testing.assert_close(fast[..., 5:], bern)


def test_student_t_has_heavier_tails_and_samples_finite():
    """A value 100 standardized units off costs O(r^2) nats under the Gaussian, O(log r) under the t."""
    torch.manual_seed(0)
    kw = {"latent_dim": 2, "hidden": [8], "min_sigma": 1.0}
    gauss, student = TabularVAE(1, [], 0, **kw), TabularVAE(1, [], 0, student_df=3.0, **kw)
    student.load_state_dict(gauss.state_dict())
    z = torch.zeros(1, 1, 2)
    mean = gauss._heads(z)[0].item()
    far = TabularTensors(
        torch.tensor([[mean + 100.0]]), torch.ones(1, 1, dtype=torch.bool),
        torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0), torch.zeros(1, 0, dtype=torch.bool),
    )  # fmt: skip
    assert gauss.feature_log_prob(z, far).item() < -300
    assert student.feature_log_prob(z, far).item() > -25
    draws = student.sample_x(torch.zeros(2000, 2), torch.Generator().manual_seed(0))[0]
    assert torch.isfinite(draws).all()
    assert student.config()["student_df"] == 3.0


def _categorical_batch(cat: torch.Tensor, num: torch.Tensor | None = None) -> TabularTensors:
    """Rows of categorical codes [N, n_cat] (and optional numerics), no booleans."""
    n = cat.shape[0]
    num = torch.zeros(n, 0) if num is None else num
    return TabularTensors(
        num, torch.ones_like(num, dtype=torch.bool), cat,
        torch.zeros(n, 0), torch.ones(n, 0, dtype=torch.bool),
    )  # fmt: skip


@pytest.mark.parametrize("padded", [True, False])
def test_categorical_columns_match_torch_distributions_on_both_paths(padded):
    """Categorical (and discrete) columns are scored as one padded block or column by
    column; both, with and without autograd, equal torch.distributions.Categorical, and
    the encoder sees the same one-hot vectors as F.one_hot builds column by column."""
    torch.manual_seed(0)
    net = TabularVAE(1, [3, 2, 5], 0, latent_dim=3, hidden=[8], log_scale=[0.0])
    assert net._padded  # 3 columns of width <= 6 against 13 slots: padding is cheap
    net._padded = padded
    n = 6
    cat = torch.tensor([[0, 2, 5], [3, 0, 4], [1, 1, -1], [-1, 2, 0], [2, 0, 1], [3, 1, 5]])
    b = _categorical_batch(cat, torch.randn(n, 1))
    z = torch.randn(4, n, 3)
    with torch.inference_mode():
        fast = net.feature_log_prob(z, b)[..., 1:]
    with torch.enable_grad():
        slow = net.feature_log_prob(z, b)[..., 1:]
    torch.testing.assert_close(fast, slow.detach())
    with torch.no_grad():
        out = net.decoder(z)[..., 2:]
        for j, (a, c) in enumerate([(0, 4), (4, 7), (7, 13)]):
            d = torch.distributions.Categorical(logits=out[..., a:c])
            ref = d.log_prob(cat[:, j].clamp(min=0).expand(4, n)) * (cat[:, j] >= 0)
            torch.testing.assert_close(fast[..., j], ref)
    onehot = torch.cat(
        [
            torch.nn.functional.one_hot(cat[:, j].clamp(min=0), s) * (cat[:, j] >= 0)[:, None]
            for j, s in enumerate(net.cat_sizes)
        ],
        -1,
    )
    torch.testing.assert_close(net.encoder_input(b)[:, 1:], onehot.float())


def test_wide_and_narrow_categorical_columns_use_the_loop():
    net = TabularVAE(0, [30, 1, 1], 0, latent_dim=2, hidden=[8])
    assert not net._padded  # 3 x 31 padded slots against 35 real ones


def test_categorical_scoring_falls_back_when_a_column_underflows():
    """Scoring normalizes every column under the row's largest logit; when a whole column
    sits ~200 nats below it, exp underflows and the exact per-column path takes over."""
    torch.manual_seed(0)
    net = TabularVAE(0, [2, 2], 0, latent_dim=2, hidden=[4])
    with torch.no_grad():
        net.decoder[-1].bias[3:6] -= 200.0  # the second column's logits
    cat = torch.tensor([[0, 1], [1, 2]])
    b = _categorical_batch(cat)
    z = torch.randn(3, 2, 2)
    with torch.inference_mode():
        lp = net.feature_log_prob(z, b)
        out = net.decoder(z)
        ref = torch.distributions.Categorical(logits=out[..., 3:6]).log_prob(cat[:, 1].expand(3, 2))
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(lp[..., 1], ref)


@pytest.mark.parametrize("padded", [True, False])
def test_a_fixed_unknown_slot_gets_exactly_its_probability(padded):
    """With unknown_log_prob set, an unseen category scores exactly that, the known ones
    share the rest (their probabilities sum to 1 - e^u), and missing still gives 0; the
    same in the scoring, autograd, padded and per-column paths."""
    torch.manual_seed(0)
    u = math.log(1 / 102)
    net = TabularVAE(0, [3, 2], 0, latent_dim=3, hidden=[8], unknown_log_prob=u)
    net._padded = padded
    n = 5
    cat = torch.tensor([[0, 2], [3, 0], [1, 1], [-1, 2], [2, -1]])  # 3 and 2: unknown
    b = _categorical_batch(cat)
    z = torch.randn(4, n, 3)
    with torch.inference_mode():
        fast = net.feature_log_prob(z, b)
    with torch.enable_grad():
        slow = net.feature_log_prob(z, b)
        slow.sum().backward()
    torch.testing.assert_close(fast, slow.detach())
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    assert torch.all(fast[:, 1, 0] == u) and torch.all(fast[:, 0, 1] == u)
    assert torch.all(fast[:, 3, 0] == 0) and torch.all(fast[:, 4, 1] == 0)
    # the known categories of column 0 (3 of them) carry 1 - e^u in total
    every = torch.stack(
        [
            net.feature_log_prob(z, b._replace(cat=torch.full((n, 2), c, dtype=torch.long)))[
                ..., 0
            ].detach()
            for c in range(3)
        ]
    )
    torch.testing.assert_close(every.exp().sum(0), torch.full((4, n), 1 - math.exp(u)))
    with pytest.raises(ValueError, match="unknown_log_prob must be < 0"):
        TabularVAE(0, [3], 0, latent_dim=2, hidden=[4], unknown_log_prob=0.5)


def _mixed_ordinal_net(u: float = math.log(1 / 52)) -> TabularVAE:
    """One numeric column, then a nominal (3 categories), an ordinal over the uneven
    levels 0, 1, 2, 5 and an ordinal over 10, 20."""
    torch.manual_seed(0)
    return TabularVAE(
        1, [3, 4, 2], 0, latent_dim=3, hidden=[8], log_scale=[0.0],
        unknown_log_prob=u, ordinal_levels=[None, [0, 1, 2, 5], [10.0, 20.0]],
    )  # fmt: skip


def test_log_sigmoid_diff_matches_float64_and_stays_finite_in_the_tails():
    a = torch.tensor([-3.0, -0.5, 0.0, 2.0, 40.0, -60.0, 5.0, -1e4])
    b = torch.tensor([-2.0, 0.5, 1e-4, 2.5, 41.0, -59.0, 5.01, 1e4])
    got = log_sigmoid_diff(a, b)
    a64, b64 = a.double(), b.double()
    # the mirrored difference is exact in float64 on both sides of 0
    ref = torch.where(
        a64 + b64 > 0,
        (torch.sigmoid(-a64) - torch.sigmoid(-b64)).log(),
        (torch.sigmoid(b64) - torch.sigmoid(a64)).log(),
    )
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(got).all()  # float32 sigmoid(41) - sigmoid(40) is 0 -> -inf


def test_ordinal_columns_are_a_logistic_binned_at_the_levels():
    """An ordinal column's level gets the logistic's mass between the midpoints to its
    neighbours (open-ended at the first and last level, levels in half-range units), the
    known levels share 1 - e^u, the unknown slot gets u and a missing value 0; the
    nominal column in between is untouched; scoring and autograd paths agree."""
    u = math.log(1 / 52)
    net = _mixed_ordinal_net(u)
    assert net.decoder[-1].out_features == 2 * 1 + 4 + 2 * 2  # no per-level logits
    n = 6
    cat = torch.tensor([[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 0], [0, 4, 2], [-1, -1, -1]])
    b = _categorical_batch(cat, torch.randn(n, 1))
    z = torch.randn(4, n, 3)
    with torch.inference_mode():
        fast = net.feature_log_prob(z, b)
    with torch.enable_grad():
        slow = net.feature_log_prob(z, b)
    torch.testing.assert_close(fast, slow.detach())
    with torch.no_grad():
        out = net.decoder(z)[..., 2:].double()
    nominal = torch.distributions.Categorical(logits=out[..., :3])  # unknown slot excluded
    ref0 = nominal.log_prob(cat[:, 0].clamp(0, 2).expand(4, n)) + math.log1p(-math.exp(u))
    torch.testing.assert_close(fast[:, :3, 1].double(), ref0[:, :3], rtol=1e-5, atol=1e-5)
    loc, scale = out[..., 4:6], torch.nn.functional.softplus(out[..., 6:8]) + ORDINAL_MIN_SCALE
    # levels 0, 1, 2, 5 -> -1, -0.6, -0.2, 1 (centre 2.5, half-range 2.5); 10, 20 -> -1, 1
    edges = [[-math.inf, -0.8, -0.4, 0.4, math.inf], [-math.inf, 0.0, math.inf]]
    for col, (j, e) in enumerate(zip([2, 3], edges, strict=True)):
        for row, level in enumerate(cat[:, col + 1].tolist()):
            if not 0 <= level < len(e) - 1:
                continue
            m, sd = loc[:, row, col], scale[:, row, col]
            p = torch.sigmoid((e[level + 1] - m) / sd) - torch.sigmoid((e[level] - m) / sd)
            ref = p.log() + math.log1p(-math.exp(u))
            torch.testing.assert_close(fast[:, row, j].double(), ref, rtol=1e-4, atol=1e-5)
    assert torch.all(fast[:, 4, 2:] == u) and torch.all(fast[:, 3, 1] == u)  # unknown
    assert torch.all(fast[:, 5, 1:] == 0)  # missing
    # every known level of each ordinal column: together 1 - e^u
    every = torch.stack(
        [
            net.feature_log_prob(z, _categorical_batch(torch.full((n, 3), c), b.num)).detach()
            for c in range(4)
        ]
    ).exp()
    torch.testing.assert_close(every[:, ..., 2].sum(0), torch.full((4, n), 1 - math.exp(u)))
    torch.testing.assert_close(every[:2, ..., 3].sum(0), torch.full((4, n), 1 - math.exp(u)))


def test_the_encoder_sees_an_ordinal_level_as_its_position():
    """Nominal columns enter one-hot, ordinal ones as one number: the level's position in
    [-1, 1] (levels 0, 1, 2, 5 -> -1, -0.6, -0.2, 1), 0 where unknown or missing."""
    net = _mixed_ordinal_net()
    assert net.input_dim == 1 + 4 + 2
    cat = torch.tensor([[0, 0, 0], [1, 3, 1], [3, 4, 2], [-1, -1, -1], [2, 2, 0]])
    x = net.encoder_input(_categorical_batch(cat, torch.zeros(5, 1)))
    onehot = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 1, 0]])
    torch.testing.assert_close(x[:, 1:5], onehot.float())
    positions = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [-0.2, -1.0]])
    torch.testing.assert_close(x[:, 5:], positions)


def test_ordinal_gradients_stay_finite_for_extreme_locations_and_scales():
    net = _mixed_ordinal_net()
    with torch.no_grad():
        last = net.decoder[-1]
        last.bias[6:8] = torch.tensor([1e3, -1e3])  # locations far right and far left
        last.bias[8:10] = -50.0  # scales at the floor
    cat = torch.tensor([[0, 0, 0], [1, 3, 1], [2, 1, 1]])
    lp = net.feature_log_prob(torch.randn(2, 3, 3), _categorical_batch(cat, torch.zeros(3, 1)))
    lp.sum().backward()
    assert torch.isfinite(lp).all()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_ordinal_decoding_sampling_and_config():
    """decode_mean takes each ordinal column's most probable level, samples are levels,
    and the config rebuilds the same model (and lists ordinal levels only when any)."""
    net = _mixed_ordinal_net()
    with torch.no_grad():
        last = net.decoder[-1]
        last.weight[6:10] = 0.0
        last.bias[6:10] = torch.tensor([0.5, -0.9, -50.0, -50.0])  # in the bins of 5 and 10
    z = torch.randn(7, 3)
    _, cat, _ = net.decode_mean(z)
    assert cat[:, 1:].tolist() == [[3, 0]] * 7
    _, drawn, _ = net.sample_x(z, generator=torch.Generator().manual_seed(0))
    assert drawn[:, 1:].tolist() == [[3, 0]] * 7  # scales at the floor: no other level
    assert (drawn[:, 0] >= 0).all() and (drawn[:, 0] < 3).all()
    again = TabularVAE(**net.config())
    again.load_state_dict(net.state_dict())
    b = _categorical_batch(torch.tensor([[1, 2, 1]]), torch.zeros(1, 1))
    torch.testing.assert_close(
        again.feature_log_prob(z[None, :1], b), net.feature_log_prob(z[None, :1], b)
    )
    assert "ordinal_levels" not in TabularVAE(0, [3], 0, latent_dim=2, hidden=[4]).config()


@pytest.mark.parametrize(
    ("levels", "message"),
    [
        ([[0, 1]], "ordinal_levels has 1 entries for 2 categorical columns"),
        ([[0, 1, 2], None], r"ordinal_levels\[0\] must be 2 finite numbers"),
        ([[0, math.nan], None], r"ordinal_levels\[0\] must be 2 finite numbers"),
        ([None, [3, 1, 2]], r"ordinal_levels\[1\] must be strictly ascending"),
    ],
)
def test_ordinal_levels_are_checked(levels, message):
    with pytest.raises(ValueError, match=message):
        TabularVAE(
            0, [2, 3], 0, latent_dim=2, hidden=[4], unknown_log_prob=-3.0, ordinal_levels=levels
        )


def test_ordinal_columns_need_a_fixed_unknown_slot():
    with pytest.raises(ValueError, match="ordinal columns need a fixed unknown_log_prob"):
        TabularVAE(0, [2], 0, latent_dim=2, hidden=[4], ordinal_levels=[[0, 1]])


def test_default_min_sigma_is_one_std_until_many_rows():
    """1 up to FULL_FLOOR_ROWS training rows, then (FULL_FLOOR_ROWS / n) ** (1/4) down to
    MIN_SIGMA_LOWER; the column count plays no part."""
    assert default_min_sigma(923) == 1.0  # cardio
    assert default_min_sigma(FULL_FLOOR_ROWS) == 1.0
    assert default_min_sigma(20_758) == pytest.approx((FULL_FLOOR_ROWS / 20_758) ** 0.25)
    assert default_min_sigma(136_386) == MIN_SIGMA_LOWER  # skin: the power says 0.52
    assert default_min_sigma(0) == default_min_sigma(1) == 1.0  # degenerate shapes in range
    assert MIN_SIGMA_LOWER < default_min_sigma(40_000) < default_min_sigma(20_000) < 1.0


def test_scott_min_sigma_is_scotts_rule_clipped():
    """n ** (-1 / (d + 4)) inside [MIN_SIGMA_LOWER, 1]: lower with more rows, higher with
    more columns, at the bound for many rows over few columns."""
    assert scott_min_sigma(923, 21) == pytest.approx(923 ** (-1 / 25))  # cardio: 0.761
    assert scott_min_sigma(136_386, 3) == MIN_SIGMA_LOWER  # skin: the rule says 0.185
    assert scott_min_sigma(1, 5) == 1.0
    assert scott_min_sigma(0, 0) == 1.0  # degenerate shapes stay in range
    assert scott_min_sigma(5_000, 20) < scott_min_sigma(500, 20)
    assert scott_min_sigma(5_000, 20) < scott_min_sigma(5_000, 200) < 1.0
