"""Reading the request log and the labels: the server's Parquet files, labels from /send-feedback and from
files users drop, a truncated file reported and left out."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from freestack.monitor.core import read_labels, read_requests
from freestack_server.core.requestlog import RequestLog, monitoring_uri


def test_requests_and_labels_from_the_server_and_from_dropped_files(tmp_path):
    root = tmp_path.as_uri()
    log = RequestLog(
        monitoring_uri(root, "m"),
        rate=1.0,
        model="m",
        version="v1",
        deployment="m",
        columns=[("a", "numeric"), ("b", "numeric")],
        classes=["no", "yes"],
    )
    t = datetime(2026, 11, 10, 5, 30, tzinfo=UTC)
    log.add(
        "r1",
        np.array([[1.0, 2.0], [3.0, 4.0]], np.float32),
        np.array([[0.9, 0.1], [0.2, 0.8]], np.float32),
        ts=t,
    )
    log.add(
        "r2", np.array([[5.0, 6.0]], np.float32), np.array([[0.4, 0.6]], np.float32), ts=t.replace(hour=7)
    )
    log.add_labels("r1", ["no", "no"], 1.0, ts=t.replace(hour=9))
    log.flush()
    labels = tmp_path / "monitoring" / "m" / "labels"
    (labels / "late.csv").write_text("request_id,row,label\nr2,0,yes\n")  # a user's own file, at the top
    (labels / "ds=2026-11-10" / "hour=09" / "cut.parquet").write_bytes(b"PAR1 not really")

    got = read_requests(root, "m", datetime(2026, 11, 10, tzinfo=UTC), datetime(2026, 11, 10, 6, tzinfo=UTC))
    assert got.rows["request_id"].tolist() == ["r1", "r1"] and got.rows["row"].tolist() == [0, 1]
    assert got.rows["prediction"].tolist() == ["no", "yes"] and got.rows["input.b"].tolist() == [2.0, 4.0]
    assert got.files == 1 and not got.problems
    both = read_requests(root, "m", datetime(2026, 11, 10, tzinfo=UTC), datetime(2026, 11, 11, tzinfo=UTC))
    assert sorted(both.rows["request_id"]) == ["r1", "r1", "r2"] and both.files == 2

    lab = read_labels(root, "m", datetime(2026, 11, 10, tzinfo=UTC))
    assert sorted(
        zip(lab.rows["request_id"], lab.rows["row"].astype(int), lab.rows["label"], strict=True)
    ) == [("r1", 0, "no"), ("r1", 1, "no"), ("r2", 0, "yes")]
    assert len(lab.problems) == 1 and "cut.parquet: unreadable" in lab.problems[0]
    assert len(read_labels(root, "m", datetime(2026, 11, 11, tzinfo=UTC)).rows) == 1  # only the undated file
