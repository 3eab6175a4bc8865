package io.headwater.flink;

import java.util.Arrays;

import org.apache.flink.api.common.serialization.SerializationSchema;
import org.apache.flink.table.data.RowData;

/**
 * Prepends the Confluent header (magic 0, 4-byte big-endian schema id) to the Avro body: written
 * by {@link AvroRowEncoder} into the same buffer when the row's types allow, else by Flink's
 * {@code avro} format (same bytes).
 */
final class FramedSerializer implements SerializationSchema<RowData> {
    private static final long serialVersionUID = 2L;

    private final SerializationSchema<RowData> avro;
    private final AvroRowEncoder direct;  // null: Flink's encoder
    private final int schemaId;
    private transient AvroRowEncoder.Out out;

    FramedSerializer(SerializationSchema<RowData> avro, AvroRowEncoder direct, int schemaId) {
        this.avro = avro;
        this.direct = direct;
        this.schemaId = schemaId;
    }

    @Override
    public void open(InitializationContext context) throws Exception {
        if (direct == null) {
            avro.open(context);
        }
        out = new AvroRowEncoder.Out();
    }

    private void header(byte[] b) {
        b[0] = 0;
        b[1] = (byte) (schemaId >>> 24);
        b[2] = (byte) (schemaId >>> 16);
        b[3] = (byte) (schemaId >>> 8);
        b[4] = (byte) schemaId;
    }

    @Override
    public byte[] serialize(RowData row) {
        if (direct != null) {
            out.n = 5;
            direct.write(row, out);
            byte[] b = Arrays.copyOf(out.buf, out.n);
            header(b);
            return b;
        }
        byte[] body = avro.serialize(row);
        byte[] b = new byte[body.length + 5];
        header(b);
        System.arraycopy(body, 0, b, 5, body.length);
        return b;
    }
}
