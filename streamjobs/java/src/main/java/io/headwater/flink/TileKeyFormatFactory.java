package io.headwater.flink;

import java.util.HashSet;
import java.util.Set;

import org.apache.flink.api.common.serialization.SerializationSchema;
import org.apache.flink.configuration.ConfigOption;
import org.apache.flink.configuration.ConfigOptions;
import org.apache.flink.configuration.ReadableConfig;
import org.apache.flink.table.connector.ChangelogMode;
import org.apache.flink.table.connector.format.EncodingFormat;
import org.apache.flink.table.connector.sink.DynamicTableSink;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.factories.DynamicTableFactory;
import org.apache.flink.table.factories.SerializationFormatFactory;
import org.apache.flink.table.types.DataType;

/**
 * Key format {@code headwater-tile-key}: the tiles topic's Kafka key, {@code TileKey(view,
 * entity, resolution_ms, tile_start)} in Confluent-framed Avro, written from a key row that holds
 * only the parts that vary per tile ({@code entity, tile_start}; progress sinks: {@code
 * tile_start}) while view, resolution and, for progress, the entity are options.
 *
 * <p>Why: an upsert sink drops UPDATE_BEFORE only when its primary key is exactly the aggregate's
 * upsert key ({@code GROUP BY entity, tile_start}); with view and resolution in the primary key
 * the compiler had to make them grouping columns through a one-row {@code UNNEST} per event and
 * resolution. The bytes are those of {@code schemas/avro/tile_key.avsc} either way.
 */
public final class TileKeyFormatFactory implements SerializationFormatFactory {

    public static final String IDENTIFIER = "headwater-tile-key";

    public static final ConfigOption<Integer> SCHEMA_ID =
            ConfigOptions.key("schema-id").intType().noDefaultValue()
                    .withDescription("Schema id of TileKey written in the header.");
    public static final ConfigOption<String> VIEW =
            ConfigOptions.key("view").stringType().noDefaultValue().withDescription("Feature view name.");
    public static final ConfigOption<Long> RESOLUTION_MS =
            ConfigOptions.key("resolution-ms").longType().noDefaultValue()
                    .withDescription("Tile size; 0 for progress records.");
    public static final ConfigOption<String> ENTITY =
            ConfigOptions.key("entity").stringType().noDefaultValue()
                    .withDescription("Constant entity (progress records: ''); the key row then holds tile_start only.");

    @Override
    public String factoryIdentifier() {
        return IDENTIFIER;
    }

    @Override
    public Set<ConfigOption<?>> requiredOptions() {
        Set<ConfigOption<?>> options = new HashSet<>();
        options.add(SCHEMA_ID);
        options.add(VIEW);
        options.add(RESOLUTION_MS);
        return options;
    }

    @Override
    public Set<ConfigOption<?>> optionalOptions() {
        Set<ConfigOption<?>> options = new HashSet<>();
        options.add(ENTITY);
        return options;
    }

    @Override
    public EncodingFormat<SerializationSchema<RowData>> createEncodingFormat(
            DynamicTableFactory.Context context, ReadableConfig formatOptions) {
        final int schemaId = formatOptions.get(SCHEMA_ID);
        final String view = formatOptions.get(VIEW);
        final long resolution = formatOptions.get(RESOLUTION_MS);
        final String entity = formatOptions.getOptional(ENTITY).orElse(null);
        return new EncodingFormat<SerializationSchema<RowData>>() {
            @Override
            public SerializationSchema<RowData> createRuntimeEncoder(
                    DynamicTableSink.Context ctx, DataType physicalDataType) {
                return new TileKeySerializer(schemaId, view, resolution, entity);
            }

            @Override
            public ChangelogMode getChangelogMode() {
                return ChangelogMode.insertOnly();
            }
        };
    }
}
