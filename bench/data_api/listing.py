"""Data API under hostile load: listing page time against directory size, the server's memory for an
anonymous ``If-Match`` against a big object, and the temporaries ``kill -9`` leaves behind.

    python -m bench.data_api.listing [--small 1000] [--large 20000] [--object-mib 256] [--kills 10]
                                     [--out bench/results/dataapi_listing.json]

1. Starts ``freestack data-api`` (uvicorn, one process) on 127.0.0.1 over a fresh local folder, with a
   user and an API key.
2. **Listing.** Two directories of ``--small`` and ``--large`` files (written straight into the backing
   folder), listed through the service with the service's default page size (1,000). After one warm-up
   listing of each, every page of each directory is fetched ``--repeats`` times; the page time is the
   wall time of one ``GET`` (client and server on this machine). ``ratio`` = median page time at
   ``--large`` / median page time at ``--small``: 1 when page time does not grow with the directory.
   The first (cold) request of each directory is recorded apart.
3. **If-Match.** A public collection holds one ``--object-mib`` object, uploaded through the service. The
   server's peak RSS (VmHWM, reset through ``/proc/<pid>/clear_refs`` first) and its bytes read
   (``/proc/<pid>/io`` rchar) are taken around: an anonymous ``PUT`` with ``If-Match`` (the answer
   should be 401), and the owner's ``PUT`` with the right ``If-Match`` (200).
4. **kill -9.** ``--kills`` times: start a streamed upload, wait for its hidden temporary, ``kill -9`` the
   service, start it again. Counts the temporaries each kill left, and those left ``--settle`` seconds
   after each restart at most (the restart sweeps a dead process's uploads at once, whatever their age).

Writes a JSON report (machine, params, samples, summary) and prints a summary.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import host, parser, write_report
from bench.data_api.run import _proc_status, start_service, stop_service

REPO = Path(__file__).resolve().parents[2]
USER = "bench"
TMP_MARK = ".freestack-tmp-"
MIB = 1024 * 1024


class Service:
    """One ``freestack data-api`` over ``workdir/data``; restartable on the same folder and keys."""

    def __init__(self, workdir: Path, key: str):
        import requests

        self.workdir = workdir
        self.root = workdir / "data"
        self.keys = workdir / "keys.sqlite"
        self.key = key
        self.session = requests.Session()
        self.session.trust_env = False
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> None:
        self.proc, self.url, _ = start_service(self.workdir, self.root, self.keys)

    def stop(self) -> None:
        if self.proc is not None:
            stop_service(self.proc)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def request(self, method: str, path: str, *, key: bool = True, **kwargs):
        headers = {**({"Authorization": f"Simple {self.key}"} if key else {}), **kwargs.pop("headers", {})}
        return self.session.request(
            method, f"{self.url}/v1/data/{path}", headers=headers, timeout=600, **kwargs
        )


# ---------------------------------------------------------------------------------------------------------
# listing


def _fill(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"file-{i:06d}.bin").write_bytes(b"x" * (i % 97))


def _pages(svc: Service, coll: str) -> list[float]:
    """Fetch every page of ``bench/<coll>``; the wall seconds of each request."""
    times, marker = [], None
    while True:
        t0 = time.perf_counter()
        r = svc.request("GET", f"{USER}/{coll}", params={"marker": marker} if marker else None)
        times.append(time.perf_counter() - t0)
        r.raise_for_status()
        marker = r.json()["marker"]
        if not marker:
            return times


def bench_listing(svc: Service, sizes: dict[str, int], repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, n in sizes.items():
        _fill(svc.root / USER / label, n)
    for label, n in sizes.items():
        t0 = time.perf_counter()
        svc.request("GET", f"{USER}/{label}").raise_for_status()
        cold = time.perf_counter() - t0
        _pages(svc, label)  # warm-up
        samples = [t for _ in range(repeats) for t in _pages(svc, label)]
        out[label] = {
            "files": n,
            "pages": len(samples) // repeats,
            "cold_first_page_s": round(cold, 5),
            "page_s": [round(t, 5) for t in samples],
            "median_page_s": round(statistics.median(samples), 5),
        }
        print(
            f"  {n:>7} files: {out[label]['pages']} page(s), median page {out[label]['median_page_s'] * 1000:.1f} ms"
            f" (cold first page {cold * 1000:.1f} ms)",
            flush=True,
        )
    return out


# ---------------------------------------------------------------------------------------------------------
# If-Match


def _proc_io(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/io")


def _measure(svc: Service, fn) -> dict[str, Any]:
    pid = svc.proc.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM from the current RSS on
    rss, read = _proc_status(pid, "VmHWM"), _proc_io(pid, "rchar")
    status = fn()
    return {
        "status": status,
        "peak_rss_delta_mib": round((_proc_status(pid, "VmHWM") - rss) / 1024, 1),
        "read_mib": round((_proc_io(pid, "rchar") - read) / MIB, 2),
    }


def bench_if_match(svc: Service, object_mib: int) -> dict[str, Any]:
    svc.request("POST", USER, json={"name": "public", "acl": {"read": ["user://*"]}}).raise_for_status()
    h, block = hashlib.sha256(), os.urandom(MIB)

    def body():
        for _ in range(object_mib):
            h.update(block)
            yield block

    svc.request("PUT", f"{USER}/public/big.bin", data=body()).raise_for_status()
    tag = {"If-Match": f'"{h.hexdigest()}"'}
    out = {
        "anonymous": _measure(
            svc,
            lambda: (
                svc.request("PUT", f"{USER}/public/big.bin", key=False, data=b"x", headers=tag).status_code
            ),
        ),
        "owner": _measure(
            svc, lambda: svc.request("PUT", f"{USER}/public/big.bin", data=b"x", headers=tag).status_code
        ),
    }
    for who, m in out.items():
        print(
            f"  If-Match, {who}: HTTP {m['status']}, server peak RSS +{m['peak_rss_delta_mib']} MiB, "
            f"read {m['read_mib']} MiB",
            flush=True,
        )
    return out


# ---------------------------------------------------------------------------------------------------------
# kill -9


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".") and TMP_MARK in p.name]


def _kill_mid_upload(svc: Service, name: str) -> None:
    port = int(svc.url.rsplit(":", 1)[1])
    folder = svc.root / USER / "uploads"
    before = len(_temps(folder))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(
            (
                f"PUT /v1/data/{USER}/uploads/{name} HTTP/1.1\r\nHost: x\r\nAuthorization: Simple {svc.key}"
                "\r\nTransfer-Encoding: chunked\r\n\r\n"
            ).encode()
        )
        piece = os.urandom(256 * 1024)
        deadline = time.monotonic() + 30
        while len(_temps(folder)) <= before and time.monotonic() < deadline:
            s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        svc.kill()


def bench_kills(svc: Service, kills: int, settle: float) -> dict[str, Any]:
    """Each kill leaves its upload's temporary; the restart that follows sweeps it at start-up (the dead
    process's upload journal lists it), with no waiting for the temporaries to age."""
    folder = svc.root / USER / "uploads"
    svc.request("POST", USER, json={"name": "uploads"}).raise_for_status()
    left_by_kills, size, swept_in = 0, 0, []
    for i in range(kills):
        before = set(_temps(folder))
        _kill_mid_upload(svc, f"big{i}.bin")
        temps = [p for p in _temps(folder) if p not in before]  # this kill's own
        left_by_kills += len(temps)
        size += sum(p.stat().st_size for p in temps)
        started = time.monotonic()
        svc.start()
        deadline = started + settle
        while _temps(folder) and time.monotonic() < deadline:
            time.sleep(0.05)
        swept_in.append(time.monotonic() - started)
    left = _temps(folder)
    out = {
        "kills": kills,
        "temps_after_kills": left_by_kills,
        "temps_after_kills_mib": round(size / MIB, 1),
        "temps_after_restart": len(left),
        "restart_to_swept_s": round(max(swept_in, default=0.0), 2),
    }
    print(
        f"  {kills} kill -9 mid-upload: {left_by_kills} temporaries ({out['temps_after_kills_mib']} MiB); after "
        f"each restart: {len(left)} (swept within {out['restart_to_swept_s']} s of the restart)",
        flush=True,
    )
    return out


