package ledger.peer;

import java.nio.ByteBuffer;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.processor.PunctuationType;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.processor.api.RecordMetadata;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.WindowStore;
import org.apache.kafka.streams.state.WindowStoreIterator;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The creator side: credits of accepted gifts and payout requests of the creators of
 * one partition of the `creator-ops` repartition topic.
 *
 * <p>Every user-side task writes to every creator-ops partition, so one partition holds
 * N interleaved streams, each in its own task's event-time order; Kafka Streams' own
 * timestamp synchronization orders records across partitions, not within one, and so
 * cannot put a payout after the credit of a gift dated before it that another task
 * wrote later. So ops wait in a reorder buffer (a RocksDB store, changelogged like the
 * others, so exactly-once covers it) until every source task has marked progress up to
 * them (its ops and progress marks carry its stream time, non-decreasing); then they are
 * applied in (orderTs, offset) order, i.e. in the event-time order of the N merges.
 *
 * <p>A safety valve: if the buffer has not moved for maxHoldMs (a source task that
 * never marks: a misconfigured partition count), what it holds is applied anyway, with
 * a warning. maxHoldMs = 0 turns the buffer off: ops are applied as they arrive, which
 * is what plain Kafka Streams gives (for comparison).
 */
public final class CreatorLedger implements Processor<String, CreatorOp, String, Out> {
    public static final String CREATORS = "creators";
    public static final String SEEN = "payouts-seen";
    public static final String BUFFER = "creator-ops-reorder-buffer";

    private static final Logger log = LoggerFactory.getLogger(CreatorLedger.class);

    private final int sources;
    private final long maxHoldMs;
    private ProcessorContext<String, Out> context;
    private KeyValueStore<String, State.Creator> creators;
    private WindowStore<String, Long> seen;
    private KeyValueStore<Bytes, byte[]> buffer;
    /** Per source task: the highest orderTs it has written (op or progress mark). In
     *  memory: after a restart, the sources' next marks (every ~100 ms) restore it. */
    private long[] progress;
    private long releasedUpTo = -1;
    private long pending;
    private long lastMoveAt = -1;
    private long late;

    public CreatorLedger(int sources, long maxHoldMs) {
        this.sources = sources;
        this.maxHoldMs = maxHoldMs;
    }

    @Override
    public void init(ProcessorContext<String, Out> context) {
        this.context = context;
        this.creators = context.getStateStore(CREATORS);
        this.seen = context.getStateStore(SEEN);
        this.buffer = context.getStateStore(BUFFER);
        this.progress = new long[sources];
        Arrays.fill(progress, -1);
        try (KeyValueIterator<Bytes, byte[]> it = buffer.all()) {
            while (it.hasNext()) { it.next(); pending++; }
        }
        lastMoveAt = -1; // set by the first punctuation (the context's clock is not running yet)
        context.schedule(Duration.ofSeconds(1), PunctuationType.WALL_CLOCK_TIME, this::checkStuck);
    }

    @Override
    public void process(Record<String, CreatorOp> record) {
        CreatorOp op = record.value();
        RecordMetadata meta = context.recordMetadata().orElseThrow();
        if (op instanceof CreatorOp.Invalid || op.source() >= sources) {
            String error = op instanceof CreatorOp.Invalid bad ? bad.error() : "creator-op from unknown source " + op.source();
            byte[] raw = op instanceof CreatorOp.Invalid bad ? bad.raw() : CreatorOp.encode(op);
            byte[] json = Json.deadLetter(meta.topic(), meta.partition(), meta.offset(), error, raw);
            context.forward(new Record<String, Out>(meta.topic() + "/" + meta.partition() + "/" + meta.offset(),
                    new Out.DeadLetter(json), record.timestamp()));
            return;
        }
        if (!(op instanceof CreatorOp.Progress)) {
            if (maxHoldMs == 0) { // PEER_MAX_HOLD_MS=0: plain Kafka Streams, in arrival order
                apply(op);
                return;
            }
            if (op.orderTs() <= releasedUpTo) { // cannot happen while every source keeps its order
                late++;
                apply(op);
            } else {
                buffer.put(bufferKey(op.orderTs(), meta.offset()), CreatorOp.encode(op));
                pending++;
            }
        }
        if (op.orderTs() > progress[op.source()]) progress[op.source()] = op.orderTs();
        // Released on progress marks only (each source sends one every ~100 ms): one range
        // scan per mark rather than per op.
        if (op instanceof CreatorOp.Progress) {
            long upTo = Long.MAX_VALUE;
            for (long p : progress) upTo = Math.min(upTo, p);
            if (upTo > releasedUpTo) release(upTo);
        }
    }

