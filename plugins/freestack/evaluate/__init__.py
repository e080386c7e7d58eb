"""Evaluate a candidate against the champion, and the promotion gate."""
