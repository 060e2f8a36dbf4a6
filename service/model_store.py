"""The model the service scores with: loaded from the MLflow registry (name + alias) or a
bundle directory, swapped atomically on reload, kept when a new version fails to load."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_vae import load_detector
from anomaly_vae.detector import TabularDetector
from anomaly_vae.image_detector import ImageDetector

from . import metrics
from .settings import Settings

log = logging.getLogger(__name__)

_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s'\"/:]+/)*([^\s'\"/:]+)")


def redact_paths(text: str) -> str:
    """``text`` with every absolute path cut to its last part: errors reach clients
    (/readyz, /v1/models, a failed reload) and must not show the server's layout."""
    return _PATH.sub(lambda m: m.group(1), text)


@dataclass(frozen=True)
class LoadedModel:
    """A detector and where it came from. ``version`` is None for a plain bundle."""

    detector: TabularDetector | ImageDetector
    name: str
    version: int | None
    alias: str | None
    source: str
    loaded_at: str

    @property
    def is_image(self) -> bool:
        return isinstance(self.detector, ImageDetector)

    @functools.cached_property
    def score_decile_cuts(self) -> np.ndarray:
        """The 9 inner cuts [9] of this version's calibration scores' deciles (score =
        -normality, higher is more anomalous), computed once per loaded version."""
        reference = np.asarray(self.detector.calibration_.reference, dtype=np.float64)
        return np.quantile(-reference, np.linspace(0.1, 0.9, 9))

    def describe(self) -> dict[str, Any]:
        det = self.detector
        common = {
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "source": redact_paths(self.source),
            "loaded_at": self.loaded_at,
        }
        if isinstance(det, ImageDetector):
            return {
                **common,
                "kind": "image",
                "k": det.sampler_.k,
                "image_shape": list(det.shape_),
                "likelihood": det.likelihood,
                "score": det.score_kind,
                # lambda of the complexity score (fitted or given); None for other scores
                "complexity_weight": (
                    det.complexity_weight_ if det.score_kind == "complexity" else None
                ),
                "calibration": det.calibration_.summary(),
            }
        return {
            **common,
            "kind": "tabular",
            "k": det.sampler_.k,
            "columns": [c.to_dict() for c in det.schema_.columns],
            "id_column": det.schema_.id_column,
            # text columns judged on their own: p_value and is_outlier combine them
            "channel_columns": list(getattr(det, "channels_", {})),
            # the share of alpha given to judging each column on its own (0: none)
            "marginal_channel": (
                det.marginal_weight_ if getattr(det, "marginal_calibration_", None) else 0.0
            ),
            "calibration": det.calibration_.summary(),
        }


class ModelStore:
    """Holds the current :class:`LoadedModel`; ``reload`` replaces it in one assignment,
    so a request sees either the old or the new model, never a half-loaded one."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.current: LoadedModel | None = None
        #: the latest load attempt's error (paths redacted), None once a load works
        self.last_error: str | None = None
        self.failing_since: str | None = None
        self._lock = threading.Lock()
        self._configured = False
        if settings.model_name is not None:
            # the service retries with its own backoff: MLflow's client would otherwise
            # retry an unreachable server for minutes inside one call
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            # a progress bar per download, every alias flip, is noise in a service's log
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    def _now(self) -> str:
        return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    def _load(self) -> LoadedModel:
        s = self.settings
        key = s.signing_key_value()

        def load(path: Path) -> Any:
            return load_detector(path, signing_key=key).to(s.device)

        if s.bundle_path is not None:
            det = load(s.bundle_path)
            return LoadedModel(det, s.bundle_path.name, None, None, str(s.bundle_path), self._now())
        from anomaly_vae import registry

        assert s.model_name is not None
        if not self._configured:
            # at the first load, not at start-up: configuring talks to the tracking
            # server, and one that is down must not keep the service from listening
            registry.configure(s.tracking_store)
            self._configured = True
        info = registry.resolve(s.model_name, s.model_alias)
        if self.current is not None and self.current.version == info.version:
            return self.current
        if s.cache_dir is not None:
            dest = Path(s.cache_dir) / f"{s.model_name}-v{info.version}"
            det = load(registry.download_bundle(s.model_name, info.version, dest))
        else:
            # loading reads every file into memory, so the download is not kept: a
            # temporary folder per attempt, removed whether the load worked or not
            with tempfile.TemporaryDirectory(prefix=f"{s.model_name}-v{info.version}-") as tmp:
                det = load(registry.download_bundle(s.model_name, info.version, tmp))
        return LoadedModel(
            det,
            s.model_name,
            info.version,
            s.model_alias,
            f"models:/{s.model_name}/{info.version}",
            self._now(),
        )

    def reload(self) -> tuple[bool, LoadedModel | None]:
        """Load what the settings point at now. Returns (changed, current model). On
        failure the previous model stays and the error is kept in ``last_error``."""
        with self._lock:
            old = self.current
            try:
                new = self._load()
            except Exception as exc:
                self.last_error = redact_paths(f"{type(exc).__name__}: {exc}")
                self.failing_since = self.failing_since or self._now()
                metrics.LOADS.labels("failure").inc()
                metrics.LOAD_FAILING.set(1)
                log.warning(
                    "model load failed, keeping %s: %s", old and old.version, self.last_error
                )
                raise
            self.last_error = None
            self.failing_since = None
            metrics.LOAD_FAILING.set(0)
            if new is old:
                return False, old
            self.current = new
            metrics.LOADS.labels("success").inc()
            if old is not None:
                metrics.MODEL_INFO.labels(old.name, str(old.version), str(old.alias)).set(0)
                metrics.set_model(old, loaded=False)
            metrics.MODEL_INFO.labels(new.name, str(new.version), str(new.alias)).set(1)
            metrics.set_model(new, loaded=True)
            log.info("serving %s version %s", new.name, new.version)
            return True, new
