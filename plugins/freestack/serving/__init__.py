"""Serving with Seldon Core: the deploy spec, the model loader, the local supervisor, Kubernetes manifests.

Light at import: the Airflow side imports it at parse time, the serving environment
(``.venv-serving``: seldon-core 1.17.1, no Airflow) imports the loader from it.
"""
