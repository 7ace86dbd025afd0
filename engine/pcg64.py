"""The sampler's random stream: numpy's `Generator(PCG64(seed)).random()`, in plain Python.

Why not numpy.random itself: in Pyodide, importing it loads nine extension modules, for one uniform
per sampled token. Without it a worker's peak at ready (0.4 MB model, headless Chromium) went from
34.6 to 32.2 MiB; under Node the import alone raised dlmalloc's footprint by 10 MiB, part of which
later allocations reuse. The stream
here is the same, double for double: the seed goes through numpy's SeedSequence (its 32-bit hash
mixing, pool of four words) to PCG64's 128-bit state and increment, and each double is the top 53
bits of PCG64's XSL-RR output (tests/test_sampler.py checks it against numpy.random).

Python's integers do the 128-bit arithmetic; a draw costs about a microsecond, once per token.
"""

from __future__ import annotations

import secrets

_M32 = 0xFFFFFFFF
_M64 = (1 << 64) - 1
_M128 = (1 << 128) - 1

# numpy/random/bit_generator.pyx: SeedSequence's constants
_POOL_SIZE = 4
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R = 0xCA01F9DD, 0x4973F715
_XSHIFT = 16

# PCG's default 128-bit multiplier (O'Neill's pcg_variants.h, as numpy's pcg64.h)
_PCG_MULT = (2549297995355413924 << 64) + 4865540595714422341


def _words32(n: int) -> list[int]:
    """A non-negative int as 32-bit words, least significant first ([0] for 0)."""
    if n < 0:
        raise ValueError("a seed must be a non-negative integer")
    out = [n & _M32]
    n >>= 32
    while n:
        out.append(n & _M32)
        n >>= 32
    return out


class _Hash:
    """SeedSequence's hashmix, whose multiplier advances at every use."""

    def __init__(self, const: int):
        self.const = const

    def __call__(self, value: int) -> int:
        value ^= self.const
        self.const = (self.const * _MULT_A) & _M32
        value = (value * self.const) & _M32
        return value ^ (value >> _XSHIFT)


def _mix(x: int, y: int) -> int:
    r = (_MIX_MULT_L * x - _MIX_MULT_R * y) & _M32
    return r ^ (r >> _XSHIFT)


def seed_words(seed: int, n_words: int) -> list[int]:
    """numpy's SeedSequence(seed).generate_state(n_words, uint32)."""
    entropy = _words32(seed)
    hashmix = _Hash(_INIT_A)
    pool = [hashmix(entropy[i] if i < len(entropy) else 0) for i in range(_POOL_SIZE)]
    for src in range(_POOL_SIZE):
        for dst in range(_POOL_SIZE):
            if src != dst:
                pool[dst] = _mix(pool[dst], hashmix(pool[src]))
    for src in range(_POOL_SIZE, len(entropy)):
        for dst in range(_POOL_SIZE):
            pool[dst] = _mix(pool[dst], hashmix(entropy[src]))
    const, out = _INIT_B, []
    for i in range(n_words):
        value = pool[i % _POOL_SIZE] ^ const
        const = (const * _MULT_B) & _M32
        value = (value * const) & _M32
        out.append(value ^ (value >> _XSHIFT))
    return out


class PCG64:
    """numpy.random.Generator(numpy.random.PCG64(seed)), as far as random() goes."""

    def __init__(self, seed: int):
        w = seed_words(seed, 8)
        v = [w[2 * i] | (w[2 * i + 1] << 32) for i in range(4)]  # the uint64 view, little-endian
        init_state, init_seq = (v[0] << 64) | v[1], (v[2] << 64) | v[3]
        self._inc = ((init_seq << 1) | 1) & _M128
        self._state = (self._inc + init_state) & _M128  # from state 0: one step, add the seed's state
        self._step()

    def _step(self) -> None:
        self._state = (self._state * _PCG_MULT + self._inc) & _M128

    def next_uint64(self) -> int:
        self._step()
        s = self._state
        x, rot = ((s >> 64) ^ s) & _M64, s >> 122
        return ((x >> rot) | (x << (64 - rot))) & _M64

    def random(self) -> float:
        """A uniform double in [0, 1): the top 53 bits of the next output."""
        return (self.next_uint64() >> 11) * (1.0 / 9007199254740992.0)

    @property
    def state(self) -> tuple[int, int]:
        return self._state, self._inc


def fresh_seed() -> int:
    """A new 128-bit seed from the OS (numpy's SeedSequence().entropy is one too)."""
    return secrets.randbits(128)
