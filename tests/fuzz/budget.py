"""How hard the property fuzzers try: briefly in `make test`, for long in `make fuzz`.

fuzz_settings(examples) is the @settings of every property in tests/fuzz: `examples` is
sized so that the whole folder runs in well under a minute inside `make test`;
MAILHOUSE_FUZZ_SCALE=N (set by `make fuzz`) multiplies it. Every example must finish
within DEADLINE: a parser that loops or goes quadratic on some input fails the property.
"""
from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import HealthCheck, settings

DEADLINE = timedelta(seconds=5)      # generous: the machine is shared, the inputs are small
SCALE = max(1, int(os.environ.get("MAILHOUSE_FUZZ_SCALE", "1")))


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples * SCALE, deadline=DEADLINE,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
