"""Quantization building blocks: integer arithmetic (`intmath`) and calibration observers
(`observers`). Both are pure numpy and shared by the interpreter's integer mode, the passes and
every backend."""
from __future__ import annotations

from .intmath import (QUANTIZE_ROUNDINGS, REQUANT_ROUNDINGS, IntegerOverflowError, QuantError,
                      multiplier_value, quantize_float, quantize_multiplier, quantize_multipliers,
                      rdbpot, requantize, round_half_away, round_half_even, saturate,
                      shift_requantize, srdhm)
from .observers import (EntropyObserver, MinMaxObserver, MovingAverageMinMaxObserver, MSEObserver,
                        Observer, PercentileObserver, choose_qparams)

__all__ = ["QUANTIZE_ROUNDINGS", "REQUANT_ROUNDINGS", "IntegerOverflowError", "QuantError",
           "multiplier_value", "quantize_float", "quantize_multiplier", "quantize_multipliers",
           "rdbpot", "requantize", "round_half_away", "round_half_even", "saturate",
           "shift_requantize", "srdhm", "EntropyObserver", "MinMaxObserver",
           "MovingAverageMinMaxObserver", "MSEObserver", "Observer", "PercentileObserver",
           "choose_qparams"]
