"""Deterministic synthetic card-transaction events (and delayed labels) for ``headwater produce``.

Pure generation: no Kafka, no clocks, no global random state. Every draw comes from
``numpy.random.default_rng`` seeded with ``(cfg.seed, stream, segment)``, so one config always
yields the same rows, byte for byte, whatever ``batch_rows`` the caller asks for.

What the data looks like
------------------------
* **Volume.** Exactly ``round(rate * duration_s)`` background events, plus the card-testing
  events (a few percent at most, see below).
* **Event time.** A Poisson-like process over 1-second bins modulated by a two-state
  (normal / burst) Markov chain: bursts last ~6 s at 4x the normal intensity, about one a
  minute. The intensity is normalised so the mean rate over the run is ``rate``.
* **Ids.** ``event_id = f"e{seed}-{i}"`` (``i`` unique per run: background events of a
  1-second-bin segment in event-time order, then that segment's fraud events), ``card_id = c<n>``
  (n < entities), ``merchant_id = m<n>`` (n < merchants), ``device_id = d<n>``.
* **Cards and merchants.** Zipf-skewed (exponent :data:`ZIPF_A` = 1.1, truncated to the
  population, see :func:`_zipf_ranks`) through a seeded random rank -> id permutation, so the
  hottest card is not always ``c0``.
* **Amounts.** Log-normal per merchant category (8 categories, each merchant has one), rounded
  to 2 decimals.
* **Devices.** Every card owns 1-4 devices (mostly 1-2) and mostly uses its first.
* **Country / currency.** ``country`` is the card's home country 95 % of the time, else a country
  drawn from the global mix; ``currency`` is the currency of ``country``.
* **Fraud: card testing.** ``round(fraud_fraction * entities)`` cards (at least one when the
  fraction is positive; capped so fraud events stay near 5 % of the background volume; none in
  runs under 400 background events) each run one burst: 8-40 transactions of 0.50-5.00 within
  1-5 minutes, at merchants drawn uniformly from the colder half of the merchant ranking (so
  almost surely new to the card), from a fraudster device shared with other compromised cards
  80 % of the time (else the card's own first device), and from a foreign country 60 % of the
  time. Those events, and only those, have ``is_fraud = True``.
* **Labels** (``labels=True``). Every fraud event gets a positive label with ``label_time =
  event_time +`` a chargeback delay (log-normal, median 36 h, clipped to [1 h, 21 d]). A
  Bernoulli(``negative_label_fraction``, default 10 %) sample of the legit events gets a negative
  label with ``label_time = event_time + U[1 d, 3 d]``. Every other event is unlabelled.

Arrival (out-of-order and late data)
------------------------------------
Each event gets ``arrival_ms = (event_time - start_ms) + delay``: the wall-clock offset, from
the start of the run, at which a producer should send it. ``delay ~ U[0, disorder_ms]`` for
on-time events; a Bernoulli(``late_fraction``) sample gets ``delay = allowed_lateness_ms + 1 s +
U[0, max(allowed_lateness_ms, 60 s)]``, i.e. past the lateness bound with a 1 s margin for producer
jitter, so the pipeline drops them. Rows are emitted sorted by ``(arrival_ms, event index)``.

A live producer takes ``start_ms = now`` and sends each row at ``t0 + arrival_ms``; the broker's
LogAppendTime then exceeds ``event_time`` by about ``delay``. A producer that does not pace must
set the record timestamp to ``start_ms + arrival_ms`` itself (CreateTime topics only), otherwise
nothing is late. A paced producer that falls behind by more than ``allowed_lateness_ms -
disorder_ms`` makes on-time events late too.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from headwater.errors import ConfigError

__all__ = [
    "DEFAULT_START_MS",
    "EVENT_SCHEMA",
    "LABEL_SCHEMA",
    "ZIPF_A",
    "EventBatch",
    "GeneratorConfig",
    "generate",
    "generate_table",
    "write_parquet",
]

#: Event-time origin when ``start_ms`` is None: 2024-01-01T00:00:00Z.
DEFAULT_START_MS = 1_704_067_200_000
#: Zipf exponent for card and merchant popularity.
ZIPF_A = 1.1

EVENT_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("card_id", pa.string(), nullable=False),
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("device_id", pa.string(), nullable=False),
        pa.field("amount", pa.float64(), nullable=False),
        pa.field("currency", pa.string(), nullable=False),
        pa.field("country", pa.string(), nullable=False),
        pa.field("event_time", pa.int64(), nullable=False),
    ]
)
LABEL_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("is_fraud", pa.bool_(), nullable=False),
        pa.field("label_time", pa.int64(), nullable=False),
    ]
)
_ARRIVAL_FIELD = pa.field("arrival_ms", pa.int64(), nullable=False)

# --- world constants ------------------------------------------------------------------------
_COUNTRIES = ["US", "GB", "DE", "FR", "CA", "ES", "IT", "NL", "BR", "MX", "IN", "JP", "AU", "SG"]
_COUNTRY_W = np.array([40, 8, 8, 7, 6, 5, 5, 4, 4, 4, 4, 2, 2, 1], dtype=np.float64)
_CURRENCY_OF = {
    "US": "USD", "GB": "GBP", "DE": "EUR", "FR": "EUR", "CA": "CAD", "ES": "EUR", "IT": "EUR",
    "NL": "EUR", "BR": "BRL", "MX": "MXN", "IN": "INR", "JP": "JPY", "AU": "AUD", "SG": "SGD",
}
_COUNTRY_ARR = pa.array(_COUNTRIES, pa.string())
_CURRENCY_ARR = pa.array([_CURRENCY_OF[c] for c in _COUNTRIES], pa.string())
_HOME_COUNTRY_P = 0.95

# merchant categories: (weight, median amount, log-sigma)
_CATEGORIES = np.array(
    [
        (0.22, 35.0, 0.6),   # grocery
        (0.12, 45.0, 0.4),   # fuel
        (0.18, 25.0, 0.5),   # restaurant
        (0.16, 7.0, 0.5),    # coffee / fast food
        (0.14, 40.0, 0.9),   # online retail
        (0.06, 180.0, 0.8),  # electronics
        (0.04, 350.0, 0.7),  # travel
        (0.08, 12.0, 0.8),   # digital goods
    ]
)
_DEVICE_COUNT_P = np.array([0.55, 0.30, 0.10, 0.05])  # P(card has 1, 2, 3, 4 devices)

# event-time burst modulation (per 1 s bin)
_BIN_MS = 1000
_NORMAL_MEAN_S = 60.0
_BURST_MEAN_S = 6.0
_BURST_MULT = 4.0

# card testing
_FRAUD_N_MIN, _FRAUD_N_MAX = 8, 40
_FRAUD_SPAN_MS = (60_000, 300_000)
_FRAUD_AMOUNT = (0.50, 5.00)
_FRAUD_NEW_DEVICE_P = 0.8
_FRAUD_FOREIGN_P = 0.6
_FRAUD_CARDS_PER_DEVICE = 5
_FRAUD_MAX_SHARE = 0.05

# labels
_HOUR_MS = 3_600_000
_DAY_MS = 24 * _HOUR_MS
_CHARGEBACK_MEDIAN_MS = 36 * _HOUR_MS
_CHARGEBACK_SIGMA = 0.8
_CHARGEBACK_CLIP_MS = (_HOUR_MS, 21 * _DAY_MS)
_NEGATIVE_DELAY_MS = (_DAY_MS, 3 * _DAY_MS)

_LATE_MARGIN_MS = 1000
_LATE_MIN_SPAN_MS = 60_000

_SEGMENT_TARGET_EVENTS = 1 << 18

# rng stream tags
_S_WORLD, _S_MOD, _S_FRAUD, _S_SEG = 0, 1, 2, 3


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate. Validated on construction (:class:`~headwater.errors.ConfigError`)."""

    rate: float  # events per second of event time (and the target produce rate)
    entities: int  # number of cards
    duration_s: float
    seed: int
    start_ms: int | None = None  # event-time origin, ms UTC; None -> DEFAULT_START_MS
    late_fraction: float = 0.0  # fraction of events arriving after event_time + allowed_lateness
    disorder_ms: int = 0  # max out-of-order delay of the on-time events, U[0, disorder_ms]
    allowed_lateness_ms: int = 300_000
    merchants: int | None = None  # None -> entities // 10 + 10
    fraud_fraction: float = 0.01  # fraction of cards that run a card-testing burst
    labels: bool = False
    negative_label_fraction: float = 0.1  # share of legit events that get a negative label

    def __post_init__(self) -> None:
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"generator: {msg}")

        # accept numpy scalars etc.; store plain ints / floats (ids and seeds format from them)
        for name in ("entities", "seed", "start_ms", "disorder_ms", "allowed_lateness_ms",
                     "merchants"):
            v = getattr(self, name)
            if isinstance(v, numbers.Integral) and not isinstance(v, bool):
                object.__setattr__(self, name, int(v))
            elif v is not None or name not in ("start_ms", "merchants"):
                raise bad(f"{name} must be an integer, got {v!r}")
        for name in ("rate", "duration_s", "late_fraction", "fraud_fraction",
                     "negative_label_fraction"):
            v = getattr(self, name)
            if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v):
                raise bad(f"{name} must be a finite number, got {v!r}")
            object.__setattr__(self, name, float(v))

        if self.rate <= 0:
            raise bad(f"rate must be > 0 events/s, got {self.rate!r}")
        if self.entities < 1:
            raise bad(f"entities (number of cards) must be >= 1, got {self.entities!r}")
        if round(self.duration_s * 1000) < 1:
            raise bad(f"duration_s must be at least 0.001 s, got {self.duration_s!r}")
        if self.seed < 0:
            raise bad(f"seed must be >= 0, got {self.seed!r}")
        for name in ("late_fraction", "fraud_fraction", "negative_label_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise bad(f"{name} must be in [0, 1], got {v!r}")
        if self.allowed_lateness_ms < 0:
            raise bad(f"allowed_lateness_ms must be >= 0, got {self.allowed_lateness_ms!r}")
        if self.disorder_ms < 0:
            raise bad(f"disorder_ms must be >= 0, got {self.disorder_ms!r}")
        if self.disorder_ms > self.allowed_lateness_ms:
            raise bad(
                f"disorder_ms ({self.disorder_ms}) exceeds allowed_lateness_ms "
                f"({self.allowed_lateness_ms}), so 'on-time' events would be late; lower "
                "disorder_ms or raise allowed_lateness_ms (use late_fraction for late data)"
            )
        if self.merchants is not None and self.merchants < 1:
            raise bad(f"merchants must be >= 1 or None, got {self.merchants!r}")

    @property
    def origin_ms(self) -> int:
        """The event-time origin actually used: ``start_ms`` or :data:`DEFAULT_START_MS`."""
        return DEFAULT_START_MS if self.start_ms is None else self.start_ms

    @property
    def n_merchants(self) -> int:
        return self.entities // 10 + 10 if self.merchants is None else self.merchants

    @property
    def n_background(self) -> int:
        """Number of non-fraud (background) events; fraud bursts come on top."""
        return int(round(self.rate * self.duration_s))


@dataclass(frozen=True)
class EventBatch:
    """A run of events in arrival order.

    ``events`` has :data:`EVENT_SCHEMA`. ``arrival_ms[i]`` (int64, non-decreasing across the
    whole stream) is the intended send time of row ``i`` as an offset in ms from the start of the
    run (``cfg.origin_ms`` in event time). ``labels`` (:data:`LABEL_SCHEMA`, or None when
    ``cfg.labels`` is False) holds the labels of this batch's labelled events, in the same row
    order as ``events``; it is a subset, not row-aligned. Labels are meant to be produced at
    ``label_time``, not at arrival.
    """

    events: pa.Table
    arrival_ms: np.ndarray
    labels: pa.Table | None = field(default=None)

    def __len__(self) -> int:
        return self.events.num_rows


# --- vectorised helpers ---------------------------------------------------------------------


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _format_ids(prefix: str, nums: np.ndarray) -> pa.StringArray:
    """``[f"{prefix}{n}" for n in nums]`` as an Arrow string array, without a Python loop.

    Builds a right-aligned (rows x width) byte matrix of prefix + zero-padded digits, then drops
    the leading zeros with one boolean mask: row-major compression yields the string data.
    """
    nums = np.ascontiguousarray(nums, dtype=np.int64)
    n = nums.size
    if n == 0:
        return pa.array([], pa.string())
    if int(nums.min()) < 0:
        raise ValueError("ids must be non-negative")
    pre = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    lp = pre.size
    hi = int(nums.max())
    maxdig = len(str(hi))
    dt = np.uint32 if hi < 2**32 else np.uint64
    x = nums.astype(dt)
    width = lp + maxdig
    mat = np.empty((n, width), dtype=np.uint8)
    mat[:, :lp] = pre
    ndig = np.ones(n, dtype=np.int32)
    p = 10
    for _ in range(maxdig - 1):
        ndig += x >= p
        p *= 10
    ten = dt(10)
    for j in range(maxdig):
        q = x // ten
        mat[:, width - 1 - j] = x - q * ten + 48
        x = q
    keep = np.ones((n, width), dtype=bool)
    keep[:, lp:] = np.arange(maxdig)[None, :] >= (maxdig - ndig)[:, None]
    data = mat[keep]
    offsets = np.empty(n + 1, dtype=np.int32)
    offsets[0] = 0
    np.cumsum(ndig + lp, out=offsets[1:])
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def _zipf_ranks(rng: np.random.Generator, n_pop: int, size: int, a: float = ZIPF_A) -> np.ndarray:
    """0-based ranks with P(rank = k) proportional to (k+1)^(1-a) - (k+2)^(1-a).

    That is a power law of exponent ``a`` on [1, n_pop + 1) floored to integers: a truncated
    Zipf(a) with a slightly flatter head, sampled in closed form (no CDF search).
    """
    u = rng.random(size)
    b = 1.0 - a
    x = (1.0 - u * (1.0 - (n_pop + 1.0) ** b)) ** (1.0 / b)
    r = x.astype(np.int64) - 1
    np.clip(r, 0, n_pop - 1, out=r)
    return r


def _alternating_runs(rng: np.random.Generator, n: int) -> np.ndarray:
    """Per-bin burst state (bool, length n) of a two-state Markov chain starting in 'normal'."""
    if n == 0:
        return np.zeros(0, dtype=bool)
    chunks = []
    total = 0
    m = max(8, int(n / (_NORMAL_MEAN_S + _BURST_MEAN_S)) + 8)
    while total < n:
        normal = rng.geometric(1.0 / _NORMAL_MEAN_S, size=m)
        burst = rng.geometric(1.0 / _BURST_MEAN_S, size=m)
        runs = np.empty(2 * m, dtype=np.int64)
        runs[0::2] = normal
        runs[1::2] = burst
        chunks.append(runs)
        total += int(runs.sum())
    runs = np.concatenate(chunks)
    states = np.zeros(runs.size, dtype=bool)
    states[1::2] = True
    return np.repeat(states, runs)[:n]


# --- the plan: everything global, drawn once -------------------------------------------------


class _Plan:
    def __init__(self, cfg: GeneratorConfig) -> None:
        self.cfg = cfg
        seed = cfg.seed
        E, M = cfg.entities, cfg.n_merchants
        self.E, self.M = E, M
        self.duration_ms = dur = int(round(cfg.duration_s * 1000))
        self.late_span_ms = max(cfg.allowed_lateness_ms, _LATE_MIN_SPAN_MS)

        w = _rng(seed, _S_WORLD)
        cw = _COUNTRY_W / _COUNTRY_W.sum()
        self.country_p = cw
        self.card_of_rank = w.permutation(E)
        self.card_home = w.choice(len(_COUNTRIES), size=E, p=cw).astype(np.int8)
        ndev = w.choice(len(_DEVICE_COUNT_P), size=E, p=_DEVICE_COUNT_P) + 1
        self.card_ndev = ndev.astype(np.int64)
        self.card_dev_base = np.concatenate(([0], np.cumsum(self.card_ndev)[:-1]))
        self.n_legit_devices = int(self.card_ndev.sum())
        self.merchant_of_rank = w.permutation(M)
        catw = _CATEGORIES[:, 0] / _CATEGORIES[:, 0].sum()
        cat = w.choice(len(_CATEGORIES), size=M, p=catw)
        self.merchant_mu = np.log(_CATEGORIES[cat, 1])
        self.merchant_sigma = _CATEGORIES[cat, 2]

        # event-time intensity over 1 s bins; exact background count spread multinomially
        nbins = -(-dur // _BIN_MS)
        self.nbins = nbins
        width = np.full(nbins, _BIN_MS, dtype=np.int64)
        width[-1] = dur - (nbins - 1) * _BIN_MS
        self.bin_width = width
        mod = _rng(seed, _S_MOD)
        burst = _alternating_runs(mod, nbins)
        intensity = np.where(burst, _BURST_MULT, 1.0) * width
        N = cfg.n_background
        self.bin_counts = mod.multinomial(N, intensity / intensity.sum()) if N else np.zeros(
            nbins, dtype=np.int64
        )

        # segments: fixed runs of bins (depends on the config only, never on batch_rows)
        self.seg_bins = max(1, int(_SEGMENT_TARGET_EVENTS // max(cfg.rate, 1.0)))
        self.n_segments = -(-nbins // self.seg_bins)

        self._plan_fraud(seed, N)

    def _plan_fraud(self, seed: int, n_background: int) -> None:
        cfg = self.cfg
        f = _rng(seed, _S_FRAUD)
        n_cards = int(round(cfg.fraud_fraction * self.E))
        if cfg.fraud_fraction > 0 and n_cards == 0:
            n_cards = 1
        mean_len = (_FRAUD_N_MIN + _FRAUD_N_MAX) / 2
        cap = int(_FRAUD_MAX_SHARE * n_background / mean_len)
        if n_background >= 10 * _FRAUD_N_MAX:
            cap = max(cap, 1)  # one burst is at most 10 % of a run this size
        n_cards = min(n_cards, cap, self.E)
        self.n_fraud_cards = n_cards
        empty_i = np.zeros(0, dtype=np.int64)
        if n_cards == 0:
            self.f_start = self.f_card = self.f_merchant = self.f_device = empty_i
            self.f_country = empty_i
            self.f_amount = np.zeros(0)
            self.f_time = empty_i
            return
        cards = f.choice(self.E, size=n_cards, replace=False)
        n_ev = f.integers(_FRAUD_N_MIN, _FRAUD_N_MAX + 1, size=n_cards)
        span = np.minimum(f.integers(*_FRAUD_SPAN_MS, size=n_cards, endpoint=True), self.duration_ms)
        start = (f.random(n_cards) * (self.duration_ms - span + 1)).astype(np.int64)
        n_fdev = max(1, -(-n_cards // _FRAUD_CARDS_PER_DEVICE))
        fdev = self.n_legit_devices + f.integers(0, n_fdev, size=n_cards)
        new_dev = f.random(n_cards) < _FRAUD_NEW_DEVICE_P
        own_dev = self.card_dev_base[cards]
        dev = np.where(new_dev, fdev, own_dev)
        home = self.card_home[cards].astype(np.int64)
        C = len(_COUNTRIES)
        foreign = (home + 1 + f.integers(0, C - 1, size=n_cards)) % C
        ctry = np.where(f.random(n_cards) < _FRAUD_FOREIGN_P, foreign, home)

        total = int(n_ev.sum())
        b = np.repeat(np.arange(n_cards), n_ev)
        t = start[b] + (f.random(total) * span[b]).astype(np.int64)
        cold_lo = self.M // 2
        mrank = f.integers(cold_lo, self.M, size=total) if self.M > 1 else np.zeros(total, np.int64)
        lo, hi = _FRAUD_AMOUNT
        amount = np.round(lo + f.random(total) * (hi - lo), 2)
        # order by time (stable, bursts in card-draw order) so segments can slice by burst start
        order = np.lexsort((np.arange(total), t, start[b]))
        self.f_start = start[b][order]
        self.f_time = t[order]
        self.f_card = cards[b][order].astype(np.int64)
        self.f_merchant = self.merchant_of_rank[mrank][order].astype(np.int64)
        self.f_device = dev[b][order].astype(np.int64)
        self.f_country = ctry[b][order].astype(np.int64)
        self.f_amount = amount[order]

    def segment(self, k: int, idx0: int) -> dict[str, np.ndarray]:
        """All events generated by segment k (background in bins [k*sb, (k+1)*sb), then the fraud
        bursts starting there), with global indices from idx0. Background rows come first and
        are sorted by event time; each burst's rows are sorted by event time."""
        cfg = self.cfg
        sb = self.seg_bins
        b0, b1 = k * sb, min((k + 1) * sb, self.nbins)
        t0, t1 = b0 * _BIN_MS, b1 * _BIN_MS
        rng = _rng(cfg.seed, _S_SEG, k)

        counts = self.bin_counts[b0:b1]
        n = int(counts.sum())
        bins = np.repeat(np.arange(b0, b1, dtype=np.int64), counts)
        t = bins * _BIN_MS + (rng.random(n) * self.bin_width[bins]).astype(np.int64)
        t.sort(kind="stable")  # the other columns are i.i.d. per row, so only t needs ordering
        card = self.card_of_rank[_zipf_ranks(rng, self.E, n)]
        merchant = self.merchant_of_rank[_zipf_ranks(rng, self.M, n)]
        # skew device choice to the card's first device
        ndev = self.card_ndev[card]
        device = self.card_dev_base[card] + (rng.random(n) ** 2 * ndev).astype(np.int64)
        away = rng.random(n) >= _HOME_COUNTRY_P
        other = rng.choice(len(_COUNTRIES), size=n, p=self.country_p)
        country = np.where(away, other, self.card_home[card]).astype(np.int64)
        z = rng.standard_normal(n)
        amount = np.round(np.exp(self.merchant_mu[merchant] + self.merchant_sigma[merchant] * z), 2)
        np.maximum(amount, 0.01, out=amount)

        fs, fe = np.searchsorted(self.f_start, [t0, t1], side="left")
        nf = int(fe - fs)
        is_fraud = np.zeros(n + nf, dtype=bool)
        is_fraud[n:] = True
        cols = {
            "t": np.concatenate((t, self.f_time[fs:fe])),
            "card": np.concatenate((card, self.f_card[fs:fe])),
            "merchant": np.concatenate((merchant, self.f_merchant[fs:fe])),
            "device": np.concatenate((device, self.f_device[fs:fe])),
            "country": np.concatenate((country, self.f_country[fs:fe])),
            "amount": np.concatenate((amount, self.f_amount[fs:fe])),
            "fraud": is_fraud,
        }
        m = n + nf
        cols["idx"] = np.arange(idx0, idx0 + m, dtype=np.int64)

        # arrival and labels draw from their own streams: the events (ids included) do not
        # depend on disorder_ms / late_fraction / labels, only their order and labels do
        ra = _rng(cfg.seed, _S_SEG, k, 1)
        delay = (ra.random(m) * (cfg.disorder_ms + 1)).astype(np.int64)
        if cfg.late_fraction > 0:
            late = ra.random(m) < cfg.late_fraction
            late_delay = (
                cfg.allowed_lateness_ms
                + _LATE_MARGIN_MS
                + (ra.random(m) * (self.late_span_ms + 1)).astype(np.int64)
            )
            delay = np.where(late, late_delay, delay)
        cols["arrival"] = cols["t"] + delay

        fraud = cols["fraud"]
        if cfg.labels:
            rl = _rng(cfg.seed, _S_SEG, k, 2)
            neg = rl.random(m) < cfg.negative_label_fraction
            cb = np.exp(np.log(_CHARGEBACK_MEDIAN_MS) + _CHARGEBACK_SIGMA * rl.standard_normal(m))
            cb = np.clip(cb, *_CHARGEBACK_CLIP_MS).astype(np.int64)
            lo, hi = _NEGATIVE_DELAY_MS
            nd = lo + (rl.random(m) * (hi - lo + 1)).astype(np.int64)
            cols["labelled"] = fraud | neg
            cols["label_delay"] = np.where(fraud, cb, nd)
        else:
            cols["labelled"] = np.zeros(m, dtype=bool)
            cols["label_delay"] = np.zeros(m, dtype=np.int64)
        return cols


_COLS = ("idx", "t", "card", "merchant", "device", "country", "amount", "fraud", "arrival",
         "labelled", "label_delay")


def _take(cols: dict[str, np.ndarray], sel) -> dict[str, np.ndarray]:
    return {k: cols[k][sel] for k in _COLS}


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in _COLS}


def _to_batch(cfg: GeneratorConfig, cols: dict[str, np.ndarray]) -> EventBatch:
    origin = cfg.origin_ms
    country = pa.array(cols["country"].astype(np.int32))
    event_id = _format_ids(f"e{cfg.seed}-", cols["idx"])
    event_time = cols["t"] + origin
    events = pa.Table.from_arrays(
        [
            event_id,
            _format_ids("c", cols["card"]),
            _format_ids("m", cols["merchant"]),
            _format_ids("d", cols["device"]),
            pa.array(cols["amount"], pa.float64()),
            _CURRENCY_ARR.take(country),
            _COUNTRY_ARR.take(country),
            pa.array(event_time, pa.int64()),
        ],
        schema=EVENT_SCHEMA,
    )
    labels = None
    if cfg.labels:
        sel = np.flatnonzero(cols["labelled"])
        labels = pa.Table.from_arrays(
            [
                event_id.take(pa.array(sel)),
                pa.array(cols["fraud"][sel], pa.bool_()),
                pa.array(event_time[sel] + cols["label_delay"][sel], pa.int64()),
            ],
            schema=LABEL_SCHEMA,
        )
    return EventBatch(events=events, arrival_ms=cols["arrival"].copy(), labels=labels)


def generate(cfg: GeneratorConfig, batch_rows: int = 65536) -> Iterator[EventBatch]:
    """Yield the run as :class:`EventBatch` es of exactly ``batch_rows`` rows (the last may be
    shorter), in arrival order. The concatenated stream does not depend on ``batch_rows``.

    Memory is bounded by one generation segment (~2^18 events) plus the events whose arrival
    lies beyond it (late and disordered ones), so long live runs stream.
    """
    if not isinstance(batch_rows, int) or batch_rows < 1:
        raise ConfigError(f"generator: batch_rows must be an integer >= 1, got {batch_rows!r}")
    plan = _Plan(cfg)
    pending: dict[str, np.ndarray] | None = None
    ready: list[dict[str, np.ndarray]] = []
    n_ready = 0
    idx = 0

    def drain(final: bool) -> Iterator[EventBatch]:
        nonlocal ready, n_ready
        if not ready:
            return
        if n_ready < batch_rows and not final:
            return
        allr = _concat(ready)
        n_full = n_ready // batch_rows
        for i in range(n_full):
            yield _to_batch(cfg, _take(allr, slice(i * batch_rows, (i + 1) * batch_rows)))
        rest = n_ready - n_full * batch_rows
        if final and rest:
            yield _to_batch(cfg, _take(allr, slice(n_full * batch_rows, n_ready)))
            rest = 0
        ready = [_take(allr, slice(n_ready - rest, n_ready))] if rest else []
        n_ready = rest

    for k in range(plan.n_segments):
        seg = plan.segment(k, idx)
        idx += seg["idx"].size
        # pending is kept in idx order and precedes seg's indices, so cur is idx-ascending and a
        # stable sort on arrival orders rows by (arrival_ms, idx)
        cur = seg if pending is None else _concat([pending, seg])
        cur = _take(cur, np.argsort(cur["arrival"], kind="stable"))
        # every later segment has event_time (hence arrival) >= its start: emit what is before it
        bound = min((k + 1) * plan.seg_bins, plan.nbins) * _BIN_MS
        cut = int(np.searchsorted(cur["arrival"], bound, side="left"))
        if k == plan.n_segments - 1:
            cut = cur["idx"].size
        if cut:
            ready.append(_take(cur, slice(0, cut)))
            n_ready += cut
        pending = _take(cur, slice(cut, None))
        if pending["idx"].size:
            pending = _take(pending, np.argsort(pending["idx"], kind="stable"))
        yield from drain(final=False)
    yield from drain(final=True)


def _empty_events(with_arrival: bool) -> pa.Table:
    schema = EVENT_SCHEMA.append(_ARRIVAL_FIELD) if with_arrival else EVENT_SCHEMA
    return schema.empty_table()


def generate_table(
    cfg: GeneratorConfig, *, with_arrival: bool = False
) -> tuple[pa.Table, pa.Table | None]:
    """The whole run as one ``(events, labels)`` pair, in arrival order (single-chunk tables).

    ``labels`` is None unless ``cfg.labels``. With ``with_arrival`` the events table gets a last
    column ``arrival_ms`` (int64, offset from the start of the run).
    """
    ev, lb = [], []
    for b in generate(cfg):
        t = b.events
        if with_arrival:
            t = t.append_column(_ARRIVAL_FIELD, pa.array(b.arrival_ms, pa.int64()))
        ev.append(t)
        if b.labels is not None:
            lb.append(b.labels)
    events = pa.concat_tables(ev).combine_chunks() if ev else _empty_events(with_arrival)
    labels = None
    if cfg.labels:
        labels = pa.concat_tables(lb).combine_chunks() if lb else LABEL_SCHEMA.empty_table()
    return events, labels


def write_parquet(
    cfg: GeneratorConfig,
    path: str | Path,
    *,
    labels_path: str | Path | None = None,
    with_arrival: bool = False,
    row_group_rows: int = 1 << 20,
) -> tuple[Path, Path | None]:
    """Stream the run into Parquet (zstd), in arrival order, one row group per ``row_group_rows``.

    Events go to ``path``; labels (only when ``cfg.labels``) to ``labels_path``, by default
    ``<path stem>.labels.parquet`` beside it. The files are byte-identical for the same config
    and ``row_group_rows``. Returns ``(events_path, labels_path or None)``.
    """
    path = Path(path)
    lpath = None
    if cfg.labels:
        lpath = Path(labels_path) if labels_path is not None else path.with_name(
            path.stem + ".labels.parquet"
        )
    schema = EVENT_SCHEMA.append(_ARRIVAL_FIELD) if with_arrival else EVENT_SCHEMA
    path.parent.mkdir(parents=True, exist_ok=True)
    lw = None
    with pq.ParquetWriter(path, schema, compression="zstd") as w:
        try:
            if lpath is not None:
                lpath.parent.mkdir(parents=True, exist_ok=True)
                lw = pq.ParquetWriter(lpath, LABEL_SCHEMA, compression="zstd")
            for b in generate(cfg, batch_rows=row_group_rows):
                t = b.events
                if with_arrival:
                    t = t.append_column(_ARRIVAL_FIELD, pa.array(b.arrival_ms, pa.int64()))
                w.write_table(t, row_group_size=row_group_rows)
                if lw is not None and b.labels is not None and b.labels.num_rows:
                    lw.write_table(b.labels, row_group_size=row_group_rows)
        finally:
            if lw is not None:
                lw.close()
    return path, lpath
