"""What only language models need, on top of the generic ML core (:mod:`freestack.ml`), which imports
nothing from here: a language model plugs into the generic loop through the hooks it asks every model for
(``training_loss``, ``split_metrics``, ``seen_tokens``, ``close``).

- :mod:`~freestack.ml.lm.chat`: conversations: which columns hold them, their turns parsed and checked;
- :mod:`~freestack.ml.lm.prompts`: the tokenizer and its chat template, training rows encoded, prompts
  built and cut;
- :mod:`~freestack.ml.lm.causal`: the causal LM the loop trains, its versions loaded;
- :mod:`~freestack.ml.lm.answers` and :mod:`~freestack.ml.lm.sampling`: what a generation asks and answers,
  and batched ``generate``;
- :mod:`~freestack.ml.lm.engine` and :mod:`~freestack.ml.lm.constrained`: the model server's continuous
  batching, and grammar-constrained decoding;
- :mod:`~freestack.ml.lm.rewards`, :mod:`~freestack.ml.lm.rollouts`, :mod:`~freestack.ml.lm.grpo` and
  :mod:`~freestack.ml.lm.preference`: the objectives past SFT (GRPO, DPO).
"""
