package io.headwater.flink;

import java.util.Arrays;

import org.apache.flink.api.common.serialization.DeserializationSchema;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.metrics.Counter;
import org.apache.flink.table.data.RowData;

/**
 * Strips the 5-byte Confluent header and decodes the Avro body.
 *
 * <p>A record that is not ours (bad magic byte, other schema id, undecodable body) is skipped by
 * returning null, as the Kafka source expects, and counted in the {@code headwaterSkipped}
 * metric: the feature job must not die on data. The scoring consumer routes the same records to
 * the dead-letter topic with a reason.
 */
final class FramedDeserializer implements DeserializationSchema<RowData> {
    private static final long serialVersionUID = 1L;

    private final DeserializationSchema<RowData> avro;
    private final int expectedId;
    private transient Counter skipped;

    FramedDeserializer(DeserializationSchema<RowData> avro, int expectedId) {
        this.avro = avro;
        this.expectedId = expectedId;
    }

    @Override
    public void open(InitializationContext context) throws Exception {
        avro.open(context);
        skipped = context.getMetricGroup().counter("headwaterSkipped");
    }

    @Override
    public RowData deserialize(byte[] message) {
        if (message == null || message.length < 5 || message[0] != 0) {
            return skip();
        }
        int id = ((message[1] & 0xff) << 24) | ((message[2] & 0xff) << 16)
                | ((message[3] & 0xff) << 8) | (message[4] & 0xff);
        if (expectedId >= 0 && id != expectedId) {
            return skip();
        }
        try {
            return avro.deserialize(Arrays.copyOfRange(message, 5, message.length));
        } catch (Exception e) {
            return skip();
        }
    }

    private RowData skip() {
        if (skipped != null) {
            skipped.inc();
        }
        return null;
    }

    @Override
    public boolean isEndOfStream(RowData nextElement) {
        return false;
    }

    @Override
    public TypeInformation<RowData> getProducedType() {
        return avro.getProducedType();
    }
}
