"""JAX's default random numbers (Threefry-2x32, "partitionable" key derivation, float32 draws) in numpy, so that an
M2N2 run can draw exactly the random numbers the reference code (SakanaAI/natural_niches, written in JAX) draws for
the same seed, without JAX.

Only what the reference's M2N2 uses: `key(seed)`, `split`, `uniform`, `normal`, `randint`, `choice` with
probabilities. Each follows jax.random's definition (jax 0.4.3x–0.10, `jax_threefry_partitionable` on, its default
since 0.5): bits are Threefry-2x32 of the key over the counter 0 … n-1 (high words 0), split keys are the two output
words, 32-bit draws xor them. The normal's erf⁻¹ is XLA's float32 polynomial, evaluated without XLA's fused
multiply-adds, so ~5% of the normals differ from JAX's in the last bit (~1e-7 relative); every other draw agrees
bit for bit (checked against jax 0.10.2; tests/test_m2n2.py holds recorded values).
"""

from __future__ import annotations

import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA
_MASK = 0xFFFFFFFF

Key = tuple[int, int]


def _schedule(k: Key) -> tuple[int, int, int]:
    return k[0], k[1], k[0] ^ k[1] ^ _PARITY


def threefry_word(k: Key, x0: int, x1: int) -> tuple[int, int]:
    """The Threefry-2x32 block cipher (20 rounds) of one counter (x0, x1) under key k, in Python integers: the keys
    and scalar draws of a pass cost microseconds this way, against ~100 numpy calls."""
    ks = _schedule(k)
    x0, x1 = (x0 + ks[0]) & _MASK, (x1 + ks[1]) & _MASK
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = (x0 + x1) & _MASK
            x1 = (((x1 << r) | (x1 >> (32 - r))) & _MASK) ^ x0
        x0 = (x0 + ks[(i + 1) % 3]) & _MASK
        x1 = (x1 + ks[(i + 2) % 3] + i + 1) & _MASK
    return x0, x1


def threefry_counter(k: Key, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Threefry-2x32 of the counters (0, 0) … (0, n-1) under key k, in place over two uint32 arrays."""
    ks = [np.uint32(v) for v in _schedule(k)]
    x0 = np.full(n, ks[0], dtype=np.uint32)
    x1 = np.arange(n, dtype=np.uint32)
    x1 += ks[1]
    t = np.empty(n, dtype=np.uint32)
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 += x1
            np.left_shift(x1, r, out=t)
            x1 >>= 32 - r
            x1 |= t
            x1 ^= x0
        x0 += ks[(i + 1) % 3]
        x1 += np.uint32((int(ks[(i + 2) % 3]) + i + 1) & _MASK)
    return x0, x1


def key(seed: int) -> Key:
    """jax.random.PRNGKey(seed) as JAX makes it by default (64-bit integers off): (0, the seed's low 32 bits)."""
    return 0, int(seed) & _MASK


def split(k: Key, num: int = 2) -> list[Key]:
    """jax.random.split(k, num)."""
    return [threefry_word(k, 0, i) for i in range(num)]


def bits32(k: Key, n: int) -> np.ndarray:
    hi, lo = threefry_counter(k, n)
    hi ^= lo
    return hi


def _bits32_scalar(k: Key, i: int = 0) -> int:
    hi, lo = threefry_word(k, 0, i)
    return hi ^ lo


def _unit(bits: np.ndarray) -> np.ndarray:
    """[0, 1) from the top 23 bits: a float32 in [1, 2) minus 1."""
    bits >>= np.uint32(9)
    bits |= np.uint32(0x3F800000)
    return bits.view(np.float32) - np.float32(1.0)


def uniform(k: Key, n: int, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """jax.random.uniform(k, (n,), float32, lo, hi)."""
    lo32, hi32 = np.float32(lo), np.float32(hi)
    bits = (
        bits32(k, n)
        if n > 4
        else np.array([_bits32_scalar(k, i) for i in range(n)], dtype=np.uint32)
    )
    return np.maximum(lo32, _unit(bits) * (hi32 - lo32) + lo32)


# XLA's float32 erf⁻¹ (Giles' single-precision approximation), coefficients for w < 5 and w ≥ 5
_ERFINV_SMALL = np.array(
    [
        2.81022636e-08,
        3.43273939e-07,
        -3.5233877e-06,
        -4.39150654e-06,
        0.00021858087,
        -0.00125372503,
        -0.00417768164,
        0.246640727,
        1.50140941,
    ],
    dtype=np.float32,
)
_ERFINV_LARGE = np.array(
    [
        -0.000200214257,
        0.000100950558,
        0.00134934322,
        -0.00367342844,
        0.00573950773,
        -0.0076224613,
        0.00943887047,
        1.00167406,
        2.83297682,
    ],
    dtype=np.float32,
)


def _erfinv_poly(w: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    p = np.full_like(w, coefficients[0])
    for c in coefficients[1:]:
        p *= w
        p += c
    return p


def erfinv32(x: np.ndarray) -> np.ndarray:
    """XLA's float32 erf⁻¹: w = -log1p(-x²), a degree-8 polynomial in w - 2.5 (w < 5) or √w - 3 (w ≥ 5, |x| >
    ~0.9966: evaluated only where it applies), times x. XLA fuses each Horner step into one multiply-add and has its
    own log1p, so ~5% of the values here differ from JAX's in the last bit (~1e-7 relative); exact emulation costs
    ~50x more time and changes no run measured."""
    w = np.log1p(-x * x)
    np.negative(w, out=w)
    large = w >= np.float32(5.0)
    p = _erfinv_poly(w - np.float32(2.5), _ERFINV_SMALL)
    if large.any():
        p[large] = _erfinv_poly(np.sqrt(w[large]) - np.float32(3.0), _ERFINV_LARGE)
    p *= x
    return p


_NORMAL_LO = np.nextafter(np.float32(-1.0), np.float32(0.0))


def normal(k: np.ndarray, n: int) -> np.ndarray:
    """jax.random.normal(k, (n,), float32): √2·erf⁻¹(u), u uniform on (-1, 1)."""
    return np.float32(np.sqrt(2)) * erfinv32(uniform(k, n, _NORMAL_LO, 1.0))


def randint(k: Key, lo: int, hi: int) -> int:
    """jax.random.randint(k, (), lo, hi) for int32 bounds 0 ≤ lo < hi: 64 random bits reduced modulo the span."""
    k1, k2 = split(k)
    higher, lower = _bits32_scalar(k1), _bits32_scalar(k2)
    span = hi - lo
    multiplier = (2**16 % span) ** 2 % 2**32 % span
    return lo + ((higher % span) * multiplier % 2**32 + lower % span) % 2**32 % span


def choice(k: Key, p: np.ndarray, n: int = 1) -> np.ndarray:
    """jax.random.choice(k, len(p), (n,), p=p) with replacement: float32 cumulative sums searched with 1 - u."""
    cum = np.cumsum(np.asarray(p, dtype=np.float32), dtype=np.float32)
    r = cum[-1] * (np.float32(1.0) - uniform(k, n))
    return np.searchsorted(cum, r, side="left")
