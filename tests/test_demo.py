"""`make demo`'s job runs end to end at TP=2 x PP=2 on 4 CPU ranks and its loss falls."""

import re
from pathlib import Path

import pytest

from conftest import REPO, run_torchrun


@pytest.mark.slow
def test_demo_trains_at_tp2_pp2():
    demo = Path(REPO / "tools" / "demo.py")
    output = run_torchrun(str(demo), 4, "--steps", "12")
    assert "TP=2 PP=2 DP=1" in output
    losses = [float(x) for x in re.findall(r"masked-token loss ([0-9.]+)", output)]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < losses[0] - 0.3, losses
