"""A tiny stand-in for the Hugging Face Hub's HTTP API, on 127.0.0.1, for tests at the HTTP boundary.

It implements only what ``huggingface_hub`` calls to create a repo, validate a card, upload a folder
(preupload, then a commit whose small files arrive inline as base64 in NDJSON), create and delete
tags and branches, and download files (``/resolve/``). Every request is recorded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml


@dataclass
class Commit:
    oid: str
    summary: str
    description: str
    files: dict[str, bytes]  # what this commit added
    tree: dict[str, bytes]  # the whole repo after it


@dataclass
class Repo:
    commits: list[Commit] = field(default_factory=list)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit | None:
        oid = self.tags.get(rev) or self.branches.get(rev) or rev
        return next((c for c in self.commits if c.oid == oid), None)


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeHub:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def calls(self, method: str | None = None, pattern: str = "") -> list[dict[str, Any]]:
        return [
            r
            for r in self.requests
            if (method is None or r["method"] == method) and re.search(pattern, r["path"])
        ]

    # -- the API --------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict, bytes]:
        rec = {"method": method, "path": path, "auth": headers.get("authorization"), "body": body}
        with self.lock:
            self.requests.append(rec)
            return self._route(method, path, body)

    def _json(self, code: int, obj: Any) -> tuple[int, dict, bytes]:
        return code, {"Content-Type": "application/json"}, json.dumps(obj).encode()

    def _route(self, method: str, path: str, body: bytes) -> tuple[int, dict, bytes]:
        if method == "POST" and path == "/api/repos/create":
            req = json.loads(body)
            repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
            if repo_id in self.repos:
                return self._json(
                    409, {"error": "You already created this model repo", "url": f"{self.endpoint}/{repo_id}"}
                )
            self.repos[repo_id] = Repo()
            return self._json(200, {"url": f"{self.endpoint}/{repo_id}", "name": repo_id})
        if method == "POST" and path == "/api/validate-yaml":
            content = json.loads(body)["content"]
            try:
                assert content.startswith("---\n")
                meta = yaml.safe_load(content.split("---\n", 2)[1])
                assert isinstance(meta, dict)
            except Exception as exc:  # noqa: BLE001
                return self._json(400, {"errors": [{"message": f"invalid YAML front matter: {exc}"}]})
            return self._json(200, {"errors": [], "warnings": []})
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit|tag|branch)/(.+)", path)
        if m:
            repo_id, op, rev = m.group(1), m.group(2), unquote(m.group(3))
            repo = self.repos.get(repo_id)
            if repo is None:
                return self._json(404, {"error": "Repository not found"})
            return getattr(self, f"_{op}")(method, repo_id, repo, rev, body)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m and method in ("GET", "HEAD"):
            repo = self.repos.get(m.group(1))
            commit = repo.resolve(unquote(m.group(2))) if repo else None
            name = unquote(m.group(3))
            if repo is None:
                return (
                    404,
                    {"X-Error-Code": "RepoNotFound", "Content-Type": "text/plain"},
                    b"Repository not found",
                )
            if commit is None:
                return (
                    404,
                    {"X-Error-Code": "RevisionNotFound", "Content-Type": "text/plain"},
                    b"Invalid rev id",
                )
            if name not in commit.tree:
                return 404, {"X-Error-Code": "EntryNotFound", "Content-Type": "text/plain"}, b"not found"
            data = commit.tree[name]
            return (
                200,
                {
                    "X-Repo-Commit": commit.oid,
                    "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                    "Content-Type": "application/octet-stream",
                },
                data,
            )
        return self._json(404, {"error": f"fake hub: no route for {method} {path}"})

    def _preupload(self, method, repo_id, repo, rev, body):
        files = json.loads(body)["files"]
        return self._json(
            200,
            {
                "files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                    for f in files
                ]
            },
        )

    def _commit(self, method, repo_id, repo, rev, body):
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(x["value"] for x in lines if x["key"] == "header")
        added: dict[str, bytes] = {}
        for item in lines:
            if item["key"] == "file":
                v = item["value"]
                assert v["encoding"] == "base64"
                added[v["path"]] = base64.b64decode(v["content"])
            elif item["key"] != "header":
                return self._json(400, {"error": f"fake hub: unsupported commit item {item['key']}"})
        parent = repo.resolve(rev)
        tree = {**(parent.tree if parent else {}), **added}
        # like git, the commit names its content: a cache never mistakes two different trees for one
        content = [[name, hashlib.sha256(data).hexdigest()] for name, data in sorted(tree.items())]
        oid = hashlib.sha1(
            json.dumps([repo_id, len(repo.commits), header["summary"], content]).encode()
        ).hexdigest()
        repo.commits.append(Commit(oid, header["summary"], header.get("description", ""), added, tree))
        repo.branches[rev] = oid
        return self._json(
            200, {"commitUrl": f"{self.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid, "success": True}
        )

    def _tag(self, method, repo_id, repo, rev, body):
        if method == "DELETE":
            if rev not in repo.tags:
                return self._json(404, {"error": f"Invalid rev id: {rev}"})
            del repo.tags[rev]
            return self._json(200, {})
        tag = json.loads(body)["tag"]
        commit = repo.resolve(rev)
        if commit is None:
            return self._json(404, {"error": f"Invalid rev id: {rev}"})
        if tag in repo.tags:
            return self._json(409, {"error": f"Tag {tag} already exists"})
        repo.tags[tag] = commit.oid
        return self._json(200, {})

    def _branch(self, method, repo_id, repo, rev, body):
        if method == "DELETE":
            if rev not in repo.branches:
                return self._json(404, {"error": f"Invalid rev id: {rev}"})
            del repo.branches[rev]
            return self._json(200, {})
        start = json.loads(body or b"{}").get("startingPoint")
        commit = repo.resolve(start) if start else repo.commits[-1]
        if rev in repo.branches:
            return self._json(409, {"error": f"Branch {rev} already exists"})
        repo.branches[rev] = commit.oid
        return self._json(200, {})

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                path = urlsplit(self.path).path
                code, headers, data = hub.handle(
                    self.command, path, {k.lower(): v for k, v in self.headers.items()}, body
                )
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_HEAD = do_PUT = _serve

            def log_message(self, format, *args):  # noqa: A002  (quiet)
                pass

        return Handler
