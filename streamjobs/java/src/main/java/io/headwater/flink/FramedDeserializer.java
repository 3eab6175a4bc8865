package io.headwater.flink;

import java.util.Arrays;
import java.util.concurrent.ThreadLocalRandom;

import org.apache.flink.api.common.serialization.DeserializationSchema;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.metrics.Counter;
import org.apache.flink.table.data.GenericRowData;
import org.apache.flink.table.data.RowData;
import org.apache.flink.util.Collector;

/**
 * Strips the 5-byte Confluent header and decodes the Avro body.
 *
 * <p>A record that is not ours (bad magic byte, other schema id, undecodable body) is skipped by
 * returning null, as the Kafka source expects, and counted in the {@code headwaterSkipped}
 * metric: the feature job must not die on data. The scoring consumer routes the same records to
 * the dead-letter topic with a reason.
 *
 * <p>With {@code markEvery > 0} (the streaming features job) every row gets a last BIGINT
 * column, 0, and every {@code markEvery}-th record read is emitted a second time right after
 * itself with this reader's id there: the copy a tile query turns into its marker (Headwater's
 * {@code streamjobs/compiler.py}). The id is random and never 0, drawn at every {@code open},
 * i.e. at every start of the job and every restore after a failure, so the writer never pairs
 * markers from before a restore with markers from after it. Emitting the copy here, in the
 * source, keeps it in the record's place in the stream at no per-row cost to the queries (an
 * {@code UNNEST} per query cost the job 15-20 % of its throughput).
 */
final class FramedDeserializer implements DeserializationSchema<RowData> {
    private static final long serialVersionUID = 1L;

    private final DeserializationSchema<RowData> avro;
    private final int expectedId;
    private final int markEvery;
    private final TypeInformation<RowData> producedType;
    private transient Counter skipped;
    private transient int sinceMark;
    private transient long readerId;

    FramedDeserializer(DeserializationSchema<RowData> avro, int expectedId) {
        this(avro, expectedId, 0, null);
    }

    FramedDeserializer(DeserializationSchema<RowData> avro, int expectedId, int markEvery,
                       TypeInformation<RowData> producedType) {
        this.avro = avro;
        this.expectedId = expectedId;
        this.markEvery = markEvery;
        this.producedType = producedType;
    }

    @Override
    public void deserialize(byte[] message, Collector<RowData> out) {
        RowData row = deserialize(message);
        if (row == null) {
            return;
        }
        if (markEvery <= 0) {
            out.collect(row);
            return;
        }
        // the Kafka source casts what a format emits to GenericRowData, as Flink's Avro decoder makes
        GenericRowData in = (GenericRowData) row;
        out.collect(flagged(in, 0L));
        if (++sinceMark >= markEvery) {
            sinceMark = 0;
            out.collect(flagged(in, readerId));
        }
    }

    private static GenericRowData flagged(GenericRowData in, long marked) {
        int n = in.getArity();
        GenericRowData row = new GenericRowData(in.getRowKind(), n + 1);
        for (int i = 0; i < n; i++) {
            row.setField(i, in.getField(i));
        }
        row.setField(n, marked);
        return row;
    }

    @Override
    public void open(InitializationContext context) throws Exception {
        avro.open(context);
        long id = 0;
        while (id <= 0) {
            id = ThreadLocalRandom.current().nextLong() >>> 1;
        }
        readerId = id;
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
        return producedType != null ? producedType : avro.getProducedType();
    }
}
