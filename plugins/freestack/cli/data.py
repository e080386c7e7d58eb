"""The data commands of the ``freestack`` CLI: ``data-api`` (the service), ``keys`` (its users and API
keys), ``acl`` (a collection's readers and writers), ``data`` (copy files in and out of storage) and
``split`` (which lake rows a training puts in train, val and test).

``keys`` works on ``FREESTACK_DATA_API_KEYS`` (default ``<project>/.freestack/data-api/keys.sqlite``)
or ``--keys``; ``acl`` on the service's backing store (``--root``, else as ``freestack data-api`` would
choose it), as the operator: it needs no key.
"""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from freestack.cli.common import Json, Pipeline, load_pipeline
from freestack.cli.errors import CliError
from freestack.cli.output import emit, out, print_json, progress, table
from freestack.dataapi.keys import KeyStore
from freestack.registry.core import registry_for
from freestack.storage import atomic_write, to_path
from freestack.storage.acl import PUBLIC, Acl, check_user
from freestack.storage.datafs import DataFileSystem
from freestack.train.window import changed_message, fix_window, lineage_window

keys_app = typer.Typer(help="Data API users and API keys.", no_args_is_help=True)
acl_app = typer.Typer(help="Show or set a data:// collection's ACL.", no_args_is_help=True)
data_app = typer.Typer(
    help="Copy a file into or out of storage (file://, s3://, data://), with progress.", no_args_is_help=True
)

Keys = Annotated[
    str | None,
    typer.Option(
        "--keys",
        help="API keys file (default FREESTACK_DATA_API_KEYS or .freestack/data-api/keys.sqlite).",
        show_default=False,
    ),
]
AclRoot = Annotated[
    str | None,
    typer.Option(
        "--root", help="Backing store URI (default: as `freestack data-api` chooses it).", show_default=False
    ),
]
Collection = Annotated[str, typer.Argument(metavar="URI", help="data://OWNER/COLLECTION", show_default=False)]
CHUNK = 1 << 20


class LogLevel(StrEnum):
    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"


def data_api(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8765,
    root: Annotated[
        str | None,
        typer.Option(
            help="Backing store URI (file:// or s3://); default: as data:// tasks use it.", show_default=False
        ),
    ] = None,
    keys: Keys = None,
    page_size: Annotated[
        int | None,
        typer.Option(min=1, help="Entries per directory listing page (default 1000).", show_default=False),
    ] = None,
    log_level: Annotated[LogLevel, typer.Option(help="The server's log level.")] = LogLevel.info,
    no_access_log: Annotated[bool, typer.Option("--no-access-log", help="Do not log every request.")] = False,
) -> int:
    """Serve the Algorithmia-compatible Data API (/v1/data/...) until Ctrl-C."""
    from freestack.dataapi.app import DataApiSettings
    from freestack.dataapi.standalone import serve

    if keys:
        os.environ["FREESTACK_DATA_API_KEYS"] = keys  # for what the server starts (it reads its settings)
    settings = DataApiSettings(root=root, keys_path=keys, page_size=page_size)
    serve(host, port, settings, log_level=log_level.value, access_log=not no_access_log)
    return 0


@keys_app.command()
def create(
    user: Annotated[
        str, typer.Argument(metavar="USER", help="The user (created if new).", show_default=False)
    ],
    label: Annotated[
        str | None, typer.Option(help="What the key is for (shown by list).", show_default=False)
    ] = None,
    keys: Keys = None,
    json: Json = False,
) -> int:
    """Create an API key for USER; it is shown once."""
    info, key = KeyStore(keys or None).create_key(user, label=label)
    if json:
        print_json({**info.as_dict(), "key": key})
        return 0
    print(f"API key {info.id} for user {info.user!r}" + (f" ({info.label})" if info.label else "") + ":")
    print(key, flush=True)
    print(
        "Store it now: only its hash is kept, it cannot be shown again. Clients send it as the header "
        "'Authorization: Simple <key>' (Algorithmia.client(key, api_address) does this).",
        file=sys.stderr,
    )
    return 0


@keys_app.command("list")
def list_(
    user: Annotated[
        str | None, typer.Argument(metavar="USER", help="Only this user's keys.", show_default=False)
    ] = None,
    active: Annotated[bool, typer.Option("--active", help="Only keys that are not revoked.")] = False,
    keys: Keys = None,
    json: Json = False,
) -> int:
    """API keys (ids, users, labels, states), never the keys themselves."""
    found = KeyStore(keys or None).list_keys(user, include_revoked=not active)
    if json:
        print_json([k.as_dict() for k in found])
        return 0
    if not found:
        out().print(
            "no API keys"
            + (f" for {user!r}" if user else "")
            + "; create one with `freestack keys create USER`"
        )
        return 0
    t = table("id", "user", "created", "state", "label")
    for k in found:
        t.add_row(
            k.id, k.user, k.created_at, "active" if k.active else f"revoked {k.revoked_at}", k.label or ""
        )
    emit(t)
    return 0


