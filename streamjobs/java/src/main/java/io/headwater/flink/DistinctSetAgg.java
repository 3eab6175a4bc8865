package io.headwater.flink;

import java.util.Arrays;
import java.util.HashSet;

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
 * <p>The value is returned as Flink's internal {@link ArrayData} and kept in the accumulator until
 * the set changes: a streaming global aggregate asks for it twice per key and mini-batch (before
 * and after merging the batch, to suppress unchanged rows), and sorting the set and converting a
 * {@code String[]} into Flink's binary array each time was over a quarter of the features job's
 * CPU in a profile.
 */
@FunctionHint(
        accumulator = @DataTypeHint(value = "RAW", bridgedTo = DistinctSetAgg.Acc.class),
        output = @DataTypeHint(value = "ARRAY<STRING>", bridgedTo = ArrayData.class))
public final class DistinctSetAgg extends AggregateFunction<ArrayData, DistinctSetAgg.Acc> {
    private static final long serialVersionUID = 1L;

    /** The set so far (Kryo serializes it in checkpoints and exchanges). */
    public static final class Acc {
        public HashSet<String> values = new HashSet<>();
        /** The sorted value of {@code values}; null until asked for or after a change (not serialized). */
        public transient ArrayData sorted;
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    public void accumulate(Acc acc, String value) {
        if (value != null && acc.values.add(value)) {
            acc.sorted = null;
        }
    }

    public void merge(Acc acc, Iterable<Acc> others) {
        for (Acc other : others) {
            if (acc.values.addAll(other.values)) {
                acc.sorted = null;
            }
        }
    }

    public void resetAccumulator(Acc acc) {
        acc.values.clear();
        acc.sorted = null;
    }

    @Override
    public ArrayData getValue(Acc acc) {
        if (acc.values.isEmpty()) {
            return null;
        }
        if (acc.sorted == null) {
            String[] items = acc.values.toArray(new String[0]);
            Arrays.sort(items);
            BinaryArrayData out = new BinaryArrayData();
            BinaryArrayWriter writer = new BinaryArrayWriter(out, items.length, 8);
            for (int i = 0; i < items.length; i++) {
                writer.writeString(i, StringData.fromString(items[i]));
            }
            writer.complete();
            acc.sorted = out;
        }
        return acc.sorted;
    }
}
