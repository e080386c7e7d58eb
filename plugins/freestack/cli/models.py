"""``freestack models``: the model registry's versions and aliases, and a handle on them.

MODEL is a model name, or a pipeline name (then its spec's storage root and model name are used).
``promote``, ``rollback`` and ``alias`` on a pipeline run its ``<p>_promote``/``<p>_rollback`` DAG
(:mod:`freestack.cli.actions`): audited, serialised with the model's other deploys, redeployed. On a bare
model (``--root``) they move the alias directly, and only while no deployment serves it.
``--root`` picks the storage root (default: ``FREESTACK_STORAGE_ROOT``, else the project's). VERSION is a
version name, an alias (``production``, ``previous``, ``staging``...) or ``latest`` (the newest version the
gate did not block). ``promote`` and ``alias`` refuse a version the gate blocked unless ``--allow-blocked``
says why (kept in the aliases' history with the gate's reasons).
"""

from __future__ import annotations

import sys
from json import dumps
from typing import Annotated, Any

import typer
from rich.text import Text

from freestack.cli import actions
from freestack.cli.common import Json, Root, has_pipeline, load_pipeline
from freestack.cli.errors import CliError
from freestack.cli.output import emit, fmt, out, plural, print_json, progress, table
from freestack.registry.core import ModelRegistry, VersionNotFound, registered_models
from freestack.registry.hub import promote_on_hub, push_to_hub
from freestack.serving.records import served_alias, serving_records
from freestack.storage import join, storage_root

app = typer.Typer(
    help="The model registry: versions, aliases, promote, rollback, push to the Hub. MODEL is a model name, or a "
    "pipeline name (then its spec's storage root and model name are used); VERSION is a version name, an alias "
    "(production, previous, staging...) or latest.",
    no_args_is_help=True,
)

Model = Annotated[
    str, typer.Argument(metavar="MODEL", help="Model name (or pipeline name).", show_default=False)
]
Version = Annotated[
    str,
    typer.Argument(
        metavar="VERSION", help="Version, alias (production, previous...) or latest.", show_default=False
    ),
]
Reason = Annotated[str | None, typer.Option(help="Why (kept in the aliases' history).", show_default=False)]
AllowBlocked = Annotated[
    str | None,
    typer.Option(
        "--allow-blocked",
        metavar="WHY",
        help="Why a version the gate blocked may take the alias anyway (kept in the history with the gate's "
        "reasons); without it such a version is refused.",
        show_default=False,
    ),
]


def registry(model: str, root: str | None) -> ModelRegistry:
    """The registry of ``model`` (a pipeline name means its spec's root and model); :class:`CliError`
    naming the models there are when it has none."""
    if root:
        reg = ModelRegistry(root, model)
    elif has_pipeline(model):
        spec = load_pipeline(model)
        reg = ModelRegistry(storage_root(spec.storage_root), spec.model_name)
    else:
        reg = ModelRegistry(storage_root(), model)
    if not reg.folder.exists():
        names = registered_models(reg.root)
        hint = (
            f"models: {', '.join(names)}"
            if names
            else "no model is registered there yet (--root picks another)"
        )
        if has_pipeline(model) and not root:
            hint += f"; pipeline {model!r} registers versions when its {model}_train DAG runs"
        raise CliError(f"no model {reg.model!r} under {join(reg.root, 'registry')}", hint)
    return reg


def _shown(aliases: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sorted(aliases.items()) if k != "history"}