@keys_app.command()
def revoke(
    key_id: Annotated[
        str,
        typer.Argument(
            metavar="KEY_ID", help="The key's id (see `freestack keys list`).", show_default=False
        ),
    ],
    keys: Keys = None,
    json: Json = False,
) -> int:
    """Revoke an API key: requests with it are refused from then on."""
    info = KeyStore(keys or None).revoke(key_id)
    if json:
        print_json(info.as_dict())
        return 0
    out().print(
        f"API key {info.id} of {info.user!r} is revoked (since {info.revoked_at}); requests with it now get 401"
    )
    return 0


def _collection_fs(uri: str, root: str | None):
    from freestack.dataapi.app import resolve_root

    backing = to_path(resolve_root(root))
    text = uri[len("data://") :] if uri.startswith("data://") else uri
    owner = text.split("/", 1)[0]
    # the operator acts as the collection's owner
    return DataFileSystem(path=backing.path, fs=backing.fs, owner=owner), text


@acl_app.command()
def show(uri: Collection, root: AclRoot = None, json: Json = False) -> int:
    """A collection's ACL: who may read and write it."""
    fs, path = _collection_fs(uri, root)
    acl = fs.get_acl(path)
    if json:
        print_json({"collection": f"data://{path}", "acl": acl.to_json(), "kind": acl.kind})
    else:
        out().print(f"data://{path}: {acl.describe()}")
    return 0


@acl_app.command("set")
def set_(
    uri: Collection,
    public: Annotated[bool, typer.Option("--public", help="Anyone may read (user://*).")] = False,
    private: Annotated[bool, typer.Option("--private", help="The owner only.")] = False,
    team: Annotated[
        str | None,
        typer.Option(metavar="USERS", help="Comma-separated users who may read.", show_default=False),
    ] = None,
    writers: Annotated[
        str | None,
        typer.Option(metavar="USERS", help="Comma-separated users who may also write.", show_default=False),
    ] = None,
    root: AclRoot = None,
) -> int:
    """Replace a collection's ACL: exactly one of --public, --private, --team USERS."""
    if [public, private, team is not None].count(True) != 1:
        raise typer.BadParameter(
            "give exactly one of --public, --private, --team USERS", param_hint="--public/--private/--team"
        )
    fs, path = _collection_fs(uri, root)
    writer_names = [check_user(u.strip(), what="writer") for u in (writers or "").split(",") if u.strip()]
    if public:
        read = [PUBLIC]
    elif team is not None:
        read = [f"user://{check_user(u.strip(), what='team member')}" for u in team.split(",") if u.strip()]
    else:
        read = []
    acl = Acl.parse({"read": read, "write": [f"user://{u}" for u in writer_names]})
    fs.set_acl(path, acl)
    out().print(f"data://{path}: {acl.describe()}")
    return 0


@data_app.command()
def put(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="SOURCE",
            exists=True,
            dir_okay=False,
            readable=True,
            help="A local file.",
            show_default=False,
        ),
    ],
    dest: Annotated[
        str,
        typer.Argument(
            metavar="DEST",
            help="Where to: data://OWNER/COLLECTION/NAME, file:///..., s3://conn@bucket/key (ending in /: SOURCE's name in that folder).",
            show_default=False,
        ),
    ],
) -> int:
    """Upload a file, atomically (readers see the old object or the new one), with a progress bar."""
    target = to_path(dest + source.name if dest.endswith("/") else dest)
    size = source.stat().st_size
    with source.open("rb") as f, atomic_write(target) as w:
        _copy(f, w, f"{source.name} -> {target}", size)
    out().print(f"uploaded {source} ({size} bytes, sha256 {w.result.sha256[:12]}) to {target}")
    return 0


@data_app.command()
def get(
    source: Annotated[
        str,
        typer.Argument(
            metavar="SOURCE",
            help="A storage URI: data://OWNER/COLLECTION/NAME, file:///..., s3://...",
            show_default=False,
        ),
    ],
    dest: Annotated[
        Path,
        typer.Argument(
            metavar="DEST", help="A local file (an existing folder: SOURCE's name in it).", show_default=False
        ),
    ],
) -> int:
    """Download a file, with a progress bar."""
    src = to_path(source)
    if not src.is_file():
        parent = src.parent
        names = sorted(p.name for p in parent.iterdir())[:10] if parent.is_dir() else []
        raise CliError(
            f"{source} is not a file",
            f"{parent} holds: {', '.join(names)}" if names else f"{parent} is empty or absent",
        )
    target = dest / src.name if dest.is_dir() else dest
    with src.open("rb") as f, target.open("wb") as w:
        _copy(f, w, f"{src} -> {target}", src.stat().st_size)
    out().print(f"downloaded {src} ({target.stat().st_size} bytes) to {target}")
    return 0


