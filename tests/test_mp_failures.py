"""tools/mp_failures.py: the killed-process scenarios that shmlot's context is claimed to
survive (README, "What the context buys") do survive, with the shmlot flavour."""
import os
import sys

import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import mp_failures  # noqa: E402

sys.path.remove(os.path.join(ROOT, "tools"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scenario", ["pool-idle", "ring-lock", "get-waiting"])
def test_shmlot_context_survives(default_lot, scenario):
    assert mp_failures.measure(scenario, "shmlot", "fork", 15.0) == "survived"
