"""The listener workers' metrics in the primary's /metrics (server/worker_metrics.py):
each worker's samples join the family of the same name, labelled by worker,
in text Prometheus parses; a file not written for a while is left out."""

from __future__ import annotations

import os
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from townhall.server.worker_metrics import METRICS_DIR, STALE_S, labelled, with_workers

PRIMARY = """# HELP townhall_handoffs_total Handoffs.
# TYPE townhall_handoffs_total counter
townhall_handoffs_total{outcome="adopted"} 3.0
# HELP up_seconds Up.
# TYPE up_seconds gauge
up_seconds 12.0
"""
WORKER = """# HELP townhall_handoffs_total Handoffs.
# TYPE townhall_handoffs_total counter
townhall_handoffs_total{outcome="taken"} 2.0
# HELP only_here Only in workers.
# TYPE only_here gauge
only_here 1.0
"""


def test_a_sample_gets_the_workers_label() -> None:
    assert labelled('a_total{x="1"} 2.0\n', "w2") == 'a_total{worker="w2",x="1"} 2.0\n'
    assert labelled("a 2.0\n", "w2") == 'a{worker="w2"} 2.0\n'


def test_the_workers_samples_join_the_primarys_families(tmp_path: Path) -> None:
    folder = tmp_path / METRICS_DIR
    folder.mkdir(parents=True)
    (folder / "vm-w2.prom").write_text(WORKER)
    (folder / "vm-w3.prom").write_text(WORKER.replace("2.0", "5.0"))
    gone = folder / "vm-w4.prom"
    gone.write_text(WORKER)
    old = time.time() - STALE_S - 1
    os.utime(gone, (old, old))
    text = with_workers(PRIMARY, tmp_path)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    handoffs = {
        (s.labels.get("worker", ""), s.labels["outcome"]): s.value
        for s in families["townhall_handoffs"].samples
    }
    assert handoffs == {("", "adopted"): 3.0, ("vm-w2", "taken"): 2.0, ("vm-w3", "taken"): 5.0}
    assert {s.labels["worker"] for s in families["only_here"].samples} == {"vm-w2", "vm-w3"}
    assert text.count("# TYPE townhall_handoffs_total") == 1
    assert with_workers(PRIMARY, tmp_path / "nothing") == PRIMARY
