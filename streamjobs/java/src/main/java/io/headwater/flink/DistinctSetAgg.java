package io.headwater.flink;

import java.io.IOException;
import java.util.Arrays;

import org.apache.flink.api.common.typeutils.SimpleTypeSerializerSnapshot;
import org.apache.flink.api.common.typeutils.TypeSerializerSnapshot;
import org.apache.flink.api.common.typeutils.base.TypeSerializerSingleton;
import org.apache.flink.core.memory.DataInputView;
import org.apache.flink.core.memory.DataOutputView;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.data.ArrayData;
import org.apache.flink.table.data.StringData;
import org.apache.flink.table.data.binary.BinaryArrayData;
import org.apache.flink.table.data.writer.BinaryArrayWriter;
import org.apache.flink.table.functions.AggregateFunction;

/**
 * {@code HW_DISTINCT(x)}: the exact set of a tile's distinct non-null values, as a sorted array
 * (NULL when there is none), i.e. the {@code distinct} IR field of {@code streamjobs/ir.py}.
 *
 * <p>Why not {@code ARRAY_AGG(DISTINCT x)}: in streaming mode Flink keeps a distinct aggregate in a
 * per-key {@code MapView} whose entries each carry a state TTL, and every tile emission walks the
 * whole map through the TTL wrapper (a third of the features job's CPU in a profile); in batch
 * mode the planner expands every row twice and sorts twice. One plain accumulator object per
 * tile avoids both; it merges, so the planner can pre-aggregate locally.
 *
 * <p>The set is kept as its items' UTF-8 bytes in sorted order (unsigned bytewise, which is code
 * point order, as Python's {@code sorted} orders {@code str}), so the value is written without a
 * sort or a re-encoding, and the accumulator has its own compact serializer ({@link AccSerializer})
 * for the local-to-global exchange and checkpoints instead of Kryo (Kryo was 6-10 % of the
 * streaming job's CPU in a profile). The value is Flink's internal {@link ArrayData}, kept until the
 * set changes: a streaming global aggregate asks for it twice per key and mini-batch.
 */
@FunctionHint(
        accumulator = @DataTypeHint(value = "RAW", bridgedTo = DistinctSetAgg.Acc.class,
                rawSerializer = DistinctSetAgg.AccSerializer.class),
        output = @DataTypeHint(value = "ARRAY<STRING>", bridgedTo = ArrayData.class))
public final class DistinctSetAgg extends AggregateFunction<ArrayData, DistinctSetAgg.Acc> {
    private static final long serialVersionUID = 2L;

    private static final byte[][] NONE = new byte[0][];

    /** A tile's distinct items: UTF-8 bytes, sorted, no duplicates, never mutated once added. */
    public static final class Acc {
        byte[][] items = NONE;
        int size;
        /** The value of {@code items}; null until asked for or after a change (not serialized). */
        transient ArrayData value;

        /** Index of {@code key}, or {@code -(insertion point) - 1}. */
        int find(byte[] key) {
            int lo = 0;
            int hi = size - 1;
            while (lo <= hi) {
                int mid = (lo + hi) >>> 1;
                int c = Arrays.compareUnsigned(items[mid], key);
                if (c < 0) {
                    lo = mid + 1;
                } else if (c > 0) {
                    hi = mid - 1;
                } else {
                    return mid;
                }
            }
            return -(lo + 1);
        }

        void insert(int at, byte[] item) {
            if (size == items.length) {
                items = Arrays.copyOf(items, Math.max(4, size * 2));
            }
            System.arraycopy(items, at, items, at + 1, size - at);
            items[at] = item;
            size++;
            value = null;
        }

