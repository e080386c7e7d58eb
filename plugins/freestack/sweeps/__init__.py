"""Hyperparameter sweeps with W&B's semantics: a local controller over object storage, or a W&B server.

``config``: the ``sweep:`` block (W&B's schema); ``controller``: the local controller and its agents
(trial leases by compare-and-swap on the storage root); ``report``: the table of trials and the best
one; ``server``: the same agents against a W&B sweep server.
"""
