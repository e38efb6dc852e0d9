"""The load test of benchmarks/load_test.py, run short: concurrent sessions stay isolated and error-free."""

import importlib.util
import io
import sys
from pathlib import Path

import pytest

# loaded by path: putting benchmarks/ on sys.path would let its sampling.py shadow other imports
_spec = importlib.util.spec_from_file_location("load_test", Path(__file__).resolve().parent.parent / "benchmarks" / "load_test.py")
load_test = sys.modules["load_test"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up there
_spec.loader.exec_module(load_test)


@pytest.mark.load
def test_concurrent_sessions_get_no_errors_and_the_same_outputs_as_a_serial_replay():
    report_text = io.StringIO()
    # 4 sessions for 8 s on tiny weights: the long run (16 sessions, 120 s) is documented in benchmarks/README.md
    report = load_test.run(weights="tiny", sessions=4, duration=8, steps=4, batch=2, out=report_text)
    assert report["requests"] >= 4 and report["latency"]["generate"]["count"] >= 4, report_text.getvalue()
    assert report["errors"] == 0 and report["mismatches"] == 0, report_text.getvalue()
    assert 0 < report["rss_peak_mib"] < 4096, report_text.getvalue()
