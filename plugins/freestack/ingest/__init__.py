"""Ingest: landing files -> validated lake partitions. Plain Python, no Airflow."""
