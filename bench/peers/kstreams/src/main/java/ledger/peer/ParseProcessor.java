package ledger.peer;

import ledger.peer.Events.Event;
import ledger.peer.Events.Malformed;
import ledger.peer.Events.Parsed;
import org.apache.kafka.common.utils.Utils;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.processor.api.RecordMetadata;

/**
 * Raw input record to {@link Parsed}: the event keyed by its subject (the key it
 * arrived with), or a {@link Malformed} keyed by "topic/partition/offset". Users'
 * topics must be partitioned by the Java client's default partitioner (murmur2 of the
 * key); a record on another partition is malformed ("misrouted").
 */
public final class ParseProcessor implements Processor<byte[], byte[], String, Parsed> {
    private final String inputPrefix;
    private final int partitions;
    private ProcessorContext<String, Parsed> context;

    public ParseProcessor(String inputPrefix, int partitions) {
        this.inputPrefix = inputPrefix;
        this.partitions = partitions;
    }

    @Override
    public void init(ProcessorContext<String, Parsed> context) {
        this.context = context;
    }

    @Override
    public void process(Record<byte[], byte[]> record) {
        RecordMetadata meta = context.recordMetadata().orElseThrow();
        String source = meta.topic();
        String topic = source.startsWith(inputPrefix) ? source.substring(inputPrefix.length()) : source;
        Parsed parsed;
        String key;
        try {
            Event ev = Decode.decode(topic, record.key(), record.value());
            if (!topic.equals(Contract.PAYOUTS)) {
                int want = Utils.toPositive(Utils.murmur2(record.key())) % partitions;
                if (want != meta.partition())
                    throw new Decode.Problem("misrouted: key belongs on partition " + want + " of " + partitions);
            }
            parsed = ev;
            key = ev.subject();
        } catch (Decode.Problem p) {
            parsed = new Malformed(source, meta.partition(), meta.offset(), p.getMessage(), record.value());
            key = source + "/" + meta.partition() + "/" + meta.offset();
        }
        context.forward(record.withKey(key).withValue(parsed));
    }
}
