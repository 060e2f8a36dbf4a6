"""Request and response models of the service (pydantic); they document the routes in
the OpenAPI schema."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

EXAMPLE_RECORDS: list[Any] = [
    {"mean radius": 14.1, "mean texture": 19.3},
    {"mean radius": 28.1, "mean texture": 39.3},
]


class ScoreRequest(BaseModel):
    """Records to score: ``records`` (a list of objects keyed by column) or ``columns``
    (an object of equal-length lists). Values may be null: missing values are
    marginalized out of the likelihood."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"records": EXAMPLE_RECORDS, "k": 64, "contributions": 3}]},
    )

    records: list[dict[str, Any]] | None = Field(default=None, description="row-wise input")
    columns: dict[str, list[Any]] | None = Field(default=None, description="column-wise input")
    # strict: true and false are not numbers of samples or features
    k: int | None = Field(
        default=None, ge=1, strict=True, description="importance samples (default: the model's own)"
    )
    contributions: int = Field(
        0, ge=0, strict=True, description="return this many most unusual features per record"
    )
    orient: Literal["records", "columns"] = Field(
        "records",
        description="the response's layout: 'records' (a list of result objects, "
        "``results``) or 'columns' (an object of equal-length lists, ``columns``: "
        "cheaper to write and read for large requests)",
    )


class Contribution(BaseModel):
    feature: str
    value: Any
    contribution: float = Field(description="the feature's log-likelihood term, nats")
    excess: float = Field(description="contribution minus its median on normal rows, nats")


class RecordScore(BaseModel):
    id: Any | None = None
    log_likelihood: float = Field(description="importance-sampled log p(x), nats")
    stderr: float | None = Field(
        default=None, description="Monte Carlo standard error of log_likelihood (absent at K=1)"
    )
    ess: float = Field(description="effective sample size of the importance weights, 1..k (Kish)")
    unreliable: bool = Field(
        description="ess below 5 (or k/2 for k < 10): a few samples carry the estimate, "
        "which is then likely too low and its stderr not to be trusted"
    )
    score: float = Field(description="anomaly score = -log_likelihood")
    p_value: float
    is_outlier: bool
    contributions: list[Contribution] | None = None


class ModelRef(BaseModel):
    name: str
    version: int | None
    alias: str | None


class ScoreColumns(BaseModel):
    """The results of ``orient: "columns"``: one list per field of :class:`RecordScore`,
    each with one entry per record, in the records' order."""

    id: list[Any] | None = Field(default=None, description="the id column, when the model has one")
    log_likelihood: list[float | None] = Field(description="importance-sampled log p(x), nats")
    stderr: list[float | None] | None = Field(
        default=None, description="Monte Carlo standard error of log_likelihood (absent at K=1)"
    )
    ess: list[float]
    unreliable: list[bool]
    score: list[float | None]
    p_value: list[float]
    is_outlier: list[bool]
    contributions: list[list[Contribution]] | None = None


class ScoreResponse(BaseModel):
    model: ModelRef
    k: int
    results: list[RecordScore] | None = Field(default=None, description="orient 'records'")
    columns: ScoreColumns | None = Field(default=None, description="orient 'columns'")


class ImageScoreRequest(BaseModel):
    """Images as base64-encoded PNG or JPEG files."""

    model_config = ConfigDict(extra="forbid")

    images: list[str] = Field(min_length=1, description="base64 PNG/JPEG files")
    k: int | None = Field(default=None, ge=1, strict=True, description="importance samples")
    heatmap: bool = Field(
        default=False,
        strict=True,
        description="add per-pixel log-likelihood contributions (nats)",
    )


# ---------------------------------------------------------------------- drift
class DriftSignal(BaseModel):
    """One test of a window check."""

    statistic: float | None = Field(description="the test statistic (see ``test``)")
    p_value: float | None = Field(description="Holm-adjusted p-value over the window's tests")
    effect: float | None = Field(description="effect size, in the signal's units (see ``test``)")
    margin: float = Field(description="the least effect an alarm needs")
    threshold: float = Field(description="the level the p-value is compared with")
    verdict: str = Field(description="drift or no_drift")
    test: str | None = None


class DriftFeature(BaseModel):
    feature: str
    kind: str = Field(description="numeric, categorical or boolean")
    q_value: float | None = Field(description="Benjamini-Hochberg q-value over the features")
    p_value: float | None = Field(description="Holm-adjusted p-value of the column's values")
    effect: float | None = Field(
        description="numeric: Wasserstein distance in the column's sd; else total variation"
    )
    verdict: str
    contribution_shift_nats: float | None = Field(
        description="shift of the column's mean log-likelihood contribution, nats"
    )


class DriftWindow(BaseModel):
    verdict: str = Field(description="drift, no_drift or too_few_rows")
    records: int
    start: float | None = Field(description="Unix time of the window's first record")
    end: float | None = Field(description="Unix time of its last record")
    level: float
    fired: list[dict[str, Any]] = Field(description="the tests that alarmed")
    signals: dict[str, DriftSignal] = Field(description="scores, outlier_rate, latent, kl")
    features: list[DriftFeature] = Field(description="the top features, by q-value")
    score_counts: dict[str, list[float]] = Field(
        description="records per reference score ventile: the reference's and the window's"
    )
    outlier_rate: float | None
    alpha: float | None
    drift_since: float | None = Field(
        description="Unix time of the first of the consecutive checks finding drift"
    )


class DriftMartingale(BaseModel):
    log_value: float | None = Field(description="log of the combined test martingale")
    log_max: float | None = Field(description="the largest log value it has had")
    threshold: float | None = Field(description="log(1 / drift_level): the alarm line")
    alarm: bool | None = Field(description="the martingale has reached its threshold")
    records: int | None = Field(description="records it has bet on, every worker together")
    workers: int | None = Field(description="worker processes whose windows were merged")
    level: float | None
    slack: float | None = Field(
        description="0 while the ranks' reference grows; after 10^7 records it freezes and "
        "each bet is made conservative by this much"
    )
    alarm_at: float | None = Field(description="Unix time the alarm was first seen")
    alarm_after_records: int | None


class DriftState(BaseModel):
    """``GET /v1/drift``: the loaded version's live drift state."""

    status: str = Field(description="checked, waiting_for_check or no_records")
    model: dict[str, Any] | None
    reference: str | None = Field(description="the drift reference's fingerprint")
    reference_missing: bool = Field(
        description="the bundle has no drift reference: only the martingale runs"
    )
    checked_at: float | None = Field(description="Unix time of the latest check")
    interval_seconds: float
    reset_at: float | None = Field(
        default=None, description="Unix time of the martingale's latest reset (none: never)"
    )
    martingale: DriftMartingale | None
    windows: dict[str, DriftWindow] = Field(description="count and time windows")
