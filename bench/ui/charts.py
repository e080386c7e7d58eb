"""The ML views' chart pages in a real browser: seconds from a navigation until every Plotly figure of the
page is drawn, first with an empty cache and then with the cache warm, against a page of the same views
without a chart (the baseline, in the same run and browser).

The Airflow API server's app (``create_app()``: the plugin, its login check, Airflow's middleware) serves on
127.0.0.1 from this process; Debian's Chromium, driven by Playwright, opens the pages. Each load is
measured ``--repeats`` times: cold in a new browser context (nothing cached), warm as the second visit of
that context (the median of each).

    python -m bench.ui.charts [--versions 200] [--trials 100] [--repeats 5] [--out FILE]
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import free_port, host, parser, write_report

CHROMIUM = "/usr/bin/chromium"
LIMIT_S = 1.0


def _serve() -> tuple[str, object]:
    """The API server's app on a free port of 127.0.0.1, in a thread: its base URL and the server."""
    import uvicorn
    from airflow.api_fastapi.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the API server did not start within 60 s")
        time.sleep(0.1)
    return f"http://127.0.0.1:{port}", server


def _load(page, url: str, figures: int) -> dict:
    """Open ``url``; seconds until its ``figures`` Plotly figures are drawn (else its tables are enhanced),
    and the bytes that came over the network for it (the Resource Timing API's transfer sizes)."""
    t0 = time.perf_counter()
    page.goto(url, wait_until="commit")
    if figures:
        page.locator("[data-drawn=true]").nth(figures - 1).wait_for(state="attached", timeout=60_000)
    else:
        page.locator("table[data-enhanced=true]").first.wait_for(state="attached", timeout=60_000)
    seconds = time.perf_counter() - t0
    sent = page.evaluate("""() => performance.getEntriesByType("navigation").concat(
        performance.getEntriesByType("resource")).reduce((n, e) => n + e.transferSize, 0)""")
    return {"s": seconds, "bytes": sent}


def _measure(browser, url: str, figures: int, repeats: int) -> dict:
    cold, warm, sizes = [], [], []
    for _ in range(repeats):
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        first = _load(page, url, figures)
        second = _load(page, url, figures)
        context.close()
        cold.append(first["s"])
        warm.append(second["s"])
        sizes.append((first["bytes"], second["bytes"]))
    return {
        "cold_s": statistics.median(cold),
        "warm_s": statistics.median(warm),
        "cold_samples": cold,
        "warm_samples": warm,
        "cold_bytes": sizes[0][0],
        "warm_bytes": sizes[0][1],
    }


def main() -> int:
    ap = parser("bench.ui.charts", __doc__, out="ui_charts.json")
    ap.add_argument("--versions", type=int, default=200)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"no browser at {CHROMIUM}: apt-get install -y chromium", file=sys.stderr)
        return 2
    load_at_start = os.getloadavg()[0]  # other work on the machine slows the browser: compare similar loads
    base = Path(tempfile.mkdtemp(prefix="freestack-bench-charts-"))
    try:
        from bench.ui.run import _environment

        _environment(base)
        from playwright.sync_api import sync_playwright

        from bench.ui.volume import make_registry, make_sweep

        make_registry(os.environ["FREESTACK_STORAGE_ROOT"], "digits", args.versions)
        sweep_id = make_sweep(os.environ["FREESTACK_STORAGE_ROOT"], "digits", args.trials)
        url, server = _serve()
        ui = f"{url}/freestack/ui"
        pages = {
            "versions page (1 chart)": (f"{ui}/models/digits", 1),
            "sweep page (4 charts)": (f"{ui}/sweeps/digits/{sweep_id}", 4),
            "baseline: models page (no chart)": (f"{ui}/models", 0),
        }
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            for path, n in pages.values():  # the server's first requests (imports, the bundle gzipped once)
                _measure(browser, path, n, 1)
            timings = {name: _measure(browser, path, n, args.repeats) for name, (path, n) in pages.items()}
            browser.close()
        server.should_exit = True
    finally:
        shutil.rmtree(base, ignore_errors=True)
    args.load = {"start": load_at_start, "end": os.getloadavg()[0]}
    return _report(args, timings)


def _report(args, timings: dict) -> int:
    plain = timings["baseline: models page (no chart)"]
    print(f"{'page':<40} {'cold s':>8} {'warm s':>8} {'cold KiB':>9} {'warm KiB':>9}")
    for name, t in timings.items():
        print(
            f"{name:<40} {t['cold_s']:8.3f} {t['warm_s']:8.3f} "
            f"{t['cold_bytes'] / 1024:9.0f} {t['warm_bytes'] / 1024:9.0f}"
        )
    ratios = {
        f"{name.split(' ')[0]}_{kind}_vs_no_chart": t[f"{kind}_s"] / plain[f"{kind}_s"]
        for name, t in timings.items()
        if t is not plain
        for kind in ("cold", "warm")
    }
    print(", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    worst = max(max(t["cold_s"], t["warm_s"]) for t in timings.values())
    met = worst <= LIMIT_S
    print(
        f"slowest chart page {worst:.3f} s: {'meets' if met else 'MISSES'} the {LIMIT_S:.0f} s target "
        f"(1-minute load average {args.load['start']:.1f} at the start, {args.load['end']:.1f} at the end)"
    )
    write_report(
        {
            "name": "ui_charts",
            "host": host(),
            "versions": args.versions,
            "trials": args.trials,
            "repeats": args.repeats,
            "pages": timings,
            "ratios": ratios,
            "slowest_s": worst,
            "target_s": LIMIT_S,
            "met": met,
            "load_avg_1min": args.load,
        },
        args.out,
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
