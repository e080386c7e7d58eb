"""freestack.train.costs: a training's seconds, memory and samples, and what they cost at the spec's prices."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from freestack.ml.loop import TrainResult
from freestack.spec import PricesSpec
from freestack.train.costs import Meter


def test_the_seconds_are_priced_per_cpu_and_gpu_hour_with_every_rank_counted():
    meter = Meter.start()
    end = time.process_time() + 0.05
    while time.process_time() < end:  # some CPU time to measure
        pass
    result = TrainResult(
        model=None, task="classification", epochs_run=3, resumed_from=1, train_seconds=2.0, samples_per_s=50.0
    )
    result.world_size, result.device = 2, "cpu"
    costs = meter.read(result, cpu_hour=3600.0, gpu_hour=7200.0, currency="EUR")
    assert costs.wall_s >= costs.cpu_s * 0.5 > 0 and costs.gpu_s == 0
    assert costs.samples == 100 and costs.epochs == 2 and costs.resumed_from == 1 and costs.ranks == 2
    assert costs.cost == pytest.approx(costs.cpu_s * 2, rel=0.01) and costs.currency == "EUR"
    assert costs.peak_memory_mb > 10 and costs.peak_gpu_memory_mb is None


def test_prices_are_not_negative_and_name_a_currency():
    assert PricesSpec().cpu_hour == 0 and PricesSpec().currency == "USD"
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        PricesSpec(gpu_hour=-1)
    with pytest.raises(ValidationError, match="pattern"):
        PricesSpec(currency="dollars")
