"""The Seldon runtime: seldon-core 1.17.1's REST app for a freestack model under gunicorn
(:mod:`.server`), with freestack's worker (:mod:`.worker`), Seldon's request checks
(:mod:`.request_checks`), adaptive batching (:mod:`.batching`), plain predictions without Flask
(:mod:`.direct_predict`, :mod:`.lighter_flask`), buffered metrics (:mod:`.metrics`) and Seldon's model
class (:mod:`.model`). It imports the core, never the MLServer runtime."""
