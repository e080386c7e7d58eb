"""Airflow import errors for invalid pipeline specs, one file apart from the DAGs (see freestack.dags).

Airflow marks every DAG of a file with an import error as stale, so the pipelines' DAG file never
raises: it builds the valid specs, and this file raises for the invalid ones. The UI's "DAG Import
Errors" banner then names each broken spec file, its field and the fix, while every other pipeline
stays live and keeps scheduling. It defines no DAG.
"""

from freestack.dags import raise_spec_errors

raise_spec_errors()
