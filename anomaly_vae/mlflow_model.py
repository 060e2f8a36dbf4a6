"""The MLflow pyfunc model, logged "from code": the installed package is the code and the
detector bundle is the artifact, so nothing is pickled into the model.

``mlflow models serve`` and ``mlflow.pyfunc.spark_udf`` load this file; ``predict``
returns the same per-row frame as :meth:`TabularDetector.score`.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class DetectorModel(PythonModel):
    """pyfunc wrapper around a detector bundle (artifact key ``bundle``)."""

    def load_context(self, context: Any) -> None:
        from anomaly_vae.detector import TabularDetector

        self.detector = TabularDetector.load(context.artifacts["bundle"])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        k = int(params["k"]) if params and params.get("k") is not None else None
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return self.detector.score(frame, k=k, allow_extra=True).reset_index(drop=True)


mlflow.models.set_model(DetectorModel())
