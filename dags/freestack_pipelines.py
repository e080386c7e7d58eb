"""One Airflow DAG set per pipeline spec in include/pipelines/ (see freestack.dags).

Kept light on purpose: no ML library, connection or network is touched while parsing.
"""

from freestack.dags import build_all

build_all(globals())