@app.command("list")
def list_(
    model: Annotated[
        str | None,
        typer.Argument(
            metavar="[MODEL]",
            help="Model name (or pipeline name); leave it out to list every model under the root.",
            show_default=False,
        ),
    ] = None,
    root: Root = None,
    json: Json = False,
) -> int:
    """A model's versions (created, test metrics, aliases) and aliases; without MODEL, every model."""
    if model is None:
        return _list_models(storage_root(root), json)
    reg = registry(model, root)
    versions, aliases = reg.versions(), _shown(reg.aliases())
    if json:
        print_json({"model": reg.model, "versions": versions, "aliases": aliases})
        return 0
    console = out()
    if not versions:
        console.print(f"model {reg.model!r} has no registered version under {reg.folder}")
        return 0
    names = sorted({k for v in versions for k in v["metrics"] if k.startswith("test_")})[:4]
    t = table("version", "created", *names, "aliases", right=tuple(names))
    for v in versions:
        t.add_row(
            v["version"], v["created"], *(fmt(v["metrics"].get(n)) for n in names), ", ".join(v["aliases"])
        )
    emit(t, console=console)
    console.print("aliases: " + (", ".join(f"{k} -> {v}" for k, v in aliases.items()) or "none"))
    console.print(f"registry: {reg.folder}")
    return 0


def _list_models(root: Any, json: bool) -> int:
    """Every model registered under ``root``: its number of versions, latest and production versions."""
    rows = []
    for name in registered_models(root):
        reg = ModelRegistry(root, name)
        versions = reg.versions()
        latest = _latest(reg) if versions else None
        production = reg.aliases().get("production")
        rows.append({"model": name, "versions": len(versions), "latest": latest, "production": production})
    if json:
        print_json({"registry": str(join(root, "registry")), "models": rows})
        return 0
    console = out()
    if not rows:
        console.print(f"no model is registered under {join(root, 'registry')} yet (--root picks another)")
        return 0
    t = table("model", "versions", "latest", "production", right=("versions",))
    for r in rows:
        t.add_row(r["model"], str(r["versions"]), r["latest"] or "-", r["production"] or "-")
    emit(t, console=console)
    console.print(f"registry: {join(root, 'registry')}")
    return 0


def _latest(reg: ModelRegistry) -> str | None:
    """What ``latest`` names (the newest version the gate did not block); None when it blocked them all."""
    try:
        return reg.latest()
    except VersionNotFound:
        return None


def gate_lines(gate: dict[str, Any], limit: int = 4) -> list[str]:
    """The gate's decision and (up to ``limit``) reasons."""
    if not gate:
        return ["no gate decision recorded"]
    promoted = gate.get("promote", gate.get("decision") == "promote")
    reasons = list(gate.get("reasons") or [])
    verdict = "promoted" if promoted else "BLOCKED"
    if gate.get("decided_again"):
        verdict += (
            f" (decided again against production {gate.get('champion_version') or '(none)'} when promote ran)"
        )
    lines = [verdict] + [f"- {r}" for r in reasons[:limit]]
    if len(reasons) > limit:
        lines.append(f"- ... {len(reasons) - limit} more (--details)")
    return lines


@app.command()
def show(
    model: Model,
    version: Version,
    root: Root = None,
    json: Json = False,
    details: Annotated[
        bool, typer.Option(help="Also all metrics, the lineage, the files and the model card.")
    ] = False,
) -> int:
    """One version on a screen: created, test metrics, gate decision, aliases (--details: the rest); its
    files are checked against the registration manifest first (a changed one is named, and refused)."""
    reg = registry(model, root)
    info = reg.get(version)
    reg.verify(info["version"])
    gate = reg.gate_of(info["version"], info["lineage"])  # a decision taken again at promotion holds
    if json:
        print_json({**info, "gate": gate})
        return 0
    console = out()
    console.print(f"{reg.model} {info['version']}", style="bold")
    facts = table("", "", right=())
    facts.show_header = False
    facts.add_row("created", str(info["created"]))
    facts.add_row("aliases", ", ".join(info["aliases"]) or "none")
    verdict, *reasons = gate_lines(gate, 100 if details else 4)
    style = "bold green" if verdict.startswith("promoted") else "bold red"
    facts.add_row("gate", Text.assemble((verdict, style), "".join(f"\n{r}" for r in reasons)))
    facts.add_row("uri", info["uri"])
    facts.add_row("files", f"{plural(len(info['files']), 'file')}, each as registered (sha256)")
    emit(facts, console=console)
    metrics = (
        info["metrics"] if details else {k: v for k, v in info["metrics"].items() if k.startswith("test_")}
    )
    shown = list(metrics.items())[: None if details else 10]
    t = table("metric", "value", right=("value",))
    for k, v in shown:
        t.add_row(k, fmt(v))
    emit(t, console=console)
    if not details:
        console.print(
            f"more: freestack models show {model} {version} --details  (lineage, files, model card)"
        )
        return 0
    _details(console, info)
    return 0


