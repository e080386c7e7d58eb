"""The registry's commands in the ``freestack`` CLI.

    freestack models list MODEL [--json]                      versions (created, metrics, aliases), aliases
    freestack models show MODEL VERSION_OR_ALIAS [--json]     one version: metrics, lineage, model card
    freestack models promote MODEL VERSION_OR_ALIAS           production <- it, previous <- old production
    freestack models rollback MODEL                           production <- previous
    freestack models alias MODEL ALIAS VERSION_OR_ALIAS       e.g. staging
    freestack models push MODEL VERSION_OR_ALIAS --repo ORG/NAME [--conn huggingface_default] [--promote]

MODEL is a model name, or a pipeline name (then its spec's storage root and model name are used).
``--root`` picks the storage root (default: ``FREESTACK_STORAGE_ROOT``, else the project's).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _registry(args: argparse.Namespace):
    from freestack.registry.core import ModelRegistry
    from freestack.storage import storage_root

    if args.root:
        return ModelRegistry(args.root, args.model)
    try:
        from freestack.spec import load_spec, spec_file

        path = spec_file(args.model)
        if path.exists():
            spec = load_spec(path)
            return ModelRegistry(storage_root(spec.storage_root), spec.model_name)
    except Exception:  # noqa: BLE001  (no such pipeline, or an invalid spec: the name is the model's)
        pass
    return ModelRegistry(storage_root(), args.model)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def cmd_list(args: argparse.Namespace) -> int:
    reg = _registry(args)
    versions, aliases = reg.versions(), reg.aliases()
    if args.json:
        print(json.dumps({"model": reg.model, "versions": versions,
                          "aliases": {k: v for k, v in aliases.items() if k != "history"}}, default=str))
        return 0
    if not versions:
        print(f"model {reg.model!r} has no registered version under {reg.folder}")
        return 0
    names = sorted({k for v in versions for k in v["metrics"] if k.startswith("test_")})[:4]
    print(f"{'version':<24} {'created':<25} " + " ".join(f"{n:>14}" for n in names) + "  aliases")
    for v in versions:
        cells = " ".join(f"{_fmt(v['metrics'].get(n, '-')):>14}" for n in names)
        print(f"{v['version']:<24} {v['created']:<25} {cells}  {', '.join(v['aliases'])}")
    shown = {k: v for k, v in aliases.items() if k != "history"}
    print("aliases: " + (", ".join(f"{k} -> {v}" for k, v in sorted(shown.items())) or "none"))
    print(f"registry: {reg.folder}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    reg = _registry(args)
    info = reg.get(args.version)
    if args.json:
        print(json.dumps(info, default=str))
        return 0
    print(f"{reg.model} {info['version']}  (registered {info['created']})")
    print(f"  uri:     {info['uri']}")
    print(f"  aliases: {', '.join(info['aliases']) or 'none'}")
    print("metrics:")
    for k, v in info["metrics"].items():
        print(f"  {k:<24} {_fmt(v)}")
    gate = info["lineage"].get("gate")
    if gate:
        print(f"gate: {json.dumps(gate, default=str)}")
    print(f"files: {', '.join(sorted(info['files']))}")
    print()
    print(info["card"] or "(no model card)")
    return 0


def _print_aliases(reg, aliases: dict[str, Any]) -> None:
    shown = {k: v for k, v in aliases.items() if k != "history"}
    print(f"{reg.model}: " + ", ".join(f"{k} -> {v}" for k, v in sorted(shown.items())))


def cmd_promote(args: argparse.Namespace) -> int:
    reg = _registry(args)
    _print_aliases(reg, reg.promote(args.version, reason=args.reason))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    reg = _registry(args)
    _print_aliases(reg, reg.rollback(reason=args.reason))
    return 0


def cmd_alias(args: argparse.Namespace) -> int:
    reg = _registry(args)
    _print_aliases(reg, reg.set_alias(args.alias, args.version, reason=args.reason))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from freestack.hooks.huggingface import HuggingFaceHook
    from freestack.registry.hub import promote_on_hub, push_to_hub

    reg = _registry(args)
    hub = HuggingFaceHook(args.conn).settings
    out = push_to_hub(reg, args.version, args.repo, hub.token, endpoint=hub.endpoint)
    if out is None:
        print(f"not pushed: connection {args.conn!r} has no token; the version stays local", file=sys.stderr)
        return 0
    print(f"pushed {reg.model} {out['version']} to {out['repo_id']}: commit {out['commit']}, tag {out['tag']}")
    if args.promote:
        promote_on_hub(args.repo, out["version"], hub.token, endpoint=hub.endpoint)
        print(f"moved tag production -> {out['version']}")
    return 0


def _clean_errors(fn):
    def run(args: argparse.Namespace) -> int:
        from freestack.registry.core import RegistryError

        try:
            return fn(args)
        except RegistryError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="the model registry: list, show, promote, rollback, alias, push",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    msub = p.add_subparsers(dest="models_cmd", required=True)

    def add(name: str, fn, help_: str, *positional: str) -> argparse.ArgumentParser:
        q = msub.add_parser(name, help=help_)
        q.add_argument("model", help="model name (or pipeline name)")
        for arg in positional:
            q.add_argument(arg)
        q.add_argument("--root", help="storage root URI (default: FREESTACK_STORAGE_ROOT or the pipeline's)")
        q.set_defaults(fn=_clean_errors(fn))
        return q

    add("list", cmd_list, "versions and aliases").add_argument("--json", action="store_true")
    add("show", cmd_show, "one version's metrics, lineage and model card", "version").add_argument(
        "--json", action="store_true")
    add("promote", cmd_promote, "production <- VERSION, previous <- old production", "version").add_argument(
        "--reason")
    add("rollback", cmd_rollback, "production <- previous").add_argument("--reason")
    add("alias", cmd_alias, "point ALIAS (e.g. staging) at a version", "alias", "version").add_argument("--reason")
    q = add("push", cmd_push, "push a version to the Hugging Face Hub (one commit, tagged)", "version")
    q.add_argument("--repo", required=True, help="Hub repo id, e.g. my-org/digits")
    q.add_argument("--conn", default="huggingface_default", help="the huggingface connection (token, endpoint)")
    q.add_argument("--promote", action="store_true", help="also move the Hub's production tag to it")
