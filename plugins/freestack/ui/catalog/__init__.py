"""What the freestack pages show, read from the storage root (local, ``s3://``, ``data://``) through the
storage layer, one module a page family:

- :mod:`.model_pages`: models, their versions, gate decisions, aliases and the deployments serving them;
- :mod:`.sweep_pages`: sweeps, their trials, status and parameter importance;
- :mod:`.deployment_pages`: deployments, their traffic split and what their servers answer now;
- :mod:`.lake_pages`: lake partitions; :mod:`.monitoring_pages`: judged intervals and their reports;
- :mod:`.score_pages`: scored days;
- :mod:`.common`: what they all read with (storage reads side by side, the pipelines).

Every reader returns a typed model (the JSON endpoints return the same models). Committed versions are
immutable, so their rows are kept for the life of the process (``model_pages._VERSIONS``): a page with
1,000 versions reads only the folder listing and ``aliases.json`` once warm; the first read fetches the
versions' small files side by side (:data:`.common.READERS` threads), which matters on S3. The app and
the tasks' links import the family modules themselves.
"""
