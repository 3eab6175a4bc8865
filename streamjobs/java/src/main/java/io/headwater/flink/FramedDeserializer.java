package io.headwater.flink;

import java.io.IOException;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HashSet;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ThreadLocalRandom;

import org.apache.avro.Schema;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.flink.api.common.serialization.DeserializationSchema;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.formats.avro.AvroToRowDataConverters;
import org.apache.flink.formats.avro.typeutils.AvroSchemaConverter;
import org.apache.flink.metrics.Counter;
import org.apache.flink.table.data.GenericRowData;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.types.logical.RowType;
import org.apache.flink.util.Collector;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Strips the 5-byte Confluent header and decodes the Avro body.
 *
 * <p>A record framed with another schema id than the table's (a producer on an older or newer
 * version of the events schema) is decoded with its writer schema, looked up in the schema store
 * ({@link WriterSchemas}), and resolved to the table's schema by Avro's resolution rules, as the
 * scoring consumer does with fastavro: a field the writer lacks takes the reader's default, one
 * the reader lacks is dropped. Counted in {@code headwaterResolved}. A record that is not ours
 * (bad magic byte, an id the store does not know, a writer schema that does not resolve, an
 * undecodable body) is skipped by returning null, as the Kafka source expects, counted in
 * {@code headwaterSkipped} and logged once per schema id: the feature job must not die on data.
 * The scoring consumer routes the same records to the dead-letter topic with a reason. A store
 * that cannot answer fails the job instead (it restarts from its checkpoint), since skipping
 * would lose good records.
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

    private static final Logger LOG = LoggerFactory.getLogger(FramedDeserializer.class);

    private final DeserializationSchema<RowData> avro;
    private final int expectedId;
    private final int markEvery;
    private final TypeInformation<RowData> producedType;
    private final String schemaStore;
    private final RowType avroRowType;
    private final boolean legacyTimestamps;
    private transient Counter skipped;
    private transient Counter resolved;
    private transient int sinceMark;
    private transient long readerId;
    private transient WriterSchemas writers;
    private transient Schema readerSchema;
    private transient AvroToRowDataConverters.AvroToRowDataConverter toRow;
    private transient Map<Integer, GenericDatumReader<GenericRecord>> readers;
    private transient Set<Integer> warned;
    private transient BinaryDecoder decoder;

    /**
     * {@code schemaStore}: where other schema ids are looked up (null: such records are skipped);
     * {@code avroRowType}: the Avro fields' row type (without the marker column).
     */
    FramedDeserializer(DeserializationSchema<RowData> avro, int expectedId, int markEvery,
                       TypeInformation<RowData> producedType, String schemaStore, RowType avroRowType,
                       boolean legacyTimestamps) {
        this.avro = avro;
        this.expectedId = expectedId;
        this.markEvery = markEvery;
        this.producedType = producedType;
        this.schemaStore = schemaStore;
        this.avroRowType = avroRowType;
        this.legacyTimestamps = legacyTimestamps;
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
        resolved = context.getMetricGroup().counter("headwaterResolved");
        readers = new HashMap<>();
        warned = new HashSet<>();
        if (schemaStore != null && !schemaStore.isEmpty() && expectedId >= 0) {
            writers = new WriterSchemas(schemaStore);
            // the table's own schema as the reader, for its defaults; the table's columns are
            // derived from it, in its order (Headwater's streamjobs/avro_ddl.py)
            Schema own = writers.get(expectedId);
            readerSchema = own != null ? own : AvroSchemaConverter.convertToSchema(avroRowType, legacyTimestamps);
            toRow = AvroToRowDataConverters.createRowConverter(avroRowType, legacyTimestamps);
        }
    }

    @Override
    public RowData deserialize(byte[] message) {
        if (message == null || message.length < 5 || message[0] != 0) {
            return skip();
        }
        int id = ((message[1] & 0xff) << 24) | ((message[2] & 0xff) << 16)
                | ((message[3] & 0xff) << 8) | (message[4] & 0xff);
        if (expectedId >= 0 && id != expectedId) {
            return foreign(id, message);
        }
        try {
            return avro.deserialize(Arrays.copyOfRange(message, 5, message.length));
        } catch (Exception e) {
            return skip();
        }
    }

    /** A record under another schema id: its writer schema resolved to the table's (class docstring). */
    private RowData foreign(int id, byte[] message) {
        if (writers == null) {
            warnOnce(id, "no schema store configured ('headwater-avro.schema-store')");
            return skip();
        }
        GenericDatumReader<GenericRecord> reader = readers.get(id);
        if (reader == null) {
            Schema writer;
            try {
                writer = writers.get(id);
            } catch (IOException e) {
                throw new IllegalStateException("schema store " + writers.location()
                        + " could not be read for schema id " + id + ": " + e.getMessage(), e);
            }
            if (writer == null) {
                warnOnce(id, "it is not registered in " + writers.location());
                return skip();
            }
            reader = new GenericDatumReader<>(writer, readerSchema);
            readers.put(id, reader);
        }
        try {
            decoder = DecoderFactory.get().binaryDecoder(message, 5, message.length - 5, decoder);
            RowData row = (RowData) toRow.convert(reader.read(null, decoder));
            resolved.inc();
            return row;
        } catch (Exception e) {
            warnOnce(id, "it does not resolve to the table's schema or does not decode: " + e);
            return skip();
        }
    }

    private void warnOnce(int id, String why) {
        if (warned.add(id)) {
            LOG.warn("headwater-avro: skipping records under schema id {} (reading schema id {}): {}",
                    id, expectedId, why);
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
