"""Parameter types for numbers from the command line: finite, and in the range they make sense in."""

from __future__ import annotations

import math

import click

MAX_RATE = 10.0  # no optimizer here learns at a larger rate; float32 cannot even hold 1e39


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses ``nan`` and ``inf`` (which compare as in range, or pass an
    open bound) with a usage error, before anything runs."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def rate_type() -> FiniteFloatRange:
    """A learning rate: above 0, at most :data:`MAX_RATE`."""
    return FiniteFloatRange(0, MAX_RATE, min_open=True)
