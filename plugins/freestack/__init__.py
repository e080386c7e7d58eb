"""freestack: the free, end-to-end ML stack on Apache Airflow 3.

This module stays light: Airflow imports it for provider discovery in every process.
"""

from __future__ import annotations

__version__ = "0.1.0"


def get_provider_info() -> dict:
    """Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""
    return {
        "package-name": "freestack",
        "name": "freestack",
        "description": "freestack: storage (file, S3, data://), ingest, training, sweeps, registry and serving.",
        "versions": [__version__],
        "filesystems": ["freestack.storage.datafs"],
        "connection-types": [
            {
                "hook-class-name": "freestack.hooks.datastore.DataStoreHook",
                "connection-type": "freestack_data",
            },
            {
                "hook-class-name": "freestack.hooks.wandb.WandbHook",
                "connection-type": "wandb",
            },
            {
                "hook-class-name": "freestack.hooks.huggingface.HuggingFaceHook",
                "connection-type": "huggingface",
            },
        ],
        "extra-links": ["freestack.operator_links.WandbRunLink"],
    }
