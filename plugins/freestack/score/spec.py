"""A pipeline spec's ``score:`` block: how ``<p>_score`` scores the lake with a registered version.

    score:
      schedule: "@daily"            # a cron or a preset: one data interval per run; backfill to rescore
      input: lake                   # this pipeline's lake, lake:<pipeline> (another's), or a folder URI
      version: production           # an alias (resolved when the run starts, recorded) or a version name
      output: "scores/{pipeline}/ds={ds}/"   # under the storage root, or an s3:// / data:// / file:// URI
      columns: [prediction, probabilities]   # what is written beside the key (a regression: the value)
      batch_rows: 4096              # rows read, encoded and predicted at a time
      max_error_fraction: null      # rows not scored are quarantined; above this fraction: fail
      monitor: true                 # a sample of each day to the request log: <p>_monitor judges it
      cache: true                   # a day whose input, version and settings did not change is not rescored
      generation:                   # a text-generation version's answers (see GenerationScore)
        max_new_tokens: 64

A folder ``input`` is a URI template with ``{ds}`` (``s3://bucket/customers/ds={ds}/``, or the pipeline's own
landing folder): its Parquet and CSV files are the day's rows, with the model's feature columns and the key
(a CSV's image column holds paths under the folder), checked with ingest's row rules against
``source.schema``, or, with no table in it, its images at any depth are one row each (for a model of one
image column). No Airflow, no heavy imports: validated when the spec is read (DAG parse time).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from freestack.judging.spec import Endpoint
from freestack.specbase import SpecModel

_PIPELINE = re.compile(r"^lake(:[a-z][a-z0-9_]{0,62})?$")
_URI = re.compile(r"^(file|s3|data)://.+\{ds\}")


class GenerationScore(SpecModel):
    """How ``<p>_score`` answers a text-generation version's prompt rows: greedily (temperature 0), so that
    a rescore gives the same answers and each equals the model server's at temperature 0."""

    max_new_tokens: int = Field(default=64, ge=1, le=4096, description="The most tokens of each answer.")
    temperature: float = Field(
        default=0.0,
        description="0: greedy decoding, the one setting batch generation takes (a rescore reproduces the day)",
    )
    max_prompt_tokens: int | None = Field(
        default=None, ge=1, description="The most tokens of a prompt (null: the version's max_length)."
    )
    truncate: Literal["left", "refuse"] = Field(
        default="left",
        description="A prompt over max_prompt_tokens: left keeps its last tokens (the row says truncated); "
        "refuse quarantines the row",
    )
    max_rows: int = Field(
        default=100_000,
        ge=1,
        description="The most prompt rows of a day: a day with more fails before anything is generated",
    )
    batching: Literal["auto", "continuous", "padded"] = Field(
        default="auto",
        description="continuous: the model server's continuous batching; padded: length-sorted, left-padded "
        "batches of batch_size prompts through generate; auto: padded on a CPU (where it is faster), "
        "continuous on an accelerator. The same answers either way; the manifest says which ran",
    )
    batch_size: int = Field(default=16, ge=1, le=1024, description="The prompts of one padded batch.")
    max_requests: int = Field(
        default=64, ge=1, le=4096, description="The most prompts generated at once (continuous batching)."
    )
    kv_cache_tokens: int = Field(default=16384, ge=256, description="The KV cache's size in tokens.")
    max_batch_tokens: int = Field(default=1024, ge=16, description="The most tokens of one decoding step.")

    @field_validator("temperature")
    @classmethod
    def _greedy(cls, v: float) -> float:
        if v != 0:
            raise ValueError(
                f"temperature {v:g}: batch generation is greedy (temperature 0), so that a rescore "
                "reproduces a day and answers equal the model server's at temperature 0"
            )
        return v


class LandSpec(SpecModel):
    """Where a teacher's answers land as another pipeline's instruction-tuning data (``score.teacher.land``)."""

    pipeline: str = Field(
        pattern=r"^[a-z][a-z0-9_]{0,62}$",
        description="The student pipeline: each day's answers are written into its landing folder for the "
        "day, in its source format (csv or parquet), as its key and its model.data columns (prompt and "
        "response, or messages with the answer as the last turn); its ingest takes them as any landed file.",
    )
    finished_only: bool = Field(
        default=True,
        description="Land only the answers the teacher ended itself (finish_reason stop): an answer cut at "
        "max_tokens is not one to learn. The manifest counts those left out.",
    )


