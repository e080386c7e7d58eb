"""plotly.js for the chart pages, served by the plugin (no other host is asked for anything).

The pages draw only ``scatter`` and ``bar`` traces (:mod:`freestack.ui.plots`), so they load plotly.js's
*basic* bundle (scatter, bar, pie and every component: axes, legends, annotations, shapes, error bars,
hover): 1.2 MB to parse, against 4.8 MB for the full bundle the ``plotly`` package ships. The file is
plotly's own build (npm ``plotly.js-basic-dist-min``, MIT, its license beside it in
``static/vendor/``), of the plotly.js version the ``plotly`` package ships.

It is served under a name that carries its version (``plotly-basic-4.1.1.min.js``), so a browser keeps
it for a year without asking again (``immutable``), and gzipped once per process (0.4 MB) rather than by
Airflow's middleware on every request. A client that does not take gzip gets the file as it is.
"""

from __future__ import annotations

import functools
import gzip
import re
from pathlib import Path

from fastapi import Request, Response

BUNDLE = Path(__file__).parent / "static" / "vendor" / "plotly-basic.min.js"
#: the trace types the bundle draws (plotly.js's lib/index-basic.js)
TRACES = frozenset({"scatter", "bar", "pie"})
CACHE = "public, max-age=31536000, immutable"


@functools.cache
def bundle_version() -> str:
    """The bundle's plotly.js version, from its banner (``plotly.js (basic - minified) v4.1.1``)."""
    with BUNDLE.open("rb") as f:
        head = f.read(512).decode("utf-8", "replace")
    found = re.search(r"plotly\.js \(basic[^)]*\) v(\d+\.\d+\.\d+)", head)
    if not found:
        raise RuntimeError(f"{BUNDLE} is not plotly.js's basic bundle (no version in its banner)")
    return found.group(1)


def plotly_js_name() -> str:
    """The name the chart pages load the bundle by: its version in it."""
    return f"plotly-basic-{bundle_version()}.min.js"


@functools.cache
def _gzipped() -> bytes:
    return gzip.compress(BUNDLE.read_bytes(), compresslevel=9, mtime=0)


def accepts_gzip(request: Request) -> bool:
    """Whether the request's Accept-Encoding names gzip with a weight above 0."""
    for part in request.headers.get("accept-encoding", "").lower().split(","):
        coding, *params = (p.strip() for p in part.split(";"))
        if coding == "gzip":
            weight = next((p[2:] for p in params if p.startswith("q=")), "1")
            try:
                return float(weight) > 0
            except ValueError:
                return False
    return False


def plotly_js(request: Request) -> Response:
    """The bundle, gzipped when the client takes gzip, kept a year by the browser and any cache between."""
    headers = {"Cache-Control": CACHE, "Vary": "Accept-Encoding", "X-Content-Type-Options": "nosniff"}
    if accepts_gzip(request):
        headers["Content-Encoding"] = "gzip"
        return Response(_gzipped(), media_type="text/javascript", headers=headers)
    return Response(BUNDLE.read_bytes(), media_type="text/javascript", headers=headers)


__all__ = ["TRACES", "accepts_gzip", "bundle_version", "plotly_js", "plotly_js_name"]
