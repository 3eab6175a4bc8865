package io.headwater.flink;

import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.stream.IntStream;

import org.apache.flink.api.common.serialization.DeserializationSchema;
import org.apache.flink.api.common.serialization.SerializationSchema;
import org.apache.flink.configuration.ConfigOption;
import org.apache.flink.configuration.ConfigOptions;
import org.apache.flink.configuration.ReadableConfig;
import org.apache.flink.formats.avro.AvroFormatFactory;
import org.apache.flink.formats.avro.AvroFormatOptions;
import org.apache.flink.table.connector.ChangelogMode;
import org.apache.flink.table.connector.format.DecodingFormat;
import org.apache.flink.table.connector.format.EncodingFormat;
import org.apache.flink.table.connector.sink.DynamicTableSink;
import org.apache.flink.table.connector.source.DynamicTableSource;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.factories.DeserializationFormatFactory;
import org.apache.flink.table.factories.DynamicTableFactory;
import org.apache.flink.table.factories.SerializationFormatFactory;
import org.apache.flink.table.types.DataType;
import org.apache.flink.table.types.logical.LogicalTypeRoot;
import org.apache.flink.table.types.logical.RowType;
import org.apache.flink.table.connector.Projection;

/**
 * Format {@code headwater-avro}: Flink's Avro row format inside Confluent framing.
 *
 * <p>Every Headwater topic carries a magic byte 0 and a 4-byte big-endian schema id before the
 * Avro body. Flink's own {@code avro-confluent} format needs a live Schema Registry and its
 * client is not on Maven Central, so this format takes the schema id as an option (Headwater's
 * file schema store assigns it) and delegates the Avro body to Flink's {@code avro} format.
 * The table's column order and nullability must match the writer schema, which Headwater's
 * compiler derives from the same {@code .avsc}.
 */
public final class ConfluentAvroFormatFactory
        implements DeserializationFormatFactory, SerializationFormatFactory {

    public static final String IDENTIFIER = "headwater-avro";

    public static final ConfigOption<Integer> SCHEMA_ID =
            ConfigOptions.key("schema-id")
                    .intType()
                    .noDefaultValue()
                    .withDescription(
                            "Schema id written in the header (required to write). On read, when"
                                    + " set, records framed with another id are resolved through"
                                    + " 'schema-store', or skipped without one.");

    public static final ConfigOption<String> SCHEMA_STORE =
            ConfigOptions.key("schema-store")
                    .stringType()
                    .noDefaultValue()
                    .withDescription(
                            "Read only. Where records framed with another schema id than"
                                    + " 'schema-id' find their writer schema, to be resolved to the"
                                    + " table's: an absolute path of Headwater's schema store file or"
                                    + " an http(s) Schema Registry URL. Unset: they are skipped.");

    public static final ConfigOption<Integer> MARK_EVERY =
            ConfigOptions.key("mark-every")
                    .intType()
                    .defaultValue(0)
                    .withDescription(
                            "Read only. When > 0 the table's last physical column is a BIGINT"
                                    + " marker column, 0 on every row; every mark-every-th record"
                                    + " is emitted again right after itself with the reader's id"
                                    + " (random, never 0) there.");

    @Override
    public String factoryIdentifier() {
        return IDENTIFIER;
    }

    @Override
    public Set<ConfigOption<?>> requiredOptions() {
        return new HashSet<>();
    }

    @Override
    public Set<ConfigOption<?>> optionalOptions() {
        Set<ConfigOption<?>> options = new HashSet<>();
        options.add(SCHEMA_ID);
        options.add(MARK_EVERY);
        options.add(SCHEMA_STORE);
        return options;
    }

    @Override
    public DecodingFormat<DeserializationSchema<RowData>> createDecodingFormat(
            DynamicTableFactory.Context context, ReadableConfig formatOptions) {
        final DecodingFormat<DeserializationSchema<RowData>> avro =
                new AvroFormatFactory().createDecodingFormat(context, formatOptions);
        final int expectedId = formatOptions.getOptional(SCHEMA_ID).orElse(-1);
        final int markEvery = formatOptions.get(MARK_EVERY);
        final String store = formatOptions.getOptional(SCHEMA_STORE).orElse(null);
        final boolean legacy = formatOptions.get(AvroFormatOptions.AVRO_TIMESTAMP_LEGACY_MAPPING);
        return new DecodingFormat<DeserializationSchema<RowData>>() {
            @Override
            public DeserializationSchema<RowData> createRuntimeDecoder(
                    DynamicTableSource.Context ctx, DataType physicalDataType) {
                if (markEvery <= 0) {
                    return new FramedDeserializer(
                            avro.createRuntimeDecoder(ctx, physicalDataType), expectedId, 0, null,
                            store, (RowType) physicalDataType.getLogicalType(), legacy);
                }
                List<DataType> fields = physicalDataType.getChildren();
                int n = fields.size();
                if (n < 2 || fields.get(n - 1).getLogicalType().getTypeRoot() != LogicalTypeRoot.BIGINT) {
                    throw new IllegalArgumentException(
                            "format headwater-avro with 'mark-every' needs a last physical BIGINT"
                                    + " column for the marker id: declare it after the Avro fields");
                }
                int[] avroFields = IntStream.range(0, n - 1).toArray();
                DataType avroType = Projection.of(avroFields).project(physicalDataType);
                return new FramedDeserializer(
                        avro.createRuntimeDecoder(ctx, avroType), expectedId, markEvery,
                        ctx.createTypeInformation(physicalDataType), store,
                        (RowType) avroType.getLogicalType(), legacy);
            }

            @Override
            public ChangelogMode getChangelogMode() {
                return ChangelogMode.insertOnly();
            }
        };
    }

    @Override
    public EncodingFormat<SerializationSchema<RowData>> createEncodingFormat(
            DynamicTableFactory.Context context, ReadableConfig formatOptions) {
        final EncodingFormat<SerializationSchema<RowData>> avro =
                new AvroFormatFactory().createEncodingFormat(context, formatOptions);
        final int schemaId =
                formatOptions
                        .getOptional(SCHEMA_ID)
                        .orElseThrow(
                                () ->
                                        new IllegalArgumentException(
                                                "format headwater-avro needs 'schema-id' to write:"
                                                        + " register the schema and pass its id"));
        return new EncodingFormat<SerializationSchema<RowData>>() {
            @Override
            public SerializationSchema<RowData> createRuntimeEncoder(
                    DynamicTableSink.Context ctx, DataType physicalDataType) {
                return new FramedSerializer(
                        avro.createRuntimeEncoder(ctx, physicalDataType),
                        AvroRowEncoder.forType(physicalDataType.getLogicalType()),
                        schemaId);
            }

            @Override
            public ChangelogMode getChangelogMode() {
                return ChangelogMode.insertOnly();
            }
        };
    }
}
