"""What both runtimes of the model server serve through: the configuration (:mod:`.config`), the
deployment's stable address and its supervisor's lease (:mod:`.address`), fetching and verifying a version
(:mod:`.fetch`), the served model (:mod:`.model`) and its generation service (:mod:`.generation`), raw
inputs (:mod:`.raw`), the request log (:mod:`.requestlog`) and the errors a request meets
(:mod:`.errors`). It imports neither runtime."""
