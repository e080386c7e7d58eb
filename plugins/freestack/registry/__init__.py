"""The model registry stage: immutable versions in Hugging Face layout, aliases, model cards, the Hub.

- :mod:`freestack.registry.names`     the layout and naming rules (shared with the model server)
- :mod:`freestack.registry.core`      versions and aliases (:class:`~freestack.registry.core.ModelRegistry`)
- :mod:`freestack.registry.card`      model cards
- :mod:`freestack.registry.hub`       push to / load from the Hugging Face Hub
- :mod:`freestack.registry.operators` ``promote`` and ``move_production`` (Airflow)

Imports nothing: the model server imports :mod:`~freestack.registry.names` alone.
"""