    /** Applies, in order, every buffered op up to `upTo`. */
    private void release(long upTo) {
        if (pending > 0) {
            List<KeyValue<Bytes, byte[]>> due = new ArrayList<>();
            // Everything buffered lies above releasedUpTo (what is not is applied at once):
            // starting there skips the tombstones of what was released before.
            Bytes from = releasedUpTo < 0 ? null : bufferKey(releasedUpTo + 1, 0);
            try (KeyValueIterator<Bytes, byte[]> it = buffer.range(from, bufferKey(upTo, Long.MAX_VALUE))) {
                while (it.hasNext()) due.add(it.next());
            }
            for (KeyValue<Bytes, byte[]> kv : due) {
                buffer.delete(kv.key);
                apply(CreatorOp.decode(kv.value));
            }
            pending -= due.size();
        }
        releasedUpTo = upTo;
        lastMoveAt = context.currentSystemTimeMs();
    }

    private void checkStuck(long now) {
        if (pending == 0 || lastMoveAt < 0) {
            lastMoveAt = now;
        } else if (now - lastMoveAt >= maxHoldMs) {
            log.warn("creator ops held {} ms waiting for progress of the user-side tasks {} (no progress marks?): "
                    + "applying the {} buffered now", now - lastMoveAt, Arrays.toString(progress), pending);
            long upTo = releasedUpTo;
            for (long p : progress) upTo = Math.max(upTo, p); // every buffered op's source got this far
            release(upTo);
        }
        if (late > 0) {
            log.warn("{} creator ops came after their place and were applied out of order", late);
            late = 0;
        }
    }

    private void apply(CreatorOp op) {
        if (op instanceof CreatorOp.Credit c) {
            State.Creator s = creator(c.creatorId());
            s.available += c.diamonds();
            s.lifetime += c.diamonds();
            creators.put(c.creatorId(), s);
        } else if (op instanceof CreatorOp.Payout p) {
            payout(p);
        }
    }

    private void payout(CreatorOp.Payout p) {
        State.Creator s = creator(p.creatorId());
        String status = "accepted", reason = null;
        Long usd = null;
        if (!Contract.inTime(p.ts(), context.currentSystemTimeMs())) {
            status = "rejected";
            reason = "invalid_ts";
        } else {
            String key = p.creatorId() + "|" + p.eventId();
            boolean duplicate;
            try (WindowStoreIterator<Long> it = seen.fetch(key, Math.max(0, p.ts() - Contract.MAX_BEHIND_MS),
                    p.ts() + Contract.MAX_BEHIND_MS)) {
                duplicate = it.hasNext();
            }
            if (duplicate) {
                status = "duplicate";
            } else {
                seen.put(key, p.ts(), p.ts());
                if (p.diamonds() < Contract.MIN_PAYOUT) reason = "below_min_payout";
                else if (p.diamonds() > s.available) reason = "insufficient_diamonds";
                if (reason != null) {
                    status = "rejected";
                } else {
                    s.available -= p.diamonds();
                    s.paidOut += p.diamonds();
                    usd = p.diamonds() * Contract.USD_MILLICENTS_PER_DIAMOND / 1000;
                    creators.put(p.creatorId(), s);
                }
            }
        }
        byte[] json = Json.outcome(p.eventId(), "payout", status, reason, p.creatorId(), null, p.diamonds(), usd,
                s.available, p.ts());
        context.forward(new Record<String, Out>(p.eventId(), new Out.Outcome(json), p.ts()));
    }

    private State.Creator creator(String id) {
        State.Creator s = creators.get(id);
        return s == null ? new State.Creator() : s;
    }

    private static Bytes bufferKey(long orderTs, long offset) {
        return Bytes.wrap(ByteBuffer.allocate(16).putLong(orderTs).putLong(offset).array());
    }
}
