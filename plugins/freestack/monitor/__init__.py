"""Monitoring served models: the request log's inputs and predictions against each version's reference
statistics, per interval (``<p>_monitor``); alerts and retraining on drift."""
