"""The MLflow pyfunc model, logged "from code": the installed package is the code and the
detector bundle is the artifact, so nothing is pickled into the model.

``mlflow models serve`` and ``mlflow.pyfunc.spark_udf`` load this file. For a tabular
bundle ``predict`` takes a DataFrame and returns the same per-row frame as
:meth:`TabularDetector.score`; for an image bundle it takes uint8 images [N, C, H, W]
(or [N, H, W] for one channel; the MLflow "inputs" tensor form) and returns
:meth:`ImageDetector.score`'s frame.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class DetectorModel(PythonModel):
    """pyfunc wrapper around a detector bundle (artifact key ``bundle``)."""

    def load_context(self, context: Any) -> None:
        from anomaly_vae import load_detector

        self.detector = load_detector(context.artifacts["bundle"])

    def predict(
        self, context: Any, model_input: Any, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        from anomaly_vae.image_detector import ImageDetector

        k = int(params["k"]) if params and params.get("k") is not None else None
        if isinstance(self.detector, ImageDetector):
            images = (
                model_input.to_numpy() if isinstance(model_input, pd.DataFrame) else model_input
            )
            return self.detector.score(np.asarray(images), k=k)
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return self.detector.score(frame, k=k, allow_extra=True).reset_index(drop=True)


mlflow.models.set_model(DetectorModel())
