"""A fetch's Redis replies read in place: RESP2 scanned by compiled loops over the received bytes.

Parsing the replies of a 1,000-row fetch with hiredis made ~78k Python ``bytes`` objects (one per
tile value, field name and absent field), which the reader then flattened, looked up and joined
back into one buffer (a harness over bench/fetch.py's data: 44.7 ms per fetch before, 31.2 after
this and the in-place merge, Redis's own time ~17 of both). Here the socket's bytes land in one NumPy
buffer, ``complete`` says when every reply has arrived, and ``tiles`` gives, per tile, its entity
row, layout position and the byte span of its value in that buffer: what ``TileCodec.joined_spans``
merges from, with no per-tile object. Only what a fetch sends is understood: arrays of bulk
strings (HMGET, HGETALL), integers (HLEN), bulk strings or nil (HGET) and error replies.
RESP3 maps and nested arrays are not (the reader takes its parsed-reply path for those).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["complete", "tiles", "scalar", "ERROR", "INCOMPLETE", "UNSUPPORTED"]

#: ``tiles``/``scalar`` status codes (negative: no tile table was produced).
ERROR, INCOMPLETE, UNSUPPORTED = -1, -2, -3


def _line_int(buf, i, end):  # pragma: no cover - compiled
    """The integer starting at ``i`` up to CRLF: (value, index after CRLF), or (0, -1) if incomplete."""
    neg = False
    if i < end and buf[i] == 45:  # '-'
        neg = True
        i += 1
    v = 0
    while i < end and buf[i] != 13:
        v = v * 10 + (buf[i] - 48)
        i += 1
    if i + 1 >= end:
        return 0, -1
    return (-v if neg else v), i + 2


def _skip_line(buf, i, end):  # pragma: no cover - compiled
    while i + 1 < end:
        if buf[i] == 13 and buf[i + 1] == 10:
            return i + 2
        i += 1
    return -1


def _skip_elem(buf, i, end):  # pragma: no cover - compiled
    """Index after the non-array reply at ``i``; -1 incomplete; -3 unsupported type."""
    if i >= end:
        return -1
    c = buf[i]
    if c == 43 or c == 45 or c == 58:  # + - :
        return _skip_line(buf, i + 1, end)
    if c == 36:  # $
        n, j = _line_int(buf, i + 1, end)
        if j < 0:
            return -1
        if n < 0:
            return j
        return j + n + 2 if j + n + 2 <= end else -1
    return -3


def _skip_one(buf, i, end):  # pragma: no cover - compiled
    """Index after the reply at ``i`` (an array holds no arrays); -1 incomplete; -3 unsupported."""
    if i >= end:
        return -1
    if buf[i] != 42:  # not '*'
        return _skip_elem(buf, i, end)
    n, j = _line_int(buf, i + 1, end)
    if j < 0:
        return -1
    for _ in range(n):
        j = _skip_elem(buf, j, end)
        if j < 0:
            return j
    return j


def _complete(buf, i, end, want):  # pragma: no cover - compiled
    """Skip up to ``want`` whole replies from ``i``: (index after the last whole one, how many, status)."""
    done = 0
    while done < want:
        j = _skip_one(buf, i, end)
        if j == -1:
            return i, done, 0
        if j < 0:
            return i, done, j
        i = j
        done += 1
    return i, done, 0


def _tiles(buf, i, end, n, pairs, key_res, key_start, out_ent, out_pos, out_s, out_e):  # pragma: no cover
    """``n`` replies of one view from ``i``: HMGET arrays (``pairs`` False, element j = layout
    position j) or HGETALL arrays (field ``"<res>:<start>"`` looked up in the sorted layout keys;
    other fields skipped). Returns (index after them, tiles found, elements seen, status)."""
    k = 0
    elements = 0
    nk = key_res.shape[0]
    for e in range(n):
        if i >= end:
            return i, k, elements, -2
        if buf[i] == 45:
            return i, k, elements, -1
        if buf[i] != 42:
            return i, k, elements, -3
        m, i = _line_int(buf, i + 1, end)
        if i < 0:
            return 0, k, elements, -2
        elements += m
        step = 2 if pairs else 1
        for j in range(0, m, step):
            p = j
            if pairs:  # the field: parse "<res>:<start>" and find its layout position
                if i >= end or buf[i] != 36:
                    return i, k, elements, -3
                ln, s = _line_int(buf, i + 1, end)
                if s < 0:
                    return i, k, elements, -2
                r = 0
                q = s
                while q < s + ln and buf[q] != 58:
                    r = r * 10 + (buf[q] - 48)
                    q += 1
                ok = q < s + ln and s < q
                t = 0
                neg = False
                q += 1
                if q < s + ln and buf[q] == 45:
                    neg = True
                    q += 1
                while q < s + ln:
                    d = buf[q] - 48
                    if d < 0 or d > 9:
                        ok = False
                    t = t * 10 + d
                    q += 1
                if neg:
                    t = -t
                i = s + ln + 2
                p = -1
                if ok:
                    lo, hi = 0, nk
                    while lo < hi:
                        mid = (lo + hi) // 2
                        if key_res[mid] < r or (key_res[mid] == r and key_start[mid] < t):
                            lo = mid + 1
                        else:
                            hi = mid
                    if lo < nk and key_res[lo] == r and key_start[lo] == t:
                        p = lo
            if i >= end or buf[i] != 36:
                return i, k, elements, -3
            ln, s = _line_int(buf, i + 1, end)
            if s < 0:
                return i, k, elements, -2
            if ln >= 0:
                if p >= 0:
                    out_ent[k] = e
                    out_pos[k] = p
                    out_s[k] = s
                    out_e[k] = s + ln
                    k += 1
                i = s + ln + 2
            else:
                i = s
    return i, k, elements, 0


@lru_cache(maxsize=None)
def _jit() -> Any:
    import numba
    jit = numba.njit(cache=True)
    global _line_int, _skip_line, _skip_elem, _skip_one  # the kernels call the compiled versions
    _line_int, _skip_line = jit(_line_int), jit(_skip_line)
    _skip_elem = jit(_skip_elem)
    _skip_one = jit(_skip_one)
    return jit(_complete), jit(_tiles)


def complete(buf: np.ndarray, pos: int, end: int, want: int) -> tuple[int, int]:
    """Skip up to ``want`` whole replies in ``buf[pos:end]``: (position after them, how many)."""
    pos, done, status = _jit()[0](buf, pos, end, want)
    if status == UNSUPPORTED:
        raise ValueError("a Redis reply of a kind the fetch never asks for (RESP3 map or nested array)")
    return int(pos), int(done)


def tiles(buf: np.ndarray, pos: int, end: int, n: int, pairs: bool, key_res: np.ndarray,
          key_start: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
    """The tiles of ``n`` HMGET (``pairs`` False) or HGETALL replies from ``pos``:
    (position after them, entity row, layout position, value start, value end, elements, status)."""
    cap = n * max(len(key_res), 1) if not pairs else max((end - pos) // 8, 1)
    ent, p = np.empty(cap, np.intp), np.empty(cap, np.intp)
    s, e = np.empty(cap, np.int64), np.empty(cap, np.int64)
    pos, k, elements, status = _jit()[1](buf, pos, end, n, pairs, key_res, key_start, ent, p, s, e)
    return int(pos), ent[:k], p[:k], s[:k], e[:k], int(elements), int(status)


def scalar(buf: np.ndarray, pos: int, end: int) -> tuple[int, Any]:
    """One small reply (HGET's bulk or nil, HLEN's integer, an error) parsed in Python:
    (position after it, bytes | int | None | RuntimeError)."""
    c = int(buf[pos])
    nl = pos + bytes(buf[pos:end]).index(b"\r\n") if c == 0x2D else pos + bytes(buf[pos:min(end, pos + 64)]).index(b"\r\n")
    head = bytes(buf[pos + 1:nl])
    if c == 0x2D:  # '-'
        return nl + 2, RuntimeError(head.decode(errors="replace"))
    if c == 0x3A:  # ':'
        return nl + 2, int(head)
    if c == 0x24:  # '$'
        n = int(head)
        return (nl + 2, None) if n < 0 else (nl + 4 + n, bytes(buf[nl + 2:nl + 2 + n]))
    raise ValueError(f"unexpected Redis reply type {chr(c)!r} for a single-value command")