class TeacherSpec(Endpoint):
    """A teacher that answers the day's prompts instead of a registered version (``score.teacher``): any
    OpenAI-compatible chat endpoint (a freestack deployment, a hosted API), asked through the ``openai``
    client, one chat completion per row; the answers are the day's scores, and, with ``land``, the next
    pipeline's instruction-tuning data (distillation)."""

    max_tokens: int = Field(default=256, ge=1, le=32_768, description="The most tokens of each answer.")
    temperature: float = Field(
        default=0.0, ge=0, le=2, description="The teacher's sampling temperature (0: its greedy answer)."
    )
    seed: int | None = Field(default=None, description="Sent with every request, for endpoints that take it.")
    retries: int = Field(
        default=4,
        ge=0,
        le=10,
        description="Retries of a request answered 408, 409, 429 or 5xx, or not answered, with exponential "
        "backoff (honouring Retry-After): the openai client's. A row still failing is quarantined with why.",
    )
    concurrency: int = Field(default=4, ge=1, le=256, description="Requests in flight at once.")
    max_rows: int = Field(
        default=100_000,
        ge=1,
        description="The most prompt rows of a day: a day with more fails before anything is asked.",
    )
    land: LandSpec | None = Field(
        default=None, description="{pipeline: <student>}: land the answers as that pipeline's SFT data."
    )


class ScoreSpec(SpecModel):
    schedule: str = Field(
        default="@daily",
        description="The score DAG's schedule (a cron or a preset): one data interval per run.",
    )
    input: str = Field(
        default="lake",
        description="What to score: lake (this pipeline's lake partitions), "
        "lake:<pipeline> (another pipeline's, with the same feature columns), or a folder URI "
        "template with {ds} holding Parquet or CSV files, or images",
    )
    version: str = Field(
        default="production",
        min_length=1,
        max_length=200,
        description="An alias (resolved when the run starts; the run records the version) or a "
        "registered version name",
    )
    output: str = Field(
        default="scores/{pipeline}/ds={ds}/",
        description="Where each interval's scores go: a path under the storage root, or a URI; "
        "{pipeline} and {ds} are filled in",
    )
    columns: list[Literal["prediction", "probabilities"]] = Field(
        default_factory=lambda: ["prediction", "probabilities"],
        min_length=1,
        description="Written beside the key: the predicted class (or value), the class probabilities "
        "(classification only)",
    )
    batch_rows: int = Field(
        default=4096, ge=1, le=1_000_000, description="Rows read, encoded and predicted at a time."
    )
    max_error_fraction: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Rows not scored (refused by the schema's rules or the "
        "version's preprocessing) are quarantined with the reason; "
        "above this fraction of a day's rows the day fails, nothing "
        "is published and those rows are kept in "
        "_failed_quarantine.parquet (null: never)",
    )
    queue: str | None = Field(default=None, description="The workers' queue of the score task (e.g. gpu).")
    monitor: bool = Field(
        default=True,
        description="Log a sample of each day's inputs and predictions (256 rows "
        "a batch) to the model's request log, so that <p>_monitor judges batch-scored days "
        "as it judges served traffic",
    )
    cache: bool = Field(
        default=True,
        description="A day whose input files' bytes, resolved version, score settings and freestack's code "
        "did not change since it was published keeps its scores (docs/stages/score.md, Caching).",
    )

    generation: GenerationScore | None = Field(
        default=None,
        description="For a text-generation model: how its answers are generated (default: greedy, 64 tokens)",
    )
    teacher: TeacherSpec | None = Field(
        default=None,
        description="A text-generation pipeline's prompts answered by an OpenAI-compatible endpoint instead of "
        "a registered version (version, columns, generation and cache are not read): distillation's data",
    )

    @field_validator("input")
    @classmethod
    def _input(cls, v: str) -> str:
        if not (_PIPELINE.match(v) or _URI.match(v)):
            raise ValueError(
                f"input {v!r} must be lake, lake:<pipeline>, or a file://, s3:// or data:// folder "
                "URI with {ds} in it, e.g. s3://bucket/customers/ds={ds}/"
            )
        return v

    @field_validator("output")
    @classmethod
    def _output(cls, v: str) -> str:
        if "{ds}" not in v:
            raise ValueError(
                f"output {v!r} must hold {{ds}}: each interval's scores go to a folder of their own"
            )
        if "://" in v and v.split("://", 1)[0] not in ("file", "s3", "data"):
            raise ValueError(
                f"output {v!r} must be a path under the storage root or a file://, s3:// or data:// URI"
            )
        return v

    @property
    def lake_pipeline(self) -> str | None:
        """The pipeline whose lake is scored ("" for this one's), or None for a folder input."""
        if self.input == "lake":
            return ""
        return self.input.split(":", 1)[1] if self.input.startswith("lake:") else None


__all__ = ["GenerationScore", "LandSpec", "ScoreSpec", "TeacherSpec"]