def _details(console, info: dict[str, Any]) -> None:
    lineage = info["lineage"]
    t = table("lineage", "")
    for key in (
        "window",
        "partitions",
        "spec_hash",
        "code_version",
        "airflow",
        "evaluation",
        "wandb",
        "sweep",
    ):
        if lineage.get(key) is not None:
            value = lineage[key]
            if key == "partitions" and isinstance(value, list):
                value = plural(len(value), "partition")
            t.add_row(key, value if isinstance(value, str) else dumps(value, default=str))
    emit(t, console=console)
    files = table("file", "bytes", right=("bytes",))
    for name, meta in sorted(info["files"].items()):
        files.add_row(name, str(meta.get("size", "?") if isinstance(meta, dict) else meta))
    emit(files, console=console)
    print(info["card"] or "(no model card)", flush=True)  # markdown as it is stored


Timeout = Annotated[float, typer.Option(help="Seconds to follow the DAG run before leaving it to go on.")]


def _move(
    model: str,
    root: str | None,
    alias: str,
    kind: str,
    conf: dict[str, str | None],
    reason: str | None,
    timeout: float,
    direct,
) -> int:
    """A pipeline's alias moves as a run of its DAG (audited, serialised, redeployed: freestack.cli.actions);
    a bare model's only while no deployment serves that alias (nothing to redeploy), else refused."""
    if has_pipeline(model) and not root:
        note = f"freestack models {kind} from the command line" + (f": {reason}" if reason else "")
        return actions.run_and_follow(
            f"{model}_{'rollback' if kind == 'rollback' else 'promote'}", conf, note, timeout
        )
    reg = registry(model, root)
    served = _served_by(reg, alias)
    if served:
        raise CliError(
            f"{reg.model}'s {alias} is served by deployment {served}: moving it here would not redeploy it",
            f"move it through the pipeline's DAG run: freestack models {kind} PIPELINE ... (the pipeline "
            f"whose model is {reg.model}), or the Models page of the freestack views",
        )
    moved = _shown(direct(reg))
    out().print(f"{reg.model}: " + ", ".join(f"{k} -> {v}" for k, v in moved.items()))
    return 0


def _as_asked(model: str, root: str | None, alias: str, say: bool = True) -> dict[str, Any]:
    """A pipeline's aliases as the user asks (for the run's form: the move happens only while the alias
    still is what it was now, and a rollback goes to the version previous names now); {} for a bare model."""
    if not has_pipeline(model) or root:
        return {}
    aliases = registry(model, root).aliases()
    if say:
        out().print(
            f"{alias} is {aliases.get(alias) or '(not set)'} now: the run moves it only while it still is"
        )
    return aliases


def _served_by(reg: ModelRegistry, alias: str) -> str | None:
    """The deployment serving ``alias`` of the model, if any."""
    return next(
        (r["name"] for r in serving_records(str(reg.root), reg.model) if served_alias(r) == alias), None
    )


def _by() -> str:
    import getpass

    return f"freestack CLI ({getpass.getuser()})"


@app.command()
def promote(
    model: Model,
    version: Version,
    root: Root = None,
    reason: Reason = None,
    timeout: Timeout = 900,
    allow_blocked: AllowBlocked = None,
) -> int:
    """production <- VERSION, previous <- the old production; redeployed by a <p>_promote run (which fails,
    changing nothing, if another move lands first). A version the gate blocked takes --allow-blocked WHY."""
    now = _as_asked(model, root, "production")
    conf = {
        "version": version,
        "alias": "production",
        "reason": reason or "",
        "expect": now.get("production"),
    }
    return _move(
        model,
        root,
        "production",
        "promote",
        {**conf, **({"allow_blocked": allow_blocked} if allow_blocked else {})},
        reason,
        timeout,
        lambda reg: reg.promote(version, reason=reason, by=_by(), allow_blocked=allow_blocked),
    )


