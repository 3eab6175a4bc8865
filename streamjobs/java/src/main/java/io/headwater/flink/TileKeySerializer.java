package io.headwater.flink;

import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;

import org.apache.flink.api.common.serialization.SerializationSchema;
import org.apache.flink.table.data.RowData;

/** Writes a framed {@code TileKey} record: the constant parts are encoded once. */
final class TileKeySerializer implements SerializationSchema<RowData> {
    private static final long serialVersionUID = 1L;

    private final byte[] head; // header + view (+ entity when constant)
    private final byte[] resolution; // zigzag varint
    private final boolean constantEntity;
    private transient ByteArrayOutputStream buf;

    TileKeySerializer(int schemaId, String view, long resolutionMs, String entity) {
        ByteArrayOutputStream h = new ByteArrayOutputStream();
        h.write(0);
        h.write(schemaId >>> 24);
        h.write(schemaId >>> 16);
        h.write(schemaId >>> 8);
        h.write(schemaId);
        writeString(h, view.getBytes(StandardCharsets.UTF_8));
        this.constantEntity = entity != null;
        ByteArrayOutputStream r = new ByteArrayOutputStream();
        writeLong(r, resolutionMs);
        if (constantEntity) {
            writeString(h, entity.getBytes(StandardCharsets.UTF_8));
        }
        this.head = h.toByteArray();
        this.resolution = r.toByteArray();
    }

    @Override
    public byte[] serialize(RowData row) {
        if (buf == null) {
            buf = new ByteArrayOutputStream(64);
        }
        buf.reset();
        buf.write(head, 0, head.length);
        if (constantEntity) {
            buf.write(resolution, 0, resolution.length);
            writeLong(buf, row.getLong(0));
        } else {
            writeString(buf, row.getString(0).toBytes());
            buf.write(resolution, 0, resolution.length);
            writeLong(buf, row.getLong(1));
        }
        return buf.toByteArray();
    }

    private static void writeString(ByteArrayOutputStream out, byte[] utf8) {
        writeLong(out, utf8.length);
        out.write(utf8, 0, utf8.length);
    }

    /** Avro long: zigzag, then base-128 varint, low group first. */
    private static void writeLong(ByteArrayOutputStream out, long v) {
        long z = (v << 1) ^ (v >> 63);
        while ((z & ~0x7FL) != 0) {
            out.write((int) ((z & 0x7F) | 0x80));
            z >>>= 7;
        }
        out.write((int) z);
    }
}