        /** Union with another sorted set, by one merge pass (items are shared: never mutated). */
        void addAll(Acc other) {
            if (other.size == 0) {
                return;
            }
            byte[][] out = new byte[size + other.size][];
            int i = 0;
            int j = 0;
            int n = 0;
            while (i < size && j < other.size) {
                int c = Arrays.compareUnsigned(items[i], other.items[j]);
                if (c < 0) {
                    out[n++] = items[i++];
                } else if (c > 0) {
                    out[n++] = other.items[j++];
                } else {
                    out[n++] = items[i++];
                    j++;
                }
            }
            while (i < size) {
                out[n++] = items[i++];
            }
            while (j < other.size) {
                out[n++] = other.items[j++];
            }
            if (n != size) {
                items = out;
                size = n;
                value = null;
            }
        }
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    public void accumulate(Acc acc, @DataTypeHint(value = "STRING", bridgedTo = StringData.class) StringData value) {
        if (value == null) {
            return;
        }
        byte[] bytes = value.toBytes();
        int at = acc.find(bytes);
        if (at < 0) {
            // toBytes may hand out the backing array of a reused buffer: keep a copy of our own
            acc.insert(-at - 1, Arrays.copyOf(bytes, bytes.length));
        }
    }

    public void merge(Acc acc, Iterable<Acc> others) {
        for (Acc other : others) {
            acc.addAll(other);
        }
    }

    public void resetAccumulator(Acc acc) {
        acc.items = NONE;
        acc.size = 0;
        acc.value = null;
    }

    @Override
    public ArrayData getValue(Acc acc) {
        if (acc.size == 0) {
            return null;
        }
        if (acc.value == null) {
            BinaryArrayData out = new BinaryArrayData();
            BinaryArrayWriter writer = new BinaryArrayWriter(out, acc.size, 8);
            for (int i = 0; i < acc.size; i++) {
                writer.writeBinary(i, acc.items[i]);  // a STRING element is its UTF-8 bytes, as BINARY's
            }
            writer.complete();
            acc.value = out;
        }
        return acc.value;
    }

    /** The accumulator on the wire and in checkpoints: item count, then each item's length and bytes. */
    public static final class AccSerializer extends TypeSerializerSingleton<Acc> {
        private static final long serialVersionUID = 1L;

        @Override
        public boolean isImmutableType() {
            return false;
        }

        @Override
        public Acc createInstance() {
            return new Acc();
        }

        @Override
        public Acc copy(Acc from) {
            Acc out = new Acc();
            out.items = from.size == 0 ? NONE : Arrays.copyOf(from.items, from.size);
            out.size = from.size;
            out.value = from.value;  // immutable once built
            return out;
        }

        @Override
        public Acc copy(Acc from, Acc reuse) {
            return copy(from);
        }

        @Override
        public int getLength() {
            return -1;
        }

        @Override
        public void serialize(Acc acc, DataOutputView target) throws IOException {
            target.writeInt(acc.size);
            for (int i = 0; i < acc.size; i++) {
                target.writeInt(acc.items[i].length);
                target.write(acc.items[i]);
            }
        }

        @Override
        public Acc deserialize(DataInputView source) throws IOException {
            int n = source.readInt();
            Acc acc = new Acc();
            if (n > 0) {
                acc.items = new byte[n][];
                for (int i = 0; i < n; i++) {
                    byte[] b = new byte[source.readInt()];
                    source.readFully(b);
                    acc.items[i] = b;
                }
                acc.size = n;
            }
            return acc;
        }

        @Override
        public Acc deserialize(Acc reuse, DataInputView source) throws IOException {
            return deserialize(source);
        }

        @Override
        public void copy(DataInputView source, DataOutputView target) throws IOException {
            int n = source.readInt();
            target.writeInt(n);
            for (int i = 0; i < n; i++) {
                int len = source.readInt();
                target.writeInt(len);
                target.write(source, len);
            }
        }

        @Override
        public TypeSerializerSnapshot<Acc> snapshotConfiguration() {
            return new AccSnapshot();
        }
    }

    /** Restores {@link AccSerializer}; it has no configuration. */
    public static final class AccSnapshot extends SimpleTypeSerializerSnapshot<Acc> {
        public AccSnapshot() {
            super(AccSerializer::new);
        }
    }
}
