package ledger.peer;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.streams.processor.TimestampExtractor;

/**
 * Event time from the JSON value's top-level {@code ts} field. A record without a usable
 * one (not JSON, no integer {@code ts}, or a {@code ts} outside the contract's window of
 * 7 days behind to 5 minutes ahead of the clock, which the ledger rejects as invalid_ts
 * anyway) gets its partition's time, as {@code UsePartitionTimeOnInvalidTimestamp}
 * does: it is still processed (dead-lettered or rejected), never dropped, and never
 * drags its partition's place in the event-time merge. Never throws.
 */
public final class EventTimeExtractor implements TimestampExtractor {
    private static final JsonFactory JSON = new JsonFactory();

    @Override
    public long extract(ConsumerRecord<Object, Object> record, long partitionTime) {
        Long ts = tsOf(record.value());
        if (ts != null && Contract.inTime(ts, System.currentTimeMillis())) return ts;
        return Math.max(partitionTime, 0L);
    }

    static Long tsOf(Object value) {
        if (!(value instanceof byte[] bytes) || bytes.length == 0 || bytes.length > Contract.MAX_VALUE_BYTES) return null;
        try (JsonParser p = JSON.createParser(bytes)) {
            if (p.nextToken() != JsonToken.START_OBJECT) return null;
            JsonToken t;
            while ((t = p.nextToken()) == JsonToken.FIELD_NAME) {
                String name = p.currentName();
                JsonToken v = p.nextToken();
                if ("ts".equals(name)) {
                    if (v == JsonToken.VALUE_NUMBER_INT && p.getNumberType() != JsonParser.NumberType.BIG_INTEGER)
                        return p.getLongValue();
                    return null;
                }
                p.skipChildren();
            }
            return null;
        } catch (Exception e) {
            return null;
        }
    }
}