def _copy(reader, writer, label: str, size: int) -> None:
    """Copy ``reader`` to ``writer`` in CHUNK-sized pieces, with a byte progress bar labelled ``label``."""
    from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
    with progress(*columns, TransferSpeedColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task(label, total=size)
        while chunk := reader.read(CHUNK):
            writer.write(chunk)
            bar.advance(task, len(chunk))


def split(
    pipeline: Pipeline,
    version: Annotated[
        str | None,
        typer.Option(
            "--version",
            metavar="VERSION",
            help="A registered version (or alias) of the pipeline's model: the partitions it was trained on, checked by sha256, and its split fractions.",
            show_default=False,
        ),
    ] = None,
    end_ds: Annotated[
        str | None,
        typer.Option(
            "--end-ds",
            metavar="DS",
            help="The window's last day (default: the newest lake partition).",
            show_default=False,
        ),
    ] = None,
    days: Annotated[
        int | None,
        typer.Option(
            "--days",
            metavar="DAYS",
            min=1,
            help="The window's length in days (default: the spec's train.window_days).",
            show_default=False,
        ),
    ] = None,
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="FILE",
            help="Write one row per lake row (key, ds, split) to this .parquet or .csv file.",
            show_default=False,
        ),
    ] = None,
    json: Json = False,
) -> int:
    """Which lake rows are train, val and test: the split every training and evaluation of PIPELINE makes
    (a salted hash of the row key, freestack.ml.prep.split_of_keys)."""
    spec = load_pipeline(pipeline)
    if version and (end_ds or days):
        raise CliError("--version fixes the window: leave out --end-ds and --days", "or drop --version")
    if out_file is not None and out_file.suffix not in (".parquet", ".csv"):
        raise CliError(
            f"--out {out_file}: write a .parquet or a .csv file", "name the file with one of those suffixes"
        )
    window, fractions = _split_window(spec, version, end_ds, days)
    rows = split_rows(spec, window, fractions)
    counts = {s: int((rows["split"] == s).sum()) for s in ("train", "val", "test")}
    if out_file is not None:
        _write_rows(rows, out_file)
    summary = {
        "pipeline": spec.name,
        "version": version,
        "end_ds": window.end_ds,
        "days": window.days,
        "partitions": [p.ds for p in window.of_days(window.days)],
        "key": spec.source.schema_.key,
        "val_fraction": fractions[0],
        "test_fraction": fractions[1],
        "salt": spec.model_name,
        "rows": counts,
        "out": str(out_file) if out_file is not None else None,
    }
    if json:
        print_json(summary)
        return 0
    t = table(
        "split",
        "rows",
        right=("rows",),
        title=f"{spec.name}: {len(rows)} rows of {len(summary['partitions'])} "
        f"partitions up to {window.end_ds}, split on {summary['key']!r}",
    )
    for name, n in counts.items():
        t.add_row(name, str(n))
    emit(t)
    if out_file is not None:
        out().print(f"wrote key, ds and split of every row to {out_file}")
    return 0


def _split_window(spec, version: str | None, end_ds: str | None, days: int | None):
    """(the window, (val_fraction, test_fraction)): a version's recorded ones, else the lake's."""
    t = spec.train
    if version is None:
        return fix_window(spec, end_ds, days or t.window_days), (t.val_fraction, t.test_fraction)
    reg = registry_for(spec)
    name = reg.resolve(version)
    lineage = reg.lineage(name) or {}
    window = lineage_window(lineage)
    if window is None:
        raise CliError(
            f"{spec.model_name} {name} records no partition hashes in its lineage",
            "pass --end-ds and --days instead of --version",
        )
    recorded = lineage.get("split") or {}
    return window, (
        float(recorded.get("val_fraction", t.val_fraction)),
        float(recorded.get("test_fraction", t.test_fraction)),
    )


def split_rows(spec, window, fractions: tuple[float, float]):
    """A frame of the window's rows, in lake order: the key, the partition's ds and the row's split.
    Each partition is read once, its bytes checked against the window's sha256."""
    import hashlib

    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from freestack.ml.prep import split_of_keys

    key = spec.source.schema_.key
    frames = []
    for p in window.of_days(window.days):
        try:
            data = to_path(p.uri).read_bytes()
        except FileNotFoundError:
            raise CliError(
                changed_message(spec, p, "was removed"), "pick another window or version"
            ) from None
        if hashlib.sha256(data).hexdigest() != p.sha256:
            raise CliError(changed_message(spec, p, "was rewritten"), "pick another window or version")
        keys = pq.read_table(pa.BufferReader(data), columns=[key]).column(key).to_pandas()
        frames.append(
            pd.DataFrame(
                {key: keys, "ds": p.ds, "split": split_of_keys(keys, *fractions, salt=spec.model_name)}
            )
        )
    return pd.concat(frames, ignore_index=True)


def _write_rows(rows, path: Path) -> None:
    if path.suffix == ".csv":
        rows.to_csv(path, index=False)
    else:
        rows.to_parquet(path, index=False)


def register(app: typer.Typer) -> None:
    """Add ``data-api``, ``keys``, ``acl``, ``data`` and ``split`` to the ``freestack`` command."""
    app.command("split")(split)
    app.command("data-api")(data_api)
    app.add_typer(keys_app, name="keys")
    app.add_typer(acl_app, name="acl")
    app.add_typer(data_app, name="data")


__all__ = ["acl_app", "data_api", "data_app", "keys_app", "register", "split", "split_rows"]
