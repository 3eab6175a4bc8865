package io.headwater.flink;

import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.BasicFileAttributes;
import java.time.Duration;
import java.util.HashMap;
import java.util.Map;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.avro.Schema;

/**
 * Writer schemas by id, from Headwater's schema store: its JSON file or a Schema Registry.
 *
 * <p>Producers move to a new schema version while the job runs, and a replay reads records
 * written under every version the topic ever saw, so the job must find schemas registered after
 * it started: an id it does not know makes it look again (re-read the file if it changed, ask
 * the registry), at most once per {@link #RETRY_MS} per id, so a stream of records under an id
 * nobody registered costs a map lookup each. Ids are never reused, so a schema once found is
 * kept for good. Describes itself by {@link #location()} in log lines.
 *
 * <p>{@code location} is an absolute file path (the file store, {@code schema_registry.json})
 * or an {@code http(s)://} Schema Registry URL ({@code GET /schemas/ids/<id>}).
 */
final class WriterSchemas {
    static final long RETRY_MS = 1_000;

    private final String location;
    private final ObjectMapper json = new ObjectMapper();
    private final Map<Integer, Schema> found = new HashMap<>();
    private final Map<Integer, Long> missingUntil = new HashMap<>();
    private JsonNode fileSchemas;
    private String fileStamp;
    private HttpClient http;

    WriterSchemas(String location) {
        this.location = location;
    }

    /**
     * The schema registered under {@code id}, or null when there is none (yet). Throws when the
     * store cannot answer (file unreadable or corrupt, registry down): an outage is not bad data,
     * so the job fails and restarts from its checkpoint instead of skipping good records.
     */
    Schema get(int id) throws IOException {
        Schema s = found.get(id);
        if (s != null) {
            return s;
        }
        long now = System.currentTimeMillis();
        Long until = missingUntil.get(id);
        if (until != null && now < until) {
            return null;
        }
        String text = isRegistry() ? fromRegistry(id) : fromFile(id);
        if (text == null) {
            missingUntil.put(id, now + RETRY_MS);
            return null;
        }
        s = new Schema.Parser().parse(text);
        found.put(id, s);
        missingUntil.remove(id);
        return s;
    }

    String location() {
        return location;
    }

    private boolean isRegistry() {
        return location.startsWith("http://") || location.startsWith("https://");
    }

    private String fromFile(int id) throws IOException {
        Path path = Path.of(location);
        BasicFileAttributes attrs = Files.readAttributes(path, BasicFileAttributes.class);
        String stamp = attrs.lastModifiedTime().toMillis() + ":" + attrs.size() + ":" + attrs.fileKey();
        if (fileSchemas == null || !stamp.equals(fileStamp)) {
            JsonNode schemas = json.readTree(path.toFile()).get("schemas");
            if (schemas == null || !schemas.isObject()) {
                throw new IOException(location + " has no \"schemas\" object: not a Headwater schema store");
            }
            fileSchemas = schemas;
            fileStamp = stamp;
        }
        JsonNode s = fileSchemas.get(Integer.toString(id));
        return s == null ? null : json.writeValueAsString(s);
    }

    private String fromRegistry(int id) throws IOException {
        if (http == null) {
            http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();
        }
        String base = location.endsWith("/") ? location.substring(0, location.length() - 1) : location;
        HttpRequest req = HttpRequest.newBuilder(URI.create(base + "/schemas/ids/" + id))
                .timeout(Duration.ofSeconds(10)).GET().build();
        HttpResponse<String> resp;
        try {
            resp = http.send(req, HttpResponse.BodyHandlers.ofString());
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IOException("interrupted asking " + base + " for schema id " + id, e);
        }
        if (resp.statusCode() == 404) {
            return null;
        }
        if (resp.statusCode() != 200) {
            throw new IOException("Schema Registry " + base + " answered HTTP " + resp.statusCode()
                    + " for schema id " + id);
        }
        JsonNode schema = json.readTree(resp.body()).get("schema");
        if (schema == null || !schema.isTextual()) {
            throw new IOException("Schema Registry " + base + " gave no schema for id " + id);
        }
        return schema.asText();
    }
}
