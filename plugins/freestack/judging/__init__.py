"""The LLM judge, a service of two stages: the evaluate stage's gate judges a candidate's answers with it, the
monitor judges a sample of the served answers (:mod:`.client`: the judging; :mod:`.spec`: its settings)."""
