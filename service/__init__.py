"""The FastAPI scoring service, installed as ``anomaly_vae.service``.

``app`` builds it (:func:`~anomaly_vae.service.app.create_app`); ``routers/`` holds the
routes (scoring, images, models, operations); ``schemas`` the request and response
models; ``parsing`` turns request bodies into frames and images and checks the limits;
``deps`` the FastAPI dependencies (settings, model store, batcher, current model);
``errors`` the JSON error shape; ``settings``, ``model_store``, ``batching`` and
``metrics`` the rest. Modules here import each other relatively and never import
``anomaly_vae.pipelines``.
"""