@app.command()
def rollback(model: Model, root: Root = None, reason: Reason = None, timeout: Timeout = 900) -> int:
    """production <- previous (the version it names now); redeployed by a <p>_rollback run (which fails,
    changing nothing, if another move lands first)."""
    now = _as_asked(model, root, "production", say=False)
    if now and not now.get("previous"):
        raise CliError(
            f"{model} has no previous version to roll back to (production: {now.get('production') or 'none'})",
            f"point production at a version instead: freestack models promote {model} VERSION",
        )
    conf = (
        {"version": now["previous"], "expect_production": now.get("production")}
        if now
        else {"version": "previous"}
    )
    if now:
        out().print(
            f"rolling back production from {now.get('production')} to {now['previous']}: the run moves it "
            "only while production is still the former"
        )
    return _move(
        model,
        root,
        "production",
        "rollback",
        conf,
        reason,
        timeout,
        lambda reg: reg.rollback(reason=reason, by=_by()),
    )


@app.command()
def alias(
    model: Model,
    alias: Annotated[
        str, typer.Argument(metavar="ALIAS", help="The alias to move, e.g. staging.", show_default=False)
    ],
    version: Version,
    root: Root = None,
    reason: Reason = None,
    timeout: Timeout = 900,
    allow_blocked: AllowBlocked = None,
) -> int:
    """Point ALIAS (e.g. staging) at a version, through a <p>_promote run. A version the gate blocked takes
    --allow-blocked WHY."""
    now = _as_asked(model, root, alias)
    conf = {"version": version, "alias": alias, "reason": reason or "", "expect": now.get(alias)}
    return _move(
        model,
        root,
        alias,
        "alias",
        {**conf, **({"allow_blocked": allow_blocked} if allow_blocked else {})},
        reason,
        timeout,
        lambda reg: reg.set_alias(alias, version, reason=reason, by=_by(), allow_blocked=allow_blocked),
    )


@app.command()
def push(
    model: Model,
    version: Version,
    repo: Annotated[str, typer.Option(help="Hub repo id, e.g. my-org/digits.", show_default=False)],
    root: Root = None,
    conn: Annotated[
        str, typer.Option(help="The huggingface connection (token, endpoint).")
    ] = "huggingface_default",
    promote: Annotated[
        bool, typer.Option("--promote", help="Also move the Hub's production tag to it.")
    ] = False,
) -> int:
    """Push a version to the Hugging Face Hub (one commit, tagged with the version)."""
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

    from freestack.hooks.huggingface import HuggingFaceHook

    reg = registry(model, root)
    name = reg.resolve(version)
    hub = HuggingFaceHook(conn).settings
    if not hub.token:
        print(
            f"not pushed: connection {conn!r} has no token; {reg.model} {name} stays local", file=sys.stderr
        )
        return 0
    size = sum(m.get("size", 0) for m in reg.get(name)["files"].values() if isinstance(m, dict))
    # the Hub client reports no progress: a spinner and the elapsed time while it uploads
    with progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()) as bar:
        bar.add_task(f"pushing {reg.model} {name} ({size / 1e6:.1f} MB) to {repo}", total=None)
        result = push_to_hub(reg, name, repo, hub.token, endpoint=hub.endpoint)
        if result is not None and promote:
            promote_on_hub(repo, result["version"], hub.token, endpoint=hub.endpoint)
    assert result is not None
    out().print(
        f"pushed {reg.model} {result['version']} to {result['repo_id']}: commit {result['commit']}, tag {result['tag']}"
    )
    if promote:
        out().print(f"moved tag production -> {result['version']}")
    return 0


__all__ = ["app", "gate_lines", "registry"]
