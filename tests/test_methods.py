"""Every method learns: on digits, each of tdmr, kd, scratch and probe ends well above chance.

Digits has 10 classes (chance 0.1). The teacher is timm's ``test_vit`` with random weights (no
download), so its features are a fixed random projection a linear head can still read; the
student is ``test_resnet``. These are small real runs (seconds each), not a benchmark: the
thresholds only say that a method trained, not how well it transfers.
"""

from __future__ import annotations

import pytest

from tdmr_search.config import config_from_dict
from tdmr_search.pipeline.run import run_pipeline

pytestmark = pytest.mark.slow  # each method trains for tens of epochs

CHANCE = 0.1

CONFIG = {
    "device": "cpu",
    "seed": 0,
    "data": {"dataset": "digits", "shots": 20, "val_fraction": 0.25, "unlabeled": 300},
    "teacher": {"name": "test_vit", "weights": "random", "input_size": 32},
    "reprogram": {"transform": "resize", "proxy_dim": 32, "epochs": 30, "lr": 0.01, "batch_size": 32},
    "student": {"name": "test_resnet", "resolution": 16},
    "distill": {"n_stages": 2, "epochs": 8, "lr": 0.01, "batch_size": 32},
}


@pytest.mark.parametrize("method", ["tdmr", "kd", "scratch", "probe"])
def test_each_method_learns_above_chance_on_digits(method):
    result = run_pipeline(config_from_dict({**CONFIG, "method": method}))
    m = result.metrics
    assert m["test_acc"] >= 3 * CHANCE, f"{method}: test accuracy {m['test_acc']:.3f} is near chance ({CHANCE})"
    assert m["val_acc"] >= 3 * CHANCE, f"{method}: validation accuracy {m['val_acc']:.3f} is near chance ({CHANCE})"
