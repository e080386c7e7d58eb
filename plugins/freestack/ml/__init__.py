"""Plain, typed PyTorch + pandas: datasets, models, the training loop, metrics.

Nothing here imports Airflow: the same code runs in a task, a notebook or a script.
"""
