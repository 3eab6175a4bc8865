package io.headwater.flink;

import java.util.Map;

import org.apache.flink.kafka.shaded.org.apache.kafka.clients.producer.Partitioner;
import org.apache.flink.kafka.shaded.org.apache.kafka.common.Cluster;

/**
 * Kafka partitioner of a tile query's sink: every record of the query goes to one partition of
 * the tiles topic, {@code headwater.partition.slot} modulo the partition count.
 *
 * <p>Why: the online writer's exact as_of rule needs a query's records, markers included, in the
 * order the query emitted them. One producer keeps that order within a partition only; the key
 * (view, resolution, entity, tile start) still maps to one partition, so compaction is unchanged.
 * Set through the upsert-kafka sink's {@code properties.partitioner.class} (that connector takes
 * no Flink partitioner); the connector ships Kafka's client shaded, hence the shaded interface.
 */
public final class QueryPartitioner implements Partitioner {
    public static final String SLOT = "headwater.partition.slot";

    private int slot;
    private int partitions = -1;

    @Override
    public void configure(Map<String, ?> configs) {
        Object v = configs.get(SLOT);
        if (v == null) {
            throw new IllegalArgumentException(SLOT + " is not set: the tile sink must name its partition slot");
        }
        slot = Integer.parseInt(String.valueOf(v));
    }

    @Override
    public int partition(String topic, Object key, byte[] keyBytes, Object value, byte[] valueBytes,
                         Cluster cluster) {
        Integer n = cluster.partitionCountForTopic(topic);
        if (n == null || n <= 0) {
            throw new IllegalStateException("no partition count for " + topic + " yet");
        }
        if (partitions < 0) {
            partitions = n;
        } else if (n != partitions) {
            // the query would move: its old partition's backlog could be read after the new one's markers
            throw new IllegalStateException("tiles topic " + topic + " went from " + partitions + " to " + n
                    + " partitions: restart the features job (`headwater features run`)");
        }
        return Math.floorMod(slot, n);
    }

    @Override
    public void close() {
    }
}
