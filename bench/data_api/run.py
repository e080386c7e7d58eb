"""Data API benchmark: upload and download MB/s through the service against direct access to the
same backing store, in the same run.

    python -m bench.data_api.run [--sizes-mib 1,256] [--repeats 1:30,256:5] [--out bench/results/data_api.json]

1. Starts ``freestack data-api`` (uvicorn, httptools, one process) on 127.0.0.1 over a fresh local
   backing folder, creates a user and an API key, and writes one payload file per size (random bytes).
2. For each size, repeats the measurements in turn, each on the same object name:
     - ``direct``:        data:// straight onto the backing folder, as a task with a direct connection
                          does it: ``atomic_write`` (temporary file, fsync, rename) of the payload read
                          in 8 MiB blocks; download = ``open("rb")`` read in 8 MiB blocks.
     - ``service_http``:  the service over plain HTTP the way Algorithmia's client talks to it:
                          upload = ``requests.put(url, data=<open file>)`` (what ``putFile`` sends),
                          download = ``requests.get(url, stream=True)`` read in 1 MiB chunks.
     - ``service_datafs``: data:// through the service (a connection whose root is the service URL), as
                          a task does it: the same ``atomic_write`` / ``open("rb")`` calls as ``direct``;
                          the upload is one streamed PUT, the download 8 MiB ranged GETs.
     - ``bare_http``:     the ceiling of HTTP here: ``bench/data_api/bare.py``, a bare file server on
                          the same folder (``os.sendfile`` for GET; PUT = temporary file, fsync,
                          rename), no authentication or ACL, asked by the same client as ``service_http``.
   The service side of an upload is the same atomic write as ``direct`` (fsync included), so the
   ratio is the cost of HTTP, authentication, the ACL check and the extra copies.
3. MB/s = bytes / 10^6 / wall seconds of the call (the upload includes the fsync and the service's
   answer; the download ends when the last byte is read). Medians per mode; ``ratio`` =
   service / direct. The target is a ``service_http`` download of at least TARGET_VS_BARE x
   ``bare_http`` at every size (the service adds little to what HTTP itself costs); the summary says
   per size whether it is met. The server's peak RSS (VmHWM) is recorded too. Writes a JSON report
   (machine, params, raw samples, summary) and prints a table.

Client and server share the machine (2 cores in CI): the client runs in this process, the service in
its own, and the direct baseline uses only this process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import add_modes, chosen_modes, free_port, host, median, parser, write_report

REPO = Path(__file__).resolve().parents[2]
MODES = ("direct", "service_http", "service_datafs", "bare_http")
TARGET_VS_BARE = 0.8  # service_http download / bare_http download, at every size
SIZES_MIB = (1, 256)
DEFAULT_REPEATS = {1: 30, 256: 5}
BLOCK = 8 * 1024 * 1024
USER = "bench"
COLLECTION = "bench"


# ---------------------------------------------------------------------------------------------------------
# the service


def start_service(workdir: Path, root: Path, keys: Path) -> tuple[subprocess.Popen, str, Path]:
    import requests

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / "data-api.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    env["FREESTACK_HOME"] = str(workdir / "home")
    env.setdefault("AIRFLOW_HOME", str(workdir / "airflow"))
    cmd = [
        str(Path(sys.executable).with_name("freestack")),
        "data-api",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--root",
        root.as_uri(),
        "--keys",
        str(keys),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the Data API exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/v1/freestack/health", timeout=2).status_code == 200:
                return proc, url, log
        except requests.RequestException:
            pass
        time.sleep(0.2)
    stop_service(proc)
    raise SystemExit(f"the Data API did not start within 60 s:\n{log.read_text()[-3000:]}")


def start_bare(root: Path) -> tuple[subprocess.Popen, str]:
    """The bare file server (bench/data_api/bare.py), answering once it listens."""
    import requests

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.data_api.bare", "--root", str(root), "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(f"{url}/-", timeout=2)
            return proc, url
        except requests.ConnectionError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the bare file server did not start")


def stop_service(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _proc_status(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# ---------------------------------------------------------------------------------------------------------
# the measurements


class Contenders:
    """The ways to move a payload, set up once."""

    def __init__(self, url: str, key: str, root: Path, bare_url: str | None = None):
        import requests

        from freestack.storage.datafs import DataFileSystem
        from freestack.storage.httpfs import DataApiHttpFileSystem

        self.url, self.bare_url = url, bare_url
        self.key = key
        self.session = requests.Session()
        self.session.trust_env = False
        self.headers = {"Authorization": f"Simple {key}", "Accept-Encoding": "identity"}
        self.direct = DataFileSystem(path=str(root), fs=_local_fs(), owner=USER)
        self.remote = DataFileSystem(
            path="", fs=DataApiHttpFileSystem(url, api_key=key), owner=None, check_acl=False
        )

    def _target(self, fs, name: str):
        from freestack.storage.datafs import _Target

        return _Target(fs, f".my/{COLLECTION}/{name}")

    def _http_url(self, mode: str, name: str) -> str:
        if mode == "bare_http":
            return f"{self.bare_url}/{name}"
        return f"{self.url}/v1/data/.my/{COLLECTION}/{name}"

    def upload(self, mode: str, payload: Path, name: str) -> int:
        if mode in ("service_http", "bare_http"):
            with open(payload, "rb") as f:
                r = self.session.put(self._http_url(mode, name), data=f, headers=self.headers, timeout=600)
            r.raise_for_status()
            return payload.stat().st_size
        from freestack.storage.objects import atomic_write

        fs = self.direct if mode == "direct" else self.remote
        with open(payload, "rb") as f, atomic_write(self._target(fs, name)) as w:
            while block := f.read(BLOCK):
                w.write(block)
        return w.result.size

    def download(self, mode: str, name: str) -> int:
        n = 0
        if mode in ("service_http", "bare_http"):
            with self.session.get(
                self._http_url(mode, name), headers=self.headers, stream=True, timeout=600
            ) as r:
                r.raise_for_status()
                for chunk in r.iter_content(1024 * 1024):
                    n += len(chunk)
            return n
        fs = self.direct if mode == "direct" else self.remote
        with fs.open(f".my/{COLLECTION}/{name}", "rb") as f:
            while block := f.read(BLOCK):
                n += len(block)
        return n


def _local_fs():
    from fsspec.implementations.local import LocalFileSystem

    return LocalFileSystem()


def make_payload(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size == size:
        return
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, BLOCK)
            f.write(os.urandom(n))
            left -= n


def measure(c: Contenders, mode: str, payload: Path, size: int, name: str) -> dict[str, Any]:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    up = c.upload(mode, payload, name)
    t1 = time.perf_counter()
    down = c.download(mode, name)
    t2 = time.perf_counter()
    if up != size or down != size:
        return {"mode": mode, "error": f"moved {up} up and {down} down, expected {size} bytes"}
    return {
        "mode": mode,
        "upload_s": round(t1 - t0, 5),
        "download_s": round(t2 - t1, 5),
        "upload_mb_s": round(size / 1e6 / (t1 - t0), 2),
        "download_mb_s": round(size / 1e6 / (t2 - t1), 2),
        "loadavg_1m_before": load,
    }


def summarise(samples: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    out: dict[str, Any] = {"statistic": "median over samples; MB = 10^6 bytes"}
    for size, per_mode in samples.items():
        row: dict[str, Any] = {}
        for mode, ss in per_mode.items():
            row[mode] = {
                "upload_mb_s": median(ss, "upload_mb_s", 2),
                "download_mb_s": median(ss, "download_mb_s", 2),
                "errors": sum(1 for s in ss if "error" in s),
            }
        base = row.get("direct", {})
        for mode in MODES[1:]:
            if mode in row and base.get("upload_mb_s") and row[mode]["upload_mb_s"]:
                row[mode]["upload_ratio"] = round(row[mode]["upload_mb_s"] / base["upload_mb_s"], 3)
            if mode in row and base.get("download_mb_s") and row[mode]["download_mb_s"]:
                row[mode]["download_ratio"] = round(row[mode]["download_mb_s"] / base["download_mb_s"], 3)
        bare = row.get("bare_http", {})
        if bare.get("download_mb_s") and row.get("service_http", {}).get("download_mb_s"):
            # how much of the distance to a direct read is the service's, not HTTP's
            row["service_http"]["download_vs_bare_http"] = round(
                row["service_http"]["download_mb_s"] / bare["download_mb_s"], 3
            )
            row["service_http"]["upload_vs_bare_http"] = round(
                row["service_http"]["upload_mb_s"] / bare["upload_mb_s"], 3
            )
        ratio = row.get("service_http", {}).get("download_vs_bare_http")
        row["target"] = {
            "service_http_download_vs_bare_http": TARGET_VS_BARE,
            "met": None if ratio is None else ratio >= TARGET_VS_BARE,
        }
        out[size] = row
    return out


def machine() -> dict[str, Any]:
    import fastapi
    import uvicorn

    return {**host(), "uvicorn": uvicorn.__version__, "fastapi": fastapi.__version__}


def print_table(report: dict[str, Any]) -> None:
    print(f"\nData API benchmark ({report['machine']['cores']} cores): MB/s, median")
    print(f"{'object':>8} {'mode':<20} {'upload':>10} {'download':>10} {'up ratio':>9} {'down ratio':>11}")
    for size, row in report["summary"].items():
        if size == "statistic":
            continue
        for mode in MODES:
            if mode not in row:
                continue
            r = row[mode]
            print(
                f"{size:>8} {mode:<20} {r['upload_mb_s'] or 0:>10.1f} {r['download_mb_s'] or 0:>10.1f} "
                f"{r.get('upload_ratio', '') or '':>9} {r.get('download_ratio', '') or '':>11}"
            )
        met = row["target"]["met"]
        verdict = "not measured" if met is None else ("met" if met else "NOT met")
        print(f"{size:>8} target: service_http download >= {TARGET_VS_BARE}x bare_http: {verdict}")
    print(
        f"service peak RSS: {report['server']['peak_rss_mib']} MiB (idle {report['server']['idle_rss_mib']} MiB)"
    )


def _repeats(text: str | None, sizes: list[int]) -> dict[int, int]:
    out = {s: DEFAULT_REPEATS.get(s, 3) for s in sizes}
    if text:
        for part in text.split(","):
            if ":" in part:
                k, v = part.split(":", 1)
                out[int(k)] = int(v)
            else:
                out = {s: int(part) for s in sizes}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = parser("bench.data_api.run", __doc__, out="data_api.json", workdir=True)
    ap.add_argument(
        "--sizes-mib", default=",".join(map(str, SIZES_MIB)), help="object sizes in MiB (default 1,256)"
    )
    ap.add_argument("--repeats", default=None, help="N for all sizes, or SIZE:N,... (default 1:30,256:5)")
    add_modes(ap, MODES)
    args = ap.parse_args(argv)

    sizes = [int(s) for s in args.sizes_mib.split(",") if s.strip()]
    modes = chosen_modes(ap, args.modes, MODES)
    if "direct" not in modes:
        ap.error(f"--modes must be a subset of {','.join(MODES)} that includes direct (the baseline)")
    repeats = _repeats(args.repeats, sizes)

    own = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="freestack-bench-data-api-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / "data"
    keys = workdir / "keys.sqlite"
    (root / USER / COLLECTION).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AIRFLOW_HOME", str(workdir / "airflow"))
    proc = bare = None
    try:
        from freestack.dataapi.keys import KeyStore

        key = KeyStore(keys).create_key(USER, label="bench")[1]
        proc, url, log = start_service(workdir, root, keys)
        idle = _proc_status(proc.pid, "VmRSS")
        bare, bare_url = start_bare(workdir / "bare") if "bare_http" in modes else (None, None)
        c = Contenders(url, key, root, bare_url)
        samples: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for size_mib in sizes:
            size = size_mib * 1024 * 1024
            payload = workdir / f"payload-{size_mib}MiB.bin"
            make_payload(payload, size)
            label = f"{size_mib}MiB"
            samples[label] = {m: [] for m in modes}
            print(f"{label}: {repeats[size_mib]} repeat(s) of {', '.join(modes)}", flush=True)
            c.upload("direct", payload, f"warmup-{label}")  # page cache and connections warm for everyone
            for mode in ("service_http", "service_datafs"):
                c.download(mode, f"warmup-{label}")
            for r in range(repeats[size_mib]):
                for mode in modes:
                    s = measure(c, mode, payload, size, f"obj-{label}")
                    s["repeat"] = r
                    samples[label][mode].append(s)
                if size_mib >= 64 or r == repeats[size_mib] - 1:
                    last = {m: samples[label][m][-1] for m in modes}
                    print(
                        "  "
                        + "  ".join(
                            f"{m}: "
                            + (
                                last[m]["error"]
                                if "error" in last[m]
                                else f"{last[m]['upload_mb_s']:.0f} up / {last[m]['download_mb_s']:.0f} down"
                            )
                            for m in modes
                        ),
                        flush=True,
                    )
            payload.unlink()
        peak = _proc_status(proc.pid, "VmHWM")
        report = {
            "name": "data_api",
            "machine": machine(),
            "params": {
                "sizes_mib": sizes,
                "repeats": {f"{k}MiB": v for k, v in repeats.items()},
                "modes": modes,
                "block_bytes": BLOCK,
                "backing": "local folder (same disk for direct and service)",
                "server": "freestack data-api: uvicorn + httptools, 1 process, access log off",
            },
            "samples": samples,
            "summary": summarise(samples),
            "server": {
                "idle_rss_mib": round(idle / 1024, 1) if idle else None,
                "peak_rss_mib": round(peak / 1024, 1) if peak else None,
            },
        }
    finally:
        if proc is not None:
            stop_service(proc)
        if bare is not None:
            stop_service(bare)
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    out = write_report(report, args.out)
    print_table(report)
    print(f"\nreport: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
