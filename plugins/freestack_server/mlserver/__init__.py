"""The MLServer runtime: MLServer 1.7.1 started for a freestack model (:mod:`.server`), its runtime
class and the V2 (Open Inference Protocol) model (:mod:`.runtime`, with the binary tensor extension
:mod:`.binary`), the OpenAI API (:mod:`.openai`, its requests :mod:`.protocol`), LoRA adapters
(:mod:`.adapters`), the key every model route asks for (:mod:`.keys`) and freestack's metrics (:mod:`.metrics`).
It imports the core, never the Seldon runtime."""
