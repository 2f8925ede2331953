"""Optuna glue: study creation, pinning, warm start, the objective, the worker loop, retries and stopping."""
