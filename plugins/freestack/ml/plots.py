"""Figures as PNG bytes, for the reports that embed their plots (evaluation, monitoring)."""

from __future__ import annotations

import io


def png(fig, *, dpi: int = 100) -> bytes:
    """``fig`` laid out and rendered as PNG. The figure is closed here: pyplot keeps every open figure
    alive, and a report draws many."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
