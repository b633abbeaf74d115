"""Tensor types and quantization parameters.

dtypes are short strings as they print in the text form: `f32`, `f16`, `i2`…`i16`, `u2`…`u16`,
`i32`, `i64`, `bool`, and the ONNX narrow float storage formats `f8e4m3fn`, `f8e5m2`, `f4e2m1`.
A dimension is an int, or None for a dynamic one (printed `?`).

The narrow floats are storage types only (what ONNX's float8/float4 QuantizeLinear produces and
DequantizeLinear reads): `is_float` is false for them, so no arithmetic op accepts them. They
are held in `ml_dtypes` arrays (the package onnx itself uses), imported only when needed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

FLOAT_DTYPES = ("f32", "f16")
INT_DTYPES = tuple(f"i{b}" for b in range(2, 17)) + ("i32", "i64")
UINT_DTYPES = tuple(f"u{b}" for b in range(2, 17))
# IR name -> ml_dtypes type name, for the narrow float storage formats.
NARROW_FLOAT_DTYPES = {"f8e4m3fn": "float8_e4m3fn", "f8e5m2": "float8_e5m2",
                       "f4e2m1": "float4_e2m1fn"}
DTYPES = FLOAT_DTYPES + INT_DTYPES + UINT_DTYPES + ("bool",) + tuple(NARROW_FLOAT_DTYPES)


def is_float(dtype: str) -> bool:
    return dtype in FLOAT_DTYPES


def is_narrow_float(dtype: str) -> bool:
    """A float8/float4 storage dtype (not an arithmetic float type: see the module doc)."""
    return dtype in NARROW_FLOAT_DTYPES


def is_int(dtype: str) -> bool:
    return dtype in INT_DTYPES or dtype in UINT_DTYPES


def int_bits(dtype: str) -> int:
    """Bit width of an integer dtype (`i8` -> 8)."""
    if not is_int(dtype):
        raise ValueError(f"{dtype} is not an integer dtype")
    return int(dtype[1:])


def is_signed(dtype: str) -> bool:
    return dtype.startswith("i")


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    """The closed range [qmin, qmax] of a `bits`-wide integer."""
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def int_dtype(bits: int, signed: bool) -> str:
    return f"{'i' if signed else 'u'}{bits}"


def numpy_dtype(dtype: str) -> np.dtype:
    """The numpy dtype that holds values of `dtype` (narrow ints live in the next wider type)."""
    if dtype == "f32":
        return np.dtype(np.float32)
    if dtype == "f16":
        return np.dtype(np.float16)
    if dtype == "bool":
        return np.dtype(np.bool_)
    if dtype == "i64":
        return np.dtype(np.int64)
    if dtype in NARROW_FLOAT_DTYPES:
        import ml_dtypes
        return np.dtype(getattr(ml_dtypes, NARROW_FLOAT_DTYPES[dtype]))
    bits = int_bits(dtype)
    signed = is_signed(dtype)
    for width, s_t, u_t in ((8, np.int8, np.uint8), (16, np.int16, np.uint16), (32, np.int32, np.uint32)):
        if bits <= width:
            return np.dtype(s_t if signed else u_t)
    raise ValueError(f"no numpy dtype for {dtype}")


def dtype_from_numpy(np_dtype) -> str:
    np_dtype = np.dtype(np_dtype)
    table = {np.float32: "f32", np.float16: "f16", np.float64: "f32", np.int8: "i8", np.uint8: "u8",
             np.int16: "i16", np.uint16: "u16", np.int32: "i32", np.int64: "i64", np.bool_: "bool"}
    for k, v in table.items():
        if np_dtype == np.dtype(k):
            return v
    for ir_name, ml_name in NARROW_FLOAT_DTYPES.items():
        if np_dtype.name == ml_name:
            return ir_name
    raise ValueError(f"unsupported numpy dtype {np_dtype}")


Shape = tuple  # tuple[int | None, ...]


@dataclass(frozen=True)
class TensorType:
    shape: tuple
    dtype: str = "f32"

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(None if d is None else int(d) for d in self.shape))
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; expected one of {', '.join(DTYPES)}")
        for d in self.shape:
            if d is not None and d < 0:
                raise ValueError(f"negative dimension in shape {self.shape}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(d is not None for d in self.shape)

    @property
    def numel(self) -> int:
        if not self.is_static:
            raise ValueError(f"shape {self.shape} is dynamic")
        return int(np.prod(self.shape, dtype=np.int64))

    def with_dtype(self, dtype: str) -> "TensorType":
        return TensorType(self.shape, dtype)

    def with_shape(self, shape: Sequence) -> "TensorType":
        return TensorType(tuple(shape), self.dtype)


@dataclass(frozen=True)
class QuantParams:
    """Affine quantization `real = scale * (q - zero_point)`.

    `scale` and `zero_point` are tuples: one element for per-tensor, one per channel along
    `axis` for per-channel. `bits` is 2..16 or 32; `pow2` records that scales are constrained
    to powers of two (shift-only requantization targets).
    """

    scale: tuple
    zero_point: tuple
    bits: int = 8
    signed: bool = True
    axis: Optional[int] = None
    pow2: bool = False

    def __post_init__(self):
        scale = tuple(float(s) for s in np.atleast_1d(np.asarray(self.scale, dtype=np.float64)))
        zp = tuple(int(z) for z in np.atleast_1d(np.asarray(self.zero_point)))
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zp)

    # Validation lives in `problems()` so the verifier can report all faults with the node.
    def problems(self) -> list[str]:
        out = []
        if not (2 <= self.bits <= 16 or self.bits == 32):
            out.append(f"bit width {self.bits} not in 2..16 or 32")
        if len(self.scale) != len(self.zero_point):
            out.append(f"{len(self.scale)} scales but {len(self.zero_point)} zero points")
        if self.axis is None and len(self.scale) != 1:
            out.append("per-tensor params need exactly one scale (or set axis for per-channel)")
        for s in self.scale:
            if not np.isfinite(s) or s <= 0:
                out.append(f"scale {s!r} must be finite and > 0")
                break
        if 2 <= self.bits <= 32:
            lo, hi = int_range(self.bits, self.signed)
            for z in self.zero_point:
                if not lo <= z <= hi:
                    out.append(f"zero point {z} outside [{lo}, {hi}] of {self.storage_dtype}")
                    break
        if self.pow2:
            for s in self.scale:
                if s > 0 and np.isfinite(s) and 2.0 ** round(np.log2(s)) != s:
                    out.append(f"scale {s!r} is not a power of two but pow2 is set")
                    break
        return out

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    @property
    def qmin(self) -> int:
        return int_range(self.bits, self.signed)[0]

    @property
    def qmax(self) -> int:
        return int_range(self.bits, self.signed)[1]

    @property
    def storage_dtype(self) -> str:
        return int_dtype(self.bits, self.signed)

    def scale_array(self, rank: int = 0) -> np.ndarray:
        """Scales shaped to broadcast against a tensor of `rank` along `axis`."""
        return self._broadcast(np.asarray(self.scale, dtype=np.float64), rank)

    def zero_point_array(self, rank: int = 0) -> np.ndarray:
        return self._broadcast(np.asarray(self.zero_point, dtype=np.int64), rank)

    def _broadcast(self, arr: np.ndarray, rank: int) -> np.ndarray:
        if self.axis is None or rank == 0:
            return arr.reshape(()) if arr.size == 1 else arr
        shape = [1] * rank
        shape[self.axis % rank] = arr.size
        return arr.reshape(shape)
