"""Fraud features for card transactions: declared once, computed by Flink, served from Redis,
replayed for training. Feature names are `<column>_<op>_<window>` unless named explicitly."""

from pathlib import Path

from streamjobs.dsl import Aggregation, Entity, FeatureView, LatestValue, Source

HERE = Path(__file__).resolve().parent

card = Entity("card", key="card_id")
merchant = Entity("merchant", key="merchant_id")

transactions = Source(
    "transactions",
    topic="events",  # a topic role of headwater.yaml, or a literal topic name
    schema=HERE / "schemas" / "transaction.avsc",
    event_time_field="event_time",
)

card_velocity = FeatureView(
    name="card_velocity",
    entity=card,
    source=transactions,
    aggregations=(
        # card testing shows up as bursts of transactions in minutes
        Aggregation("count", "amount", windows=("1m", "10m", "1h"), name="txn_count"),
        Aggregation("sum", "amount", windows=("1h", "24h")),
        Aggregation("mean", "amount", windows=("1h", "24h")),
        Aggregation("max", "amount", windows=("1h", "24h")),
        Aggregation("stddev", "amount", windows=("1h", "24h")),
        # many new merchants in a few minutes is the other half of the pattern
        Aggregation("distinct_count", "merchant_id", windows=("10m", "1h")),
        LatestValue("country", ttl="24h", name="last_country"),  # a 1 h hop: no extra 1 d resolution
    ),
    allowed_lateness="5m",
    ttl="25h",
    owner="fraud-ml",
    description="Velocity and amount profile of a card.",
    freshness_objective="2s",
)

merchant_activity = FeatureView(
    name="merchant_activity",
    entity=merchant,
    source=transactions,
    aggregations=(
        Aggregation("count", "amount", windows=("10m", "1h"), name="merchant_txn_count"),
        Aggregation("mean", "amount", windows=("1h",), name="merchant_amount_mean_1h"),
        Aggregation("distinct_count", "card_id", windows=("1h",), name="merchant_cards_1h"),
    ),
    allowed_lateness="5m",
    ttl="2h",
    owner="fraud-ml",
    description="How busy a merchant is and with how many cards.",
)

VIEWS = [card_velocity, merchant_activity]
