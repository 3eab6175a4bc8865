package io.headwater.flink;

import java.io.Serializable;
import java.util.Arrays;
import java.util.List;

import org.apache.flink.table.data.ArrayData;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.types.logical.ArrayType;
import org.apache.flink.table.types.logical.LogicalType;
import org.apache.flink.table.types.logical.RowType;

/**
 * Avro binary encoding of a flat row, written straight from {@link RowData} into one buffer.
 *
 * <p>Why: Flink's {@code avro} format converts every row into a {@code GenericRecord} (boxing each
 * value, building {@code Utf8}s and {@code GenericData.Array}s) and then walks it with a datum
 * writer; for tiles that was 11 % of the streaming features job's CPU in a JFR profile. The bytes
 * are the same as that format's, for the schema it derives from the row type (nullable → union
 * {@code ["null", T]}, null first; NOT NULL → {@code T}): {@code tests/test_flink_kafka.py} compares
 * both formats byte for byte. Rows with other types than these get Flink's encoder
 * ({@link #forType} returns null).
 */
final class AvroRowEncoder implements Serializable {
    private static final long serialVersionUID = 1L;

    /** A growable byte buffer with Avro's primitive encodings. */
    static final class Out {
        byte[] buf = new byte[256];
        int n;

        private void room(int k) {
            if (n + k > buf.length) {
                buf = Arrays.copyOf(buf, Math.max(buf.length * 2, n + k));
            }
        }

        void raw(byte b) {
            room(1);
            buf[n++] = b;
        }

        void varLong(long v) {
            room(10);
            long z = (v << 1) ^ (v >> 63);
            while ((z & ~0x7FL) != 0) {
                buf[n++] = (byte) ((z & 0x7F) | 0x80);
                z >>>= 7;
            }
            buf[n++] = (byte) z;
        }

        void fixed32(int bits) {
            room(4);
            buf[n++] = (byte) bits;
            buf[n++] = (byte) (bits >>> 8);
            buf[n++] = (byte) (bits >>> 16);
            buf[n++] = (byte) (bits >>> 24);
        }

        void fixed64(long bits) {
            fixed32((int) bits);
            fixed32((int) (bits >>> 32));
        }

        void bytes(byte[] b) {
            varLong(b.length);
            room(b.length);
            System.arraycopy(b, 0, buf, n, b.length);
            n += b.length;
        }
    }

    /** Writes one non-null value of a row field or an array element. */
    private interface Value extends Serializable {
        void row(RowData row, int pos, Out out);

        void elem(ArrayData array, int i, Out out);
    }

    private final Value[] values;
    private final boolean[] nullable;
    private final String[] names;

    private AvroRowEncoder(Value[] values, boolean[] nullable, String[] names) {
        this.values = values;
        this.nullable = nullable;
        this.names = names;
    }

    /** An encoder for {@code type}, or null when a column's type is not one this class writes. */
    static AvroRowEncoder forType(LogicalType type) {
        if (!(type instanceof RowType)) {
            return null;
        }
        List<RowType.RowField> fields = ((RowType) type).getFields();
        Value[] values = new Value[fields.size()];
        boolean[] nullable = new boolean[fields.size()];
        String[] names = new String[fields.size()];
        for (int i = 0; i < values.length; i++) {
            LogicalType t = fields.get(i).getType();
            values[i] = t instanceof ArrayType ? array(((ArrayType) t).getElementType()) : scalar(t);
            if (values[i] == null) {
                return null;
            }
            nullable[i] = t.isNullable();
            names[i] = fields.get(i).getName();
        }
        return new AvroRowEncoder(values, nullable, names);
    }

    void write(RowData row, Out out) {
        for (int i = 0; i < values.length; i++) {
            if (row.isNullAt(i)) {
                if (!nullable[i]) {
                    throw new IllegalArgumentException("headwater-avro: NOT NULL column " + names[i] + " is null");
                }
                out.raw((byte) 0);  // union branch 0: "null"
                continue;
            }
            if (nullable[i]) {
                out.raw((byte) 2);  // union branch 1 (zigzag varint of 1)
            }
            values[i].row(row, i, out);
        }
    }

    private static Value scalar(LogicalType t) {
        switch (t.getTypeRoot()) {
            case BOOLEAN:
                return new Value() {
                    public void row(RowData r, int p, Out o) { o.raw(r.getBoolean(p) ? (byte) 1 : 0); }
                    public void elem(ArrayData a, int i, Out o) { o.raw(a.getBoolean(i) ? (byte) 1 : 0); }
                };
            case INTEGER:
                return new Value() {
                    public void row(RowData r, int p, Out o) { o.varLong(r.getInt(p)); }
                    public void elem(ArrayData a, int i, Out o) { o.varLong(a.getInt(i)); }
                };
            case BIGINT:
                return new Value() {
                    public void row(RowData r, int p, Out o) { o.varLong(r.getLong(p)); }
                    public void elem(ArrayData a, int i, Out o) { o.varLong(a.getLong(i)); }
                };
            case FLOAT:
                return new Value() {
                    public void row(RowData r, int p, Out o) { o.fixed32(Float.floatToRawIntBits(r.getFloat(p))); }
                    public void elem(ArrayData a, int i, Out o) { o.fixed32(Float.floatToRawIntBits(a.getFloat(i))); }
                };
            case DOUBLE:
                return new Value() {
                    public void row(RowData r, int p, Out o) { o.fixed64(Double.doubleToRawLongBits(r.getDouble(p))); }
                    public void elem(ArrayData a, int i, Out o) { o.fixed64(Double.doubleToRawLongBits(a.getDouble(i))); }
                };
            case CHAR:
            case VARCHAR:
                return new Value() {
                    public void row(RowData r, int p, Out o) { o.bytes(r.getString(p).toBytes()); }
                    public void elem(ArrayData a, int i, Out o) { o.bytes(a.getString(i).toBytes()); }
                };
            default:
                return null;
        }
    }

    /** An Avro array in one block (count, items, 0), as Avro's datum writer writes a whole array. */
    private static Value array(LogicalType elementType) {
        Value item = scalar(elementType);
        if (item == null) {
            return null;
        }
        boolean nullableItems = elementType.isNullable();
        return new Value() {
            public void row(RowData r, int p, Out o) {
                ArrayData a = r.getArray(p);
                int size = a.size();
                if (size > 0) {
                    o.varLong(size);
                    for (int i = 0; i < size; i++) {
                        if (a.isNullAt(i)) {
                            if (!nullableItems) {
                                throw new IllegalArgumentException("headwater-avro: null in an array of NOT NULL items");
                            }
                            o.raw((byte) 0);
                        } else {
                            if (nullableItems) {
                                o.raw((byte) 2);
                            }
                            item.elem(a, i, o);
                        }
                    }
                }
                o.raw((byte) 0);
            }

            public void elem(ArrayData a, int i, Out o) {
                throw new UnsupportedOperationException("nested arrays are not encoded here");
            }
        };
    }
}
