"""jhub-spark-scaler: autoscale a Spark standalone worker pool for JupyterHub users."""

__version__ = "0.1.0"
