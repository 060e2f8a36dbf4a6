"""Service settings: one pydantic-settings class, read from ``ANOMALY_VAE_*`` variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

INSECURE_TOKENS = {"", "change-me", "changeme", "admin", "secret"}
#: Shortest admin token accepted outside development (characters).
MIN_TOKEN_LENGTH = 16


class Settings(BaseSettings):
    """Everything the service reads from its environment.

    Serve a registered model (``model_name`` + ``model_alias``, resolved in the MLflow
    store at ``tracking_store`` or ``MLFLOW_TRACKING_URI``) or a bundle directory
    (``bundle_path``). Outside ``environment=development`` an admin token of at least
    ``MIN_TOKEN_LENGTH`` characters is required. With ``signing_key`` set, only bundles
    signed with it (``anomaly-vae sign``) are served.
    """

    model_config = SettingsConfigDict(env_prefix="ANOMALY_VAE_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    model_name: str | None = None
    model_alias: str = "champion"
    bundle_path: Path | None = None
    tracking_store: Path = Path("mlruns")
    poll_seconds: float = Field(
        default=30.0, ge=0.0, description="alias polling period; 0 disables hot reload"
    )
    admin_token: str = ""
    signing_key: SecretStr | None = Field(
        default=None,
        description="HMAC key (at least 32 characters): serve only bundles signed with it",
    )
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1, description="largest request body (413 before parsing)"
    )
    max_cost: int = Field(
        default=2_000_000,
        ge=1,
        description="most importance samples one request may ask for (records x k)",
    )
    max_files: int = Field(default=256, ge=1, description="most files in one multipart request")
    max_missing_share: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="most of a record's columns that may be missing (more: 422 naming it)",
    )
    max_records: int = Field(default=10_000, ge=1, description="most records in one request")
    max_k: int = Field(default=5_000, ge=1, description="largest K a request may ask for")
    max_contributions: int = Field(default=20, ge=0, description="most top features per record")
    batch_window_ms: float = Field(
        default=2.0, ge=0.0, description="how long a batch waits for company"
    )
    max_batch_records: int = Field(
        default=4_096, ge=1, description="records scored in one batch at most"
    )
    lane_cost: int = Field(
        default=262_144,
        ge=1,
        description="requests costing more importance samples (records x k) are scored in "
        "slices of about this cost, cheap requests served between slices",
    )
    max_queue: int = Field(default=256, ge=1, description="queued requests before 503")
    cache_dir: Path | None = None
    torch_threads: int = Field(
        default=1,
        ge=0,
        description="intra-op threads per worker process for small batches (0: torch's default)",
    )
    device: str = Field(
        default="cpu",
        description="where models score: cpu, cuda, cuda:<index> or mps (a GPU needs a "
        "CUDA build of torch); refused at start-up when this machine has no such device",
    )
    bulk_records: int = Field(
        default=256, ge=1, description="batches of at least this many records use bulk_threads"
    )
    bulk_threads: int = Field(
        default=0,
        ge=0,
        description="intra-op threads for bulk batches; 0: the cores this process may use "
        "divided by the number of workers (ANOMALY_VAE_WORKERS)",
    )
    workers: int = Field(default=1, ge=1, description="worker processes serving (set by serve)")
    drift: bool = Field(
        default=True,
        description="live drift monitoring of scored records (martingale and window checks)",
    )
    drift_level: float = Field(
        default=0.05,
        gt=0.0,
        lt=1.0,
        description="bound on the chance that the martingale alarm ever fires on data like "
        "the calibration set (half for the bets, half for the calibration set's noise)",
    )
    drift_window_level: float = Field(
        default=0.01,
        gt=0.0,
        lt=1.0,
        description="family-wise false-alarm level of one window check (Holm over its "
        "tests); the anytime-valid alarm is the martingale's",
    )
    drift_interval_seconds: float = Field(
        default=30.0, gt=0.0, description="how often the window checks run"
    )
    drift_window_records: int = Field(
        default=5_000, ge=1, description="the count window: the latest this many records"
    )
    drift_window_seconds: float = Field(
        default=3_600.0, gt=0.0, description="the time window: records of this many seconds"
    )
    drift_bucket_records: int = Field(
        default=500, ge=1, description="records per bucket of the sliding windows"
    )
    drift_bucket_seconds: float = Field(
        default=60.0, gt=0.0, description="a bucket closes after this long even if not full"
    )
    drift_contribution_share: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="share of the requests the windows take that are scored with "
        "per-feature contributions for the windows' contribution tests (chosen by the "
        "requests' order, whatever their records; they cost about a quarter more to "
        "score, so only requests the drift budget takes into the windows get them)",
    )
    drift_budget: float = Field(
        default=0.03,
        gt=0.0,
        le=1.0,
        description="share of one core the drift task may spend on the work that grows "
        "with traffic (the martingale's ranks and bets, window statistics), and again on "
        "the checks (spaced at least their cost / budget apart); beyond it, requests are "
        "left out of the "
        "windows (counted; chosen by time, never by their records), while the martingale "
        "still takes every record",
    )
    drift_max_features: int = Field(
        default=20,
        ge=1,
        description="features named in the drift metrics; the rest share one overflow label",
    )
    drift_queue_records: int = Field(
        default=200_000,
        ge=1,
        description="records waiting for the drift task at most (beyond: dropped, counted)",
    )
    drift_dir: Path | None = Field(
        default=None,
        description="where worker processes share drift state; default: a drift folder in "
        "PROMETHEUS_MULTIPROC_DIR when set (several workers), else none (one process)",
    )

    def bulk_thread_count(self) -> int:
        """Threads for bulk batches: ``bulk_threads``, or this worker's share of the cores."""
        import os

        if self.bulk_threads:
            return self.bulk_threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, (cores or 1) // self.workers)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.model_name is None and self.bundle_path is None:
            msg = "set ANOMALY_VAE_MODEL_NAME (a registered model) or ANOMALY_VAE_BUNDLE_PATH (a bundle directory)"
            raise ValueError(msg)
        if self.environment != "development":
            token = self.admin_token.strip()
            if token.lower() in INSECURE_TOKENS or len(token) < MIN_TOKEN_LENGTH:
                msg = (
                    "ANOMALY_VAE_ADMIN_TOKEN must be a non-default secret of at least "
                    f"{MIN_TOKEN_LENGTH} characters outside development"
                )
                raise ValueError(msg)
        if self.device != "cpu":
            from anomaly_vae.core import resolve_device

            try:
                resolve_device(self.device)
            except ValueError as exc:
                msg = f"ANOMALY_VAE_DEVICE: {exc}"
                raise ValueError(msg) from exc
        if self.signing_key is not None:
            from anomaly_vae.bundle import MIN_KEY_LENGTH

            if len(self.signing_key.get_secret_value()) < MIN_KEY_LENGTH:
                msg = f"ANOMALY_VAE_SIGNING_KEY must have at least {MIN_KEY_LENGTH} characters"
                raise ValueError(msg)
        return self

    def signing_key_value(self) -> str | None:
        return None if self.signing_key is None else self.signing_key.get_secret_value()
