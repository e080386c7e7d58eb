"""Batch scoring: a registered version scores the lake (or a folder of Parquet files) interval by
interval, one Parquet file of scores per interval, published atomically (``<p>_score``)."""
