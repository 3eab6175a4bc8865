package io.headwater.flink;

import java.util.Arrays;
import java.util.HashSet;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
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
 */
@FunctionHint(
        accumulator = @DataTypeHint(value = "RAW", bridgedTo = DistinctSetAgg.Acc.class),
        output = @DataTypeHint("ARRAY<STRING>"))
public final class DistinctSetAgg extends AggregateFunction<String[], DistinctSetAgg.Acc> {
    private static final long serialVersionUID = 1L;

    /** The set so far (Kryo serializes it in checkpoints and exchanges). */
    public static final class Acc {
        public HashSet<String> values = new HashSet<>();
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    public void accumulate(Acc acc, String value) {
        if (value != null) {
            acc.values.add(value);
        }
    }

    public void merge(Acc acc, Iterable<Acc> others) {
        for (Acc other : others) {
            acc.values.addAll(other.values);
        }
    }

    public void resetAccumulator(Acc acc) {
        acc.values.clear();
    }

    @Override
    public String[] getValue(Acc acc) {
        if (acc.values.isEmpty()) {
            return null;
        }
        String[] out = acc.values.toArray(new String[0]);
        Arrays.sort(out);
        return out;
    }
}
