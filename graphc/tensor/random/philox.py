"""Philox4x32-10, the counter-based generator behind every graphc random stream.

A numpy reference that any backend (LLVM, CUDA) reproduces bit for bit, because the
generator is fully specified by the steps below and uses only 32-bit integer operations.

State of a stream: a uint32 vector of 6 words ``[k0, k1, c0, c1, c2, c3]``:
the key (k0, k1) and a 128-bit counter (c0 lowest ... c3 highest).  ``c3`` holds the
stream index, ``(c0, c1, c2)`` count the blocks already drawn (a 96-bit integer).

Drawing ``n_words`` uint32 words:
  1. ``B = ceil(n_words / 4)`` blocks; block ``i`` (0 <= i < B) encrypts the counter
     ``(c0, c1, c2) + i`` (96-bit addition with carry), with ``c3`` unchanged;
  2. each block is 10 Philox rounds on (x0, x1, x2, x3) = counter, key (k0, k1)::

         hi0:lo0 = 0xD2511F53 * x0        (32x32 -> 64-bit product: umulhi / mul)
         hi1:lo1 = 0xCD9E8D57 * x2
         x0, x1, x2, x3 = hi1 ^ x1 ^ k0, lo1, hi0 ^ x3 ^ k1, lo0
         k0 += 0x9E3779B9; k1 += 0xBB67AE85        (mod 2^32, between rounds)

  3. the words are block 0's (x0, x1, x2, x3), then block 1's, ...; the first ``n_words``
     are used;
  4. the new state has the counter advanced by ``B`` (the key is unchanged).

Words to floats in the open interval (0, 1) (exact in IEEE arithmetic):
  float32: ``((w >> 9) + 0.5) * 2^-23``      (one word per number)
  float16: ``((w >> 22) + 0.5) * 2^-10``     (one word per number, computed in float32)
  float64: ``((a >> 6) * 2^26 + (b >> 6) + 0.5) * 2^-52``  (two words a, b per number)

Known answers (Random123's kat_vectors) are checked in tests/test_random.py.
"""
from __future__ import annotations

import numpy as np

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK32 = 0xFFFFFFFF
ROUNDS = 10
STATE_SIZE = 6

_M0, _M1 = np.uint64(M0), np.uint64(M1)
_MASK, _SHIFT = np.uint64(MASK32), np.uint64(32)


def philox4x32(c0, c1, c2, c3, k0: int, k1: int, rounds: int = ROUNDS):
    """Encrypt counters (arrays of 32-bit values, computed in uint64) with key (k0, k1)."""
    c0, c1, c2, c3 = (np.array(c, dtype=np.uint64) for c in (c0, c1, c2, c3))
    p0, p1 = np.empty_like(c0), np.empty_like(c0)
    for _ in range(rounds):
        np.multiply(c0, _M0, out=p0)              # 32x32 -> 64-bit product: exact
        np.multiply(c2, _M1, out=p1)
        # in place, so that one round touches only four arrays: x0 = hi1 ^ x1 ^ k0, ...
        np.right_shift(p1, _SHIFT, out=c0)
        np.bitwise_xor(c0, c1, out=c0)
        np.bitwise_xor(c0, np.uint64(k0), out=c0)
        np.right_shift(p0, _SHIFT, out=c2)
        np.bitwise_xor(c2, c3, out=c2)
        np.bitwise_xor(c2, np.uint64(k1), out=c2)
        np.bitwise_and(p1, _MASK, out=c1)
        np.bitwise_and(p0, _MASK, out=c3)
        k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
    return c0, c1, c2, c3


def seed_state(seed: int, stream: int) -> np.ndarray:
    """The initial state of stream number ``stream`` of a generator seeded with ``seed``."""
    seed = int(seed) % (1 << 64)
    return np.array([seed & MASK32, seed >> 32, 0, 0, 0, int(stream) & MASK32], dtype=np.uint32)


def words_per_number(dtype) -> int:
    return 2 if np.dtype(dtype) == np.float64 else 1


def n_blocks(n_numbers: int, dtype) -> int:
    return -(-n_numbers * words_per_number(dtype) // 4)


def advance(state: np.ndarray, blocks: int) -> np.ndarray:
    """The state after drawing ``blocks`` blocks: counter (c0, c1, c2) += blocks (mod 2^96)."""
    s = [int(v) for v in state]
    ctr = (s[2] | (s[3] << 32) | (s[4] << 64)) + int(blocks)
    ctr &= (1 << 96) - 1
    return np.array([s[0], s[1], ctr & MASK32, (ctr >> 32) & MASK32, ctr >> 64, s[5]],
                    dtype=np.uint32)


def random_words(state: np.ndarray, n_words: int) -> np.ndarray:
    """The first ``n_words`` uint32 words of the stream at ``state`` (see the module doc)."""
    s = [int(v) for v in state]
    blocks = -(-n_words // 4)
    i = np.arange(blocks, dtype=np.uint64)
    base = s[2] | (s[3] << 32)
    low = np.uint64(base) + i                      # wraps mod 2^64
    carry = (low < np.uint64(base)).astype(np.uint64)
    c2 = (np.uint64(s[4]) + carry) & _MASK
    x = philox4x32(low & _MASK, low >> _SHIFT, c2, np.full(blocks, s[5], np.uint64), s[0], s[1])
    words = np.stack(x, axis=-1).reshape(-1)[:n_words]
    return words.astype(np.uint32)


def uniform_from_words(words: np.ndarray, dtype) -> np.ndarray:
    """Numbers in (0, 1) from uint32 words (two words per float64 number)."""
    dtype = np.dtype(dtype)
    w = words.astype(np.uint32)
    if dtype == np.float64:
        a = (w[0::2] >> np.uint32(6)).astype(np.float64)
        b = (w[1::2] >> np.uint32(6)).astype(np.float64)
        return (a * 67108864.0 + b + 0.5) * 2.0 ** -52
    if dtype == np.float32:
        k = (w >> np.uint32(9)).astype(np.float32)
        return (k + np.float32(0.5)) * np.float32(2.0 ** -23)
    if dtype == np.float16:
        k = (w >> np.uint32(22)).astype(np.float32)
        return ((k + np.float32(0.5)) * np.float32(2.0 ** -10)).astype(np.float16)
    raise TypeError(f"uniform numbers need a float dtype, got {dtype}")


def uniform(state: np.ndarray, shape, dtype):
    """(new_state, array of ``shape`` uniform in (0, 1)) for the stream at ``state``."""
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    wpn = words_per_number(dtype)
    words = random_words(state, n * wpn)
    return advance(state, n_blocks(n, dtype)), uniform_from_words(words, dtype).reshape(shape)
