"""Hyperparameter sweeps with W&B's semantics: a local controller over object storage, or a W&B server.

``spec``: the ``sweep:`` block (W&B's schema); ``core``: the local controller and its agents (trial
leases by compare-and-swap on the storage root); ``trials``: one trial's training; ``report``: the table
of trials and the best one; ``wandb_sweep``: the same agents against a W&B sweep server.
"""
