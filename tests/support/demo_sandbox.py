"""The demo sandbox: the project as a user's fresh checkout sees it, with its state in a temporary folder,
and the README's ``make demo`` run in it once per test session (the fixtures ``sandbox`` and ``demo``).

The documented-commands test (tests/e2e/test_docs_commands.py) and the UI's browser tests
(tests/ui/test_views_browser.py) share it: the browser tests read the state the real demo left, before
the documented commands change it (tests/conftest.py keeps both files on one test worker and runs the
browser tests first). Its Airflow has two users: ``admin`` and ``viewer`` (the simple auth manager's roles).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
DRY_MAKE = re.compile(r"^make (test\S*|lint|docs|bench)\b")
FENCE = re.compile(r"^[ ]*```(?:bash|sh|shell)\n(.*?)^[ ]*```", re.S | re.M)
USERS = "admin:admin,viewer:viewer"


class RefusedBlock(ValueError):
    """A shell block the documented-commands test cannot split into commands: run as split, it would lose
    its last commands (left inside an open quote) or join lines a shell runs apart, without a word."""


def _commands(block: str, where: str = "a shell block") -> list[str]:
    """The block's commands: continuation lines and multi-line quotes joined, comment-only lines dropped.

    Refused (:class:`RefusedBlock`, naming ``where``): a trailing comment that opens a quote (the
    apostrophe of ``# the model's``), which would join the lines after it into its command, and a block
    whose text ends inside a quote or a continuation, whose last command would never run."""
    out, cur = [], ""
    for line in block.splitlines():
        if not cur and line.strip().startswith("#"):
            continue  # a comment line (its apostrophes are prose, not quotes)
        if not _open_quote(cur) and _open_quote(_comment(line)):
            raise RefusedBlock(
                f"{where}: the comment of {line.strip()!r} opens a quote that joins the lines after it; "
                "reword the comment without an apostrophe or quote mark, or put it on its own line above"
            )
        cur = f"{cur}\n{line}" if cur else line
        if cur.endswith("\\") or _open_quote(cur):
            continue
        if cur.strip():
            out.append(cur.strip())
        cur = ""
    if cur.strip():
        inside = "a quote" if _open_quote(cur) else "a continuation (a trailing backslash)"
        raise RefusedBlock(f"{where} ends inside {inside}, so this would never run: {cur.strip()!r}")
    return out


def _open_quote(text: str) -> bool:
    """Whether ``text`` leaves a single or double quote open (quote marks counted, as a shell pairs them)."""
    return bool(text.count("'") % 2 or _unquoted(text).count('"') % 2)


def _comment(line: str) -> str:
    """The line's trailing comment as bash reads it (from a ``#`` that starts a word outside quotes), or ''."""
    quote, i = "", 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and quote != "'":
            i += 1  # an escaped character: neither a quote nor a comment
        elif quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[i:]
        i += 1
    return ""


def _unquoted(text: str) -> str:
    return re.sub(r"'[^']*'", "", text)


#: Ctrl-C for a server the script started in the background, as a terminal sends it: its own process
#: group (job control, so SIGINT is not ignored as bash ignores it for background jobs of a script);
#: one that has not stopped 30 s later fails the block instead of hanging it
STOP_WITH_CTRL_C = (
    "kill -INT -- -$pid; for _ in $(seq 300); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done; "
    'if kill -0 $pid 2>/dev/null; then echo "did not stop on Ctrl-C: "{cmd}; kill -KILL -- -$pid; exit 1; fi; '
    "wait $pid || true"
)


def _bare(command: str) -> str:
    """The command without its trailing comment."""
    return re.sub(r"\s+#[^'\"]*$", "", command).strip()


def _script(commands: list[str], ports: dict[str, int]) -> str:
    """The bash script that runs ``commands`` by the rules above."""
    lines = ["set -e -o pipefail -m"]
    for cmd in commands:
        bare = _bare(cmd)
        for default, port in ports.items():
            bare = bare.replace(f"127.0.0.1:{default}", f"127.0.0.1:{port}")
        if DRY_MAKE.match(bare):
            lines.append(f"make -n {bare.split()[1]} >/dev/null")
        elif "until Ctrl-C" in cmd:
            lines.append(
                f"{bare} & pid=$!; sleep 10; kill -0 $pid || {{ echo 'exited early: {bare}'; exit 1; }}"
            )
            lines.append(STOP_WITH_CTRL_C.format(cmd=shlex.quote(bare)))
        else:
            lines.append(f"echo {shlex.quote('$ ' + bare.splitlines()[0][:120])}")
            lines.append(bare)
    return "\n".join(lines)


class Sandbox:
    """The project as a user's fresh checkout sees it, with its state in a temporary folder."""

    def __init__(self, base: Path) -> None:
        from freestack.serving.processes import free_port_block

        self.base, self.port = base, free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "FREESTACK_", "WANDB_"))}
        wandb = base / ".freestack" / "wandb"
        env.update(
            {
                "AIRFLOW_HOME": str(base / "airflow"),
                "FREESTACK_HOME": str(base),
                "AIRFLOW_PORT": str(self.port),
                "FREESTACK_SERVE_PORT": str(free_port_block()),
                "FREESTACK_MEASURE_SERVING": "false",  # as in the whole session (tests/conftest.py)
                "WANDB_MODE": "offline",
                "WANDB_DIR": str(wandb),
                "WANDB_DATA_DIR": str(wandb / "data"),
                "WANDB_CACHE_DIR": str(wandb / "cache"),
                "WANDB_CONFIG_DIR": str(wandb / "config"),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": USERS,
            }
        )
        self.env, self.results = env, {}
        self._by_commands: dict[tuple[str, ...], subprocess.CompletedProcess] = {}
        self.reused: set[str] = set()  # blocks answered with an earlier block's result

    def run(self, block_id: str, text: str) -> subprocess.CompletedProcess:
        """Run a block once; a block of the same commands as one that already ran in this sandbox and
        succeeded (docs/index.md's and the README's ``make demo``, say) gets that block's result."""
        if block_id not in self.results:
            commands = _commands(text, block_id)
            same = tuple(_bare(c) for c in commands)
            ran = self._by_commands.get(same)
            if ran is None or ran.returncode != 0:
                ports = {"8080": self.port, "9000": int(self.env["FREESTACK_SERVE_PORT"])}
                ran = subprocess.run(
                    ["bash", "-c", _script(commands, ports)],
                    cwd=ROOT,
                    env=self.env,
                    capture_output=True,
                    text=True,
                    timeout=1200,
                )
                self._by_commands[same] = ran
            else:
                self.reused.add(block_id)
            self.results[block_id] = ran
        return self.results[block_id]

    def api(self):
        from freestack.embedded import AirflowAPI

        return AirflowAPI(
            {
                "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{self.port}",
                "AIRFLOW_HOME": self.env["AIRFLOW_HOME"],
            }
        )

    def processes(self) -> list[str]:
        """Processes that belong to this sandbox: its path in their command line or environment."""
        mine = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmd = " ".join(p.info["cmdline"] or ())
                ours = str(self.base) in cmd or p.environ().get("FREESTACK_HOME") == str(self.base)
            except (psutil.Error, OSError):
                continue
            if ours and p.pid != os.getpid():
                mine.append(f"{p.pid} {cmd[:160]}")
        return mine

    def password(self, user: str = "admin") -> str:
        """The password ``airflow standalone`` generated for ``user``."""
        return json.loads(
            (Path(self.env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated").read_text()
        )[user]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.base / ".freestack" / "storage"

    def down(self) -> None:
        subprocess.run([str(ROOT / ".venv" / "bin" / "freestack"), "down"], env=self.env, capture_output=True)


def readme_demo_block() -> tuple[str, str]:
    """(id, text) of the README's shell block that runs ``make demo``."""
    import textwrap

    text = (ROOT / "README.md").read_text()
    for k, m in enumerate(FENCE.finditer(text)):
        if "make demo" in m.group(1):
            return f"README.md#{k + 1}", textwrap.dedent(m.group(1))
    raise AssertionError("README.md has no shell block running make demo")


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory):
    box = Sandbox(tmp_path_factory.mktemp("docs-sandbox"))
    yield box
    box.down()


@pytest.fixture(scope="session")
def demo(sandbox) -> subprocess.CompletedProcess:
    block_id, text = readme_demo_block()
    out = sandbox.run(block_id, text)
    assert out.returncode == 0, f"{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out
