"""One Airflow DAG set per pipeline spec in include/pipelines/ (see freestack.dags).

Kept light on purpose: no ML library, connection or network is touched while parsing.

The DAG processor imports the ``airflow.*`` modules a DAG file names once, in its own process, before
it forks a child for each parse of the file (``[dag_processor] parsing_pre_import_modules``, on by
default). Named here are the provider modules building the DAGs loads that the processor has not
loaded already: the asset URI handlers every ``Asset`` looks up (the Amazon provider's imports boto3)
and the approval operator. A parse then pays for freestack's modules and the specs only.
"""

import airflow.providers.amazon.aws.assets.s3  # noqa: F401
import airflow.providers.common.compat.assets  # noqa: F401
import airflow.providers.standard.operators.hitl  # noqa: F401

from freestack.dags import build_all

build_all(globals())
