package io.headwater.flink;

import org.apache.flink.api.common.serialization.SerializationSchema;
import org.apache.flink.table.data.RowData;

/** Prepends the Confluent header (magic 0, 4-byte big-endian schema id) to Flink's Avro body. */
final class FramedSerializer implements SerializationSchema<RowData> {
    private static final long serialVersionUID = 1L;

    private final SerializationSchema<RowData> avro;
    private final int schemaId;

    FramedSerializer(SerializationSchema<RowData> avro, int schemaId) {
        this.avro = avro;
        this.schemaId = schemaId;
    }

    @Override
    public void open(InitializationContext context) throws Exception {
        avro.open(context);
    }

    @Override
    public byte[] serialize(RowData row) {
        byte[] body = avro.serialize(row);
        byte[] out = new byte[body.length + 5];
        out[0] = 0;
        out[1] = (byte) (schemaId >>> 24);
        out[2] = (byte) (schemaId >>> 16);
        out[3] = (byte) (schemaId >>> 8);
        out[4] = (byte) schemaId;
        System.arraycopy(body, 0, out, 5, body.length);
        return out;
    }
}
