"""Grammar-constrained decoding: llguidance against xgrammar and outlines-core (``bench.structured.run``)."""
