"""Hypothesis settings for the fuzz tests, and a hard timeout per test.

Two profiles:

* ``ci`` (the default): about 25 examples per test, a few hundred in all, well under a minute on one core;
* ``fuzz``: 2,000 examples per test (thousands per loader), selected with ``HYPOTHESIS_PROFILE=fuzz`` or by
  running the fuzz tier alone, ``pytest -m fuzz``.

``FUZZ_EXAMPLES=N`` sets the number of examples per test of either profile.

Every test module in tests/fuzz sets ``pytestmark = pytest.mark.fuzz``. A test that runs past its budget (a hang, which
hypothesis's per-example ``deadline`` cannot catch because it only measures finished examples) is stopped by
SIGALRM and fails naming the timeout. The example database is off: failures print a reproduction blob
(``print_blob``), and nothing is written to the working tree.
"""

from __future__ import annotations

import os
import signal
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, Phase, settings

# Examples are small files written to a temporary folder; the slow health check would trip on the first
# parquet or datasets example (pyarrow and datasets imports) on a loaded machine.
_COMMON = dict(database=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])
# ci skips shrinking: a failure prints its unshrunk example (and a blob to reproduce it) at once, where shrinking
# examples that hold 200 KB lines can take minutes; run the fuzz profile to get the minimal example.
settings.register_profile("ci", max_examples=25, deadline=timedelta(seconds=10),
                          phases=[Phase.explicit, Phase.reuse, Phase.generate], **_COMMON)
settings.register_profile("fuzz", max_examples=2000, deadline=timedelta(seconds=20), **_COMMON)

# Seconds one test may take before it counts as hung: generous for the slowest test at each tier.
TEST_TIMEOUT = {"ci": 120, "fuzz": 3600}


PROFILE = "ci"  # set by pytest_configure


def _profile(config) -> str:
    wanted = os.environ.get("HYPOTHESIS_PROFILE")
    if wanted:
        return wanted
    markexpr = (config.getoption("markexpr", "") or "").replace(" ", "")
    return "fuzz" if "fuzz" in markexpr and "notfuzz" not in markexpr else "ci"


def pytest_configure(config):
    global PROFILE
    PROFILE = _profile(config)
    settings.load_profile(PROFILE)
    if os.environ.get("FUZZ_EXAMPLES"):  # e.g. FUZZ_EXAMPLES=500: the profile's settings with more examples
        settings.register_profile(f"{PROFILE}-n", settings.get_profile(PROFILE),
                                  max_examples=int(os.environ["FUZZ_EXAMPLES"]))
        settings.load_profile(f"{PROFILE}-n")


@pytest.fixture(autouse=True)
def _hang_guard(request):
    """Fail a test that runs longer than its tier's budget instead of hanging the run."""
    limit = TEST_TIMEOUT.get(PROFILE, TEST_TIMEOUT["ci"])

    def expired(signum, frame):
        raise TimeoutError(f"{request.node.nodeid} ran over {limit} s: a loader hangs on some input")

    previous = signal.signal(signal.SIGALRM, expired)
    # After the first expiry it fires again every 5 s, so hypothesis's shrinking of a hanging example stops too.
    signal.setitimer(signal.ITIMER_REAL, limit, 5)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
