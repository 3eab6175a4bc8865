package io.headwater.flink;

import java.nio.charset.StandardCharsets;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.data.StringData;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * {@code HW_LAST_KEY(event_time, partition, offset, value)}: the {@code last} IR field's composite
 * key, exactly the string of {@code streamjobs.ir.last_key_sql}'s standard spelling
 * ({@code LPAD(CAST(event_time AS STRING), 13, '0') || LPAD(..., 5, '0') || LPAD(..., 19, '0') ||
 * value}; NULL when any part is NULL), built as UTF-8 bytes in one array.
 *
 * <p>Why: every tile query recomputes its projections after the fan-out (Flink merges the shared
 * view into each query's Calc), and the SQL spelling goes through three Java strings, three
 * {@code LPAD}s and a concatenation, then a UTF-8 encoding when the aggregate copies the result.
 * {@code tests/test_flink_udfs.py} checks both spellings give the same string in Flink, edge
 * cases included (negative and over-wide numbers, which {@code LPAD} truncates on the right).
 */
public final class LastKey extends ScalarFunction {
    private static final long serialVersionUID = 1L;

    private static final long[] POW10 = new long[19];

    static {
        POW10[0] = 1;
        for (int i = 1; i < POW10.length; i++) {
            POW10[i] = POW10[i - 1] * 10;
        }
    }

    public @DataTypeHint(value = "STRING", bridgedTo = StringData.class) StringData eval(
            Long eventTime, Integer partition, Long offset,
            @DataTypeHint(value = "STRING", bridgedTo = StringData.class) StringData value) {
        if (eventTime == null || partition == null || offset == null || value == null) {
            return null;
        }
        byte[] v = value.toBytes();
        byte[] out = new byte[13 + 5 + 19 + v.length];
        pad(out, 0, 13, eventTime);
        pad(out, 13, 5, partition);
        pad(out, 18, 19, offset);
        System.arraycopy(v, 0, out, 37, v.length);
        return StringData.fromBytes(out);
    }

    /** {@code LPAD(CAST(x AS STRING), width, '0')} into {@code out[at, at + width)}. */
    static void pad(byte[] out, int at, int width, long x) {
        if (x >= 0 && (width >= 19 || x < POW10[width])) {
            for (int i = at + width - 1; i >= at; i--) {
                out[i] = (byte) ('0' + (x % 10));
                x /= 10;
            }
            return;
        }
        // negative or wider than `width`: LPAD keeps the leftmost `width` characters, or pads "-..."
        byte[] s = Long.toString(x).getBytes(StandardCharsets.US_ASCII);
        if (s.length >= width) {
            System.arraycopy(s, 0, out, at, width);
        } else {
            int pad = width - s.length;
            for (int i = 0; i < pad; i++) {
                out[at + i] = '0';
            }
            System.arraycopy(s, 0, out, at + pad, s.length);
        }
    }
}
