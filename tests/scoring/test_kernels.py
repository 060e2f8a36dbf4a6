"""The fused scoring kernel against the reference kernel it replaced, and the rows per
pass it takes from the model's shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomaly_vae.nn.linear import LinearGaussianVAE
from anomaly_vae.nn.tabular import TabularTensors, TabularVAE
from anomaly_vae.scoring import iwae
from anomaly_vae.scoring.iwae import ImportanceSampler, pass_rows

FIELDS = ("log_likelihood", "elbo", "kl", "ess", "stderr", "contributions", "latent_mean")


def _mixed_model(student_df: float | None) -> TabularVAE:
    """Every likelihood a table uses: numeric, nominal, ordinal and boolean columns."""
    torch.manual_seed(0)
    return TabularVAE(
        n_numeric=4,
        category_counts=[3, 5, 4],
        n_boolean=2,
        latent_dim=3,
        hidden=[16, 8],
        student_df=student_df,
        unknown_log_prob=-6.0,
        ordinal_levels=[None, None, [0.0, 1.0, 2.0, 5.0]],
    ).eval()


def _rows(n: int, seed: int) -> TabularTensors:
    """Rows with missing cells in every kind of column and an unknown category."""
    rng = np.random.default_rng(seed)
    num = rng.normal(size=(n, 4)).astype(np.float32)
    num_mask = rng.random((n, 4)) > 0.1
    cat = np.stack([rng.integers(-1, c + 1, n) for c in (3, 5, 4)], 1)  # -1 missing, c unknown
    b = (rng.random((n, 2)) < 0.4).astype(np.float32)
    b_mask = rng.random((n, 2)) > 0.1
    return TabularTensors(
        torch.from_numpy(num),
        torch.from_numpy(num_mask),
        torch.from_numpy(cat),
        torch.from_numpy(b),
        torch.from_numpy(b_mask),
    )


def _assert_close(got: iwae.ScoreResult, want: iwae.ScoreResult, atol: float) -> None:
    for f in FIELDS:
        a, b = getattr(got, f), getattr(want, f)
        assert a.shape == b.shape, f
        np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=f)


@pytest.mark.parametrize("student_df", [None, 4.0])
@pytest.mark.parametrize(("k", "sample_chunk"), [(1, 64), (17, 64), (64, 64), (150, 64), (40, 7)])
@pytest.mark.parametrize("contributions", [False, True])
def test_the_fused_kernel_equals_the_reference_on_every_likelihood(
    student_df: float | None, k: int, sample_chunk: int, contributions: bool
) -> None:
    """One sample chunk and several, K = 1 (an ELBO), a partial last chunk of samples
    and of rows: the float32 terms are the reference's bits, so only the float64 sums
    over samples may round differently."""
    model, x = _mixed_model(student_df), _rows(150, 1)
    ref = ImportanceSampler(k, seed=2, row_chunk=64, sample_chunk=sample_chunk, kernel="reference")
    fused = ImportanceSampler(k, seed=2, row_chunk=64, sample_chunk=sample_chunk)
    want = ref.score(model, x, 150, contributions=contributions)
    got = fused.score(model, x, 150, contributions=contributions)
    _assert_close(got, want, atol=1e-9)
    if sample_chunk >= k:  # one chunk: not even the float64 sums differ
        np.testing.assert_array_equal(got.log_likelihood, want.log_likelihood)
    np.testing.assert_array_equal(got.unreliable, want.unreliable)


def test_the_fused_kernel_equals_the_reference_on_a_model_with_an_exact_posterior() -> None:
    """Float64 models (the closed-form probabilistic PCA) go through the same kernel."""
    g = torch.Generator().manual_seed(3)
    w, _ = torch.linalg.qr(torch.randn(5, 2, generator=g, dtype=torch.float64))
    model = LinearGaussianVAE.with_exact_posterior(w, torch.zeros(5, dtype=torch.float64), 0.5)
    x = torch.randn(90, 5, generator=g, dtype=torch.float64)
    want = ImportanceSampler(100, seed=1, row_chunk=32, kernel="reference").score(model, x, 90)
    got = ImportanceSampler(100, seed=1, row_chunk=32).score(model, x, 90)
    _assert_close(got, want, atol=1e-9)


def test_a_record_is_the_same_bits_alone_and_in_a_batch_at_the_models_pass_rows() -> None:
    model, x = _mixed_model(4.0), _rows(700, 2)
    sampler = ImportanceSampler(32, seed=0)
    assert sampler.rows_per_pass(model) == pass_rows(model) > 64
    full = sampler.score(model, x, 700).log_likelihood
    for i in (0, 300, 699):
        alone = sampler.score(model, x.rows(slice(i, i + 1)), 1).log_likelihood
        np.testing.assert_array_equal(alone, full[i : i + 1])


@pytest.mark.parametrize(
    ("outputs", "rows"), [(1, 256), (8, 256), (16, 256), (17, 128), (32, 128), (33, 64), (500, 64)]
)
def test_pass_rows_grow_as_the_decoder_narrows(outputs: int, rows: int) -> None:
    model = torch.nn.Module()
    model.decoder = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, outputs))
    assert pass_rows(model) == rows
    assert rows * outputs <= iwae.BASE_PASS_ROWS * iwae.PASS_OUTPUTS or rows == 64


def test_a_model_without_a_readable_decoder_gets_the_base_pass_rows() -> None:
    g = torch.Generator().manual_seed(0)
    w, _ = torch.linalg.qr(torch.randn(4, 2, generator=g, dtype=torch.float64))
    model = LinearGaussianVAE.with_exact_posterior(w, torch.zeros(4, dtype=torch.float64), 1.0)
    assert pass_rows(model) == iwae.BASE_PASS_ROWS
    assert ImportanceSampler(8, row_chunk=16).rows_per_pass(model) == 16


def test_an_unknown_kernel_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="kernel must be one of fused, reference, got 'fast'"):
        ImportanceSampler(8, kernel="fast")


def _spy_passes(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows of every pass ``model`` encodes from now on."""
    seen: list[int] = []
    encode = model.encode

    def spy(batch: TabularTensors) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(int(batch[0].shape[0]))
        return encode(batch)

    monkeypatch.setattr(model, "encode", spy)
    return seen


