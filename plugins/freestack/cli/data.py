"""The Data API's commands in the ``freestack`` CLI.

    freestack data-api [--host 127.0.0.1] [--port 8765] [--root URI]   serve /v1/data/...
    freestack keys create USER [--label TEXT]                          a new API key (shown once)
    freestack keys list [USER] [--active]                              ids, users, labels, states
    freestack keys revoke KEY_ID                                       refused from then on
    freestack acl show data://OWNER/COLLECTION                         a collection's ACL
    freestack acl set data://OWNER/COLLECTION --public | --private | --team bob,carol [--writers bob]

``keys`` works on ``FREESTACK_DATA_API_KEYS`` (default ``<project>/.freestack/data-api/keys.sqlite``)
or ``--keys``; ``acl`` on the service's backing store (``--root``, else as ``freestack data-api`` would
choose it), as the operator: it needs no key.
"""

from __future__ import annotations

import argparse
import json
import sys


def _keystore(args: argparse.Namespace):
    from freestack.dataapi.keys import KeyStore

    return KeyStore(args.keys) if args.keys else KeyStore()


def cmd_data_api(args: argparse.Namespace) -> int:
    from freestack.dataapi.app import DataApiSettings
    from freestack.dataapi.server import serve

    if args.keys:
        import os

        os.environ["FREESTACK_DATA_API_KEYS"] = args.keys
    settings = DataApiSettings(root=args.root, keys_path=args.keys, page_size=args.page_size)
    serve(args.host, args.port, settings, log_level=args.log_level, access_log=not args.no_access_log)
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    info, key = _keystore(args).create_key(args.user, label=args.label)
    if args.json:
        print(json.dumps({**info.as_dict(), "key": key}))
        return 0
    print(f"API key {info.id} for user {info.user!r}" + (f" ({info.label})" if info.label else "") + ":")
    print(key)
    print("Store it now: only its hash is kept, it cannot be shown again. Clients send it as the header")
    print("'Authorization: Simple <key>' (Algorithmia.client(key, api_address) does this).", file=sys.stderr)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    keys = _keystore(args).list_keys(args.user, include_revoked=not args.active)
    if args.json:
        print(json.dumps([k.as_dict() for k in keys]))
        return 0
    if not keys:
        print("no API keys" + (f" for {args.user!r}" if args.user else "") + "; create one with `freestack keys create USER`")
        return 0
    print(f"{'id':<10} {'user':<20} {'created':<21} {'state':<29} label")
    for k in keys:
        state = "active" if k.active else f"revoked {k.revoked_at}"
        print(f"{k.id:<10} {k.user:<20} {k.created_at:<21} {state:<29} {k.label or ''}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    info = _keystore(args).revoke(args.key_id)
    print(f"API key {info.id} of {info.user!r} is revoked (since {info.revoked_at}); requests with it now get 401")
    return 0


def _collection_fs(args: argparse.Namespace):
    from freestack.dataapi.app import resolve_root
    from freestack.storage.datafs import DataFileSystem
    from freestack.storage.schemes import to_path

    backing = to_path(resolve_root(args.root))
    text = args.uri[len("data://") :] if args.uri.startswith("data://") else args.uri
    owner = text.split("/", 1)[0]
    # the operator acts as the collection's owner
    return DataFileSystem(path=backing.path, fs=backing.fs, owner=owner), text


def cmd_acl_show(args: argparse.Namespace) -> int:
    fs, path = _collection_fs(args)
    acl = fs.get_acl(path)
    print(json.dumps({"collection": f"data://{path}", "acl": acl.to_json(), "kind": acl.kind}, indent=2))
    return 0


def cmd_acl_set(args: argparse.Namespace) -> int:
    from freestack.storage.acl import PUBLIC, Acl, check_user

    fs, path = _collection_fs(args)
    writers = [check_user(u.strip(), what="writer") for u in (args.writers or "").split(",") if u.strip()]
    if args.public:
        read = [PUBLIC]
    elif args.team:
        read = [f"user://{check_user(u.strip(), what='team member')}" for u in args.team.split(",") if u.strip()]
    else:
        read = []
    acl = Acl.parse({"read": read, "write": [f"user://{u}" for u in writers]})
    fs.set_acl(path, acl)
    print(f"data://{path}: {acl.describe()}")
    return 0


def _clean_errors(fn):
    """Run a command; a FreestackError or OSError is printed as one line (what is wrong, what to do)."""

    def run(args: argparse.Namespace) -> int:
        from freestack.errors import FreestackError

        try:
            return fn(args)
        except (FreestackError, OSError) as exc:
            print(f"freestack {args.cmd}: error: {exc}", file=sys.stderr)
            return 2

    return run


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``data-api``, ``keys`` and ``acl`` to the ``freestack`` command line."""
    p = sub.add_parser("data-api", help="serve the Algorithmia-compatible Data API (/v1/data/...)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--root", help="backing store URI (file:// or s3://); default: as data:// tasks use it")
    p.add_argument("--keys", help="API keys file (default FREESTACK_DATA_API_KEYS or .freestack/data-api/keys.sqlite)")
    p.add_argument("--page-size", type=int, default=None, help="entries per directory listing page (default 1000)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--no-access-log", action="store_true", help="do not log every request")
    p.set_defaults(fn=_clean_errors(cmd_data_api))

    keys = sub.add_parser("keys", help="Data API users and API keys").add_subparsers(dest="keys_cmd", required=True)
    kc = keys.add_parser("create", help="create an API key for USER (the user is created if new)")
    kc.add_argument("user")
    kc.add_argument("--label", help="what the key is for (shown by list)")
    kc.set_defaults(fn=_clean_errors(cmd_keys_create))
    kl = keys.add_parser("list", help="list API keys (ids, users, states), never the keys themselves")
    kl.add_argument("user", nargs="?")
    kl.add_argument("--active", action="store_true", help="only keys that are not revoked")
    kl.set_defaults(fn=_clean_errors(cmd_keys_list))
    kr = keys.add_parser("revoke", help="revoke an API key by its id")
    kr.add_argument("key_id")
    kr.set_defaults(fn=_clean_errors(cmd_keys_revoke))
    for k in (kc, kl, kr):
        k.add_argument("--keys", help="API keys file (default FREESTACK_DATA_API_KEYS or .freestack/data-api/keys.sqlite)")
        k.add_argument("--json", action="store_true", help="machine-readable output")

    acl = sub.add_parser("acl", help="show or set a data:// collection's ACL").add_subparsers(dest="acl_cmd", required=True)
    ash = acl.add_parser("show", help="print a collection's ACL")
    ash.add_argument("uri", help="data://<owner>/<collection>")
    ash.set_defaults(fn=_clean_errors(cmd_acl_show))
    ase = acl.add_parser("set", help="replace a collection's ACL")
    ase.add_argument("uri", help="data://<owner>/<collection>")
    who = ase.add_mutually_exclusive_group(required=True)
    who.add_argument("--public", action="store_true", help="anyone may read (user://*)")
    who.add_argument("--private", action="store_true", help="the owner only")
    who.add_argument("--team", metavar="USERS", help="comma-separated users who may read")
    ase.add_argument("--writers", metavar="USERS", help="comma-separated users who may also write")
    ase.set_defaults(fn=_clean_errors(cmd_acl_set))
    for a in (ash, ase):
        a.add_argument("--root", help="backing store URI (default: as `freestack data-api` chooses it)")


__all__ = ["register"]
