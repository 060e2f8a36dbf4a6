"""Batch pipelines, installed as ``anomaly_vae.pipelines``: ``partitions`` (discovery,
manifests, atomic commit) and ``tables`` (reading, output rows) shared by the two engines,
``batch`` (the run and the local engine) and ``spark`` (the Spark engine), ``models``
(model addressing: bundle paths and ``models:/`` URIs) and ``train`` (the gated training
pipeline). Modules here import each other relatively and never import
``anomaly_vae.service``.
"""
