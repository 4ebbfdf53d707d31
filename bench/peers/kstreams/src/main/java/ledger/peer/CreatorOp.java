package ledger.peer;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.Optional;
import java.util.Set;
import java.util.stream.Collectors;
import java.util.stream.IntStream;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;
import org.apache.kafka.common.utils.Utils;
import org.apache.kafka.streams.processor.StreamPartitioner;

/**
 * The creator side's input, on the internal repartition topic `creator-ops`: the credit
 * of an accepted gift or a payout request (keyed by creator_id), or a progress mark of
 * a user-side task (sent to every partition).
 *
 * <p>`source` is the user-side task (its partition) that wrote the op; `orderTs` its
 * stream time then, i.e. the op's place in that task's event-time merge of its input
 * partitions. Each source's ops and marks come in non-decreasing orderTs.
 *
 * <p>The deserializer never throws: an undecodable record becomes {@link Invalid} and is
 * dead-lettered, like any untrusted input.
 */
public sealed interface CreatorOp permits CreatorOp.Credit, CreatorOp.Payout, CreatorOp.Progress, CreatorOp.Invalid {
    int source();

    long orderTs();

    record Credit(String eventId, String creatorId, long diamonds, long ts, int source, long orderTs) implements CreatorOp {}

    record Payout(String eventId, String creatorId, long diamonds, long ts, int source, long orderTs) implements CreatorOp {}

    /** Source `source` has written every op up to event time `orderTs`. */
    record Progress(int source, long orderTs) implements CreatorOp {}

    record Invalid(byte[] raw, String error) implements CreatorOp {
        public int source() { return -1; }

        public long orderTs() { return -1; }
    }

    /** The key of progress marks (their partitioner sends them to every partition). */
    String PROGRESS_KEY = "#progress";
    byte VERSION = 1;

    static byte[] encode(CreatorOp op) {
        try {
            ByteArrayOutputStream bytes = new ByteArrayOutputStream(64);
            DataOutputStream out = new DataOutputStream(bytes);
            out.writeByte(VERSION);
            if (op instanceof Credit c) {
                out.writeByte('C');
                out.writeUTF(c.eventId()); out.writeUTF(c.creatorId());
                out.writeLong(c.diamonds()); out.writeLong(c.ts());
            } else if (op instanceof Payout p) {
                out.writeByte('P');
                out.writeUTF(p.eventId()); out.writeUTF(p.creatorId());
                out.writeLong(p.diamonds()); out.writeLong(p.ts());
            } else if (op instanceof Progress) {
                out.writeByte('M');
            } else {
                throw new IllegalArgumentException("an invalid op is never written");
            }
            out.writeInt(op.source());
            out.writeLong(op.orderTs());
            return bytes.toByteArray();
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
    }

    static CreatorOp decode(byte[] raw) {
        if (raw == null) return new Invalid(null, "empty value");
        try {
            DataInputStream in = new DataInputStream(new ByteArrayInputStream(raw));
            if (in.readByte() != VERSION) return new Invalid(raw, "unknown creator-op version");
            byte kind = in.readByte();
            CreatorOp op;
            if (kind == 'C' || kind == 'P') {
                String eventId = in.readUTF(), creatorId = in.readUTF();
                long diamonds = in.readLong(), ts = in.readLong();
                int source = in.readInt();
                long orderTs = in.readLong();
                if (!Contract.isId(eventId) || !Contract.isId(creatorId) || ts < 0 || ts > Contract.MAX_TS)
                    return new Invalid(raw, "creator-op breaks an invariant");
                if (kind == 'C' && diamonds < 0) return new Invalid(raw, "credit of negative diamonds");
                if (kind == 'P' && (diamonds < 1 || diamonds > 1_000_000_000_000L)) return new Invalid(raw, "payout out of range");
                op = kind == 'C' ? new Credit(eventId, creatorId, diamonds, ts, source, orderTs)
                        : new Payout(eventId, creatorId, diamonds, ts, source, orderTs);
            } else if (kind == 'M') {
                op = new Progress(in.readInt(), in.readLong());
            } else {
                return new Invalid(raw, "unknown creator-op kind");
            }
            if (in.available() != 0) return new Invalid(raw, "trailing bytes in creator-op");
            if (op.source() < 0 || op.orderTs() < 0) return new Invalid(raw, "creator-op breaks an invariant");
            return op;
        } catch (IOException | RuntimeException e) {
            return new Invalid(raw, "undecodable creator-op: " + e);
        }
    }

    static Serde<CreatorOp> serde() {
        Serializer<CreatorOp> ser = (topic, op) -> op == null ? null : encode(op);
        Deserializer<CreatorOp> de = (topic, raw) -> decode(raw);
        return Serdes.serdeFrom(ser, de);
    }

    /** Ops by creator (murmur2 of the key, as the default partitioner); progress marks to
     *  every partition (a multicast, KIP-837). */
    final class Partitioner implements StreamPartitioner<String, CreatorOp> {
        @Override
        @Deprecated
        public Integer partition(String topic, String key, CreatorOp value, int numPartitions) {
            return Utils.toPositive(Utils.murmur2(key.getBytes(StandardCharsets.UTF_8))) % numPartitions;
        }

        @Override
        @SuppressWarnings("deprecation")
        public Optional<Set<Integer>> partitions(String topic, String key, CreatorOp value, int numPartitions) {
            if (value instanceof Progress)
                return Optional.of(IntStream.range(0, numPartitions).boxed().collect(Collectors.toSet()));
            return Optional.of(Set.of(partition(topic, key, value, numPartitions)));
        }
    }
}
