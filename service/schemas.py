"""Request and response models of the service (pydantic); they document the routes in
the OpenAPI schema."""

from __future__ import annotations

from typing import Any

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


class ScoreResponse(BaseModel):
    model: ModelRef
    k: int
    results: list[RecordScore]


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
