"""Batch scoring benchmark (``python -m bench.score.run``): see bench/README.md."""
