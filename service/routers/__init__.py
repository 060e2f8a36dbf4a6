"""The service's routes, one router per concern: ``scoring`` (tables and MLflow's
protocol), ``images``, ``models`` (what is loaded, reload) and ``ops`` (health,
readiness, metrics)."""