def test_a_small_request_runs_a_shorter_pass_once_it_gave_the_full_pass_bits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first small request runs both passes and compares them; once they agreed,
    later ones run the short pass only. Whether they agree is this CPU's kernels' say,
    so the comparison is made to agree here: the test is of the bookkeeping."""
    monkeypatch.setattr(iwae, "_same_bits", lambda got, want, rows: True)
    model, x = _mixed_model(4.0), _rows(300, 3)
    sampler = ImportanceSampler(32, seed=0)
    per_pass = sampler.rows_per_pass(model)
    seen = _spy_passes(model, monkeypatch)
    for start, n, passes in [(0, 1, [per_pass, 16]), (7, 1, [16]), (40, 20, [per_pass, 32])]:
        seen.clear()
        sampler.score(model, x.rows(slice(start, start + n)), n)
        assert seen == passes
    seen.clear()
    sampler.score(model, x.rows(slice(0, 20)), 20, contributions=False)
    assert seen == [per_pass, 32], "without contributions it is another pass: verified anew"


def test_a_small_request_is_the_full_pass_bits_whatever_the_verdict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On any CPU: every field of a small request equals the full batch's bits, and the
    passes after the first follow the verdict recorded for them."""
    model, x = _mixed_model(4.0), _rows(300, 3)
    full = ImportanceSampler(32, seed=0, short_passes=False).score(model, x, 300)
    sampler = ImportanceSampler(32, seed=0)
    per_pass = sampler.rows_per_pass(model)
    seen = _spy_passes(model, monkeypatch)
    for start, n, short, first in [(0, 1, 16, True), (7, 1, 16, False), (40, 20, 32, True),
                                   (90, 20, 32, False)]:  # fmt: skip
        seen.clear()
        got = sampler.score(model, x.rows(slice(start, start + n)), n)
        verdict = next(ok for key, ok in iwae._SHORT_PASS_OK[model].items() if key[0] == short)
        assert seen == ([per_pass, short] if first else [short] if verdict else [per_pass])
        for f in FIELDS:
            want = getattr(full, f)[start : start + n]
            assert getattr(got, f).tobytes() == np.ascontiguousarray(want).tobytes(), f


class _ShapeDependentVAE(TabularVAE):
    """A model whose last bits depend on the rows in a pass, as a CPU kernel's can."""

    def feature_log_prob(self, z: torch.Tensor, batch: TabularTensors) -> torch.Tensor:
        out = super().feature_log_prob(z, batch)
        return out + 1e-6 if z.shape[1] < 64 else out


def test_a_shorter_pass_that_changes_a_bit_is_never_used(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = _ShapeDependentVAE(4, [3, 5, 4], 2, latent_dim=3, hidden=[16, 8]).eval()
    x = _rows(100, 4)
    full = ImportanceSampler(16, seed=0, short_passes=False).score(model, x, 100)
    sampler = ImportanceSampler(16, seed=0)
    per_pass = sampler.rows_per_pass(model)
    seen = _spy_passes(model, monkeypatch)
    for i, passes in [(5, [per_pass, 16]), (6, [per_pass]), (7, [per_pass])]:
        seen.clear()
        got = sampler.score(model, x.rows(slice(i, i + 1)), 1)
        assert seen == passes
        np.testing.assert_array_equal(got.log_likelihood, full.log_likelihood[i : i + 1])


def test_an_explicit_row_chunk_pads_every_pass_to_it(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _mixed_model(None), _rows(10, 5)
    seen = _spy_passes(model, monkeypatch)
    ImportanceSampler(8, row_chunk=64).score(model, x, 1)
    assert seen == [64]