# ---------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = parser("bench.data_api.listing", __doc__, out="dataapi_listing.json", workdir=True)
    ap.add_argument("--small", type=int, default=1000, help="files in the small directory (default 1000)")
    ap.add_argument("--large", type=int, default=20000, help="files in the large directory (default 20000)")
    ap.add_argument("--repeats", type=int, default=5, help="times every page is fetched (default 5)")
    ap.add_argument("--object-mib", type=int, default=256, help="the If-Match object's size (default 256)")
    ap.add_argument("--kills", type=int, default=10, help="kill -9 mid-upload this many times (default 10)")
    ap.add_argument(
        "--settle", type=float, default=20.0, help="seconds to wait for the restart's sweep (default 20)"
    )
    args = ap.parse_args(argv)

    own = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="freestack-bench-dataapi-listing-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AIRFLOW_HOME", str(workdir / "airflow"))
    from freestack.dataapi.keys import KeyStore

    (workdir / "data" / USER).mkdir(parents=True, exist_ok=True)
    svc = Service(workdir, KeyStore(workdir / "keys.sqlite").create_key(USER, label="bench")[1])
    try:
        svc.start()
        print("listing:", flush=True)
        listing = bench_listing(svc, {"small": args.small, "large": args.large}, args.repeats)
        print("If-Match:", flush=True)
        if_match = bench_if_match(svc, args.object_mib)
        print("kill -9:", flush=True)
        kills = bench_kills(svc, args.kills, args.settle)
    finally:
        svc.stop()
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    small, large = listing["small"]["median_page_s"], listing["large"]["median_page_s"]
    report = {
        "name": "dataapi_listing",
        "machine": {**host(), "freestack": str(Path(sys.modules["freestack"].__file__).parent)},
        "params": {
            "small": args.small,
            "large": args.large,
            "repeats": args.repeats,
            "object_mib": args.object_mib,
            "kills": args.kills,
            "page_size": 1000,
        },
        "samples": {"listing": listing},
        "summary": {
            "listing": {
                "small_median_page_s": small,
                "large_median_page_s": large,
                "ratio": round(large / small, 2) if small else None,
            },
            "if_match": if_match,
            "kill_9": kills,
        },
    }
    out = write_report(report, args.out)
    print(
        f"\nlisting page: {small * 1000:.1f} ms at {args.small} files, {large * 1000:.1f} ms at {args.large} "
        f"files (ratio {report['summary']['listing']['ratio']})"
    )
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
