package ledger.peer;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.function.Supplier;
import org.apache.kafka.common.Metric;
import org.apache.kafka.common.MetricName;
import ledger.peer.Events.Event;
import ledger.peer.Events.Gift;
import ledger.peer.Events.Parsed;
import ledger.peer.Events.Payout;
import ledger.peer.Events.Recharge;
import ledger.peer.Events.SpendLimit;
import org.apache.kafka.streams.processor.PunctuationType;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.WindowStore;
import org.apache.kafka.streams.state.WindowStoreIterator;

/**
 * The user side: recharges, gifts and spend limits of the users of one partition, in
 * the order Kafka Streams merges the task's input partitions (by record timestamp,
 * i.e. event time). Emits each event's outcome, the credit of each accepted gift and
 * the payouts (which only pass through here, to be ordered with the credits; see
 * CreatorLedger) for the creator side, each with its place in event time, and progress
 * marks.
 */
public final class UserLedger implements Processor<String, Parsed, String, Out> {
    public static final String USERS = "users";
    public static final String SEEN = "user-events-seen";

    private final long progressEveryMs;
    private final long idleMs;
    private ProcessorContext<String, Out> context;
    private KeyValueStore<String, State.User> users;
    private WindowStore<String, Long> seen;
    private int source;
    /** Floor of this task's orderTs: raised to the clock (less idleMs) while it is idle. */
    private long floor = -1;
    private long lastMark = -1;
    private long lastProcessedAt = -1;
    private long firstPunctuatedAt = -1;

    /** After this long without a record a task counts as idle even if its consumer reports lag. */
    private static final long STUCK_MS = 30_000;
    private final Set<String> inputTopics;
    private final Supplier<Map<MetricName, ? extends Metric>> clientMetrics;
    private final List<Metric> lags = new ArrayList<>();

    /** `progressEveryMs`: how often this task tells every creator-ops partition how far it
     *  has got; `idleMs`: after that long without a record, it counts as caught up. */
    public UserLedger(Set<String> inputTopics, Supplier<Map<MetricName, ? extends Metric>> clientMetrics,
                      long progressEveryMs, long idleMs) {
        this.inputTopics = inputTopics;
        this.clientMetrics = clientMetrics;
        this.progressEveryMs = progressEveryMs;
        this.idleMs = idleMs;
    }

    @Override
    public void init(ProcessorContext<String, Out> context) {
        this.context = context;
        this.users = context.getStateStore(USERS);
        this.seen = context.getStateStore(SEEN);
        this.source = context.taskId().partition();
        context.schedule(Duration.ofMillis(progressEveryMs), PunctuationType.WALL_CLOCK_TIME, this::markProgress);
    }

    /** This event's place in the task's event-time merge: the task's stream time (the
     *  highest record timestamp it has taken, which Kafka Streams takes lowest first). */
    private long orderTs() {
        return Math.max(context.currentStreamTimeMs(), floor);
    }

    /**
     * A progress mark to every creator-ops partition: this task has written every credit
     * and payout up to orderTs. A task that has taken no record for idleMs (caught up, or
     * with nothing to read) vouches for event times up to the clock less idleMs: an
     * event dated before that which it reads later is placed at that time instead.
     */
    private void markProgress(long now) {
        if (firstPunctuatedAt < 0) firstPunctuatedAt = now;
        long quietSince = lastProcessedAt >= 0 ? lastProcessedAt : firstPunctuatedAt;
        if (now - quietSince >= idleMs && (caughtUp() || now - quietSince >= STUCK_MS)) floor = Math.max(floor, now - idleMs);
        long mark = orderTs();
        if (mark <= lastMark) return;
        lastMark = mark;
        context.forward(new Record<String, Out>(CreatorOp.PROGRESS_KEY, new Out.Op(new CreatorOp.Progress(source, mark)), mark));
    }

    /** Whether this task's consumer reports no lag on any of its input partitions (the
     *  consumer's `records-lag` metrics, from its last fetch of each; a processor's own
     *  context has only Kafka Streams' metrics, the client's have the consumer's). */
    private boolean caughtUp() {
        if (lags.size() < inputTopics.size()) {
            lags.clear();
            String partition = Integer.toString(source);
            for (Map.Entry<MetricName, ? extends Metric> e : clientMetrics.get().entrySet()) {
                MetricName n = e.getKey();
                if (n.name().equals("records-lag") && n.group().equals("consumer-fetch-manager-metrics")
                        && partition.equals(n.tags().get("partition")) && inputTopics.contains(n.tags().get("topic")))
                    lags.add(e.getValue());
            }
            if (lags.size() < inputTopics.size()) return false;
        }
        for (Metric m : lags) {
            Object v = m.metricValue();
            if (!(v instanceof Double d) || d.isNaN() || d > 0) return false;
        }
        return true;
    }

    @Override
    public void process(Record<String, Parsed> record) {
        lastProcessedAt = context.currentSystemTimeMs();
        Event ev = (Event) record.value();
        if (ev instanceof Payout p) {
            long orderTs = orderTs();
            context.forward(new Record<String, Out>(p.creatorId(),
                    new Out.Op(new CreatorOp.Payout(p.eventId(), p.creatorId(), p.diamonds(), p.ts(), source, orderTs)), orderTs));
            return;
        }
        String user = ev.subject();
        State.User u = users.get(user);
        if (u == null) u = new State.User();
        String type = ev instanceof Recharge ? "recharge" : ev instanceof Gift ? "gift" : "spend_limit";
        Long coins = null;
        if (ev instanceof Recharge r) coins = r.coins();
        if (ev instanceof Gift g) {
            Long price = Contract.CATALOG.get(g.giftId());
            coins = price == null ? null : price * g.quantity();
        }
        boolean hasBalance = !(ev instanceof SpendLimit);

        if (!Contract.inTime(ev.ts(), context.currentSystemTimeMs())) {
            emit(ev, type, "rejected", "invalid_ts", coins, null, hasBalance ? u.coins : null);
            return;
        }
        String seenKey = dedupKey(ev);
        if (isDuplicate(seenKey, ev.ts())) {
            emit(ev, type, "duplicate", null, coins, null, hasBalance ? u.coins : null);
            return;
        }
        seen.put(seenKey, ev.ts(), ev.ts());

        String status = "accepted", reason = null;
        Long diamonds = null;
        boolean changed = true;
        if (ev instanceof Recharge r) {
            u.coins += r.coins();
        } else if (ev instanceof SpendLimit s) {
            if (s.hasDaily()) u.dailyLimit = s.daily() == null ? -1 : s.daily();
        } else {
            Gift g = (Gift) ev;
            long day = Math.floorDiv(g.ts(), Contract.DAY_MS);
            long limit = u.dailyLimit < 0 ? Contract.PLATFORM_DAILY_LIMIT : Math.min(Contract.PLATFORM_DAILY_LIMIT, u.dailyLimit);
            if (coins == null) reason = "unknown_gift";
            else if (g.senderId().equals(g.creatorId())) reason = "self_gift";
            else if (coins > u.coins) reason = "insufficient_coins";
            else if (u.spentOn(day) + coins > limit) reason = "spend_limit_exceeded";
            if (reason != null) {
                status = "rejected";
                changed = false;
            } else {
                long credited = coins * Contract.CREATOR_SHARE_PERCENT / 100;
                u.coins -= coins;
                u.addSpend(day, coins);
                diamonds = credited;
                long orderTs = orderTs();
                context.forward(new Record<String, Out>(g.creatorId(),
                        new Out.Op(new CreatorOp.Credit(g.eventId(), g.creatorId(), credited, g.ts(), source, orderTs)),
                        orderTs));
            }
        }
        if (changed) users.put(user, u);
        emit(ev, type, status, reason, coins, diamonds, hasBalance ? u.coins : null);
    }

    private void emit(Event ev, String type, String status, String reason, Long coins, Long diamonds, Long balance) {
        byte[] json = Json.outcome(ev.eventId(), type, status, reason, ev.subject(), coins, diamonds, null, balance, ev.ts());
        context.forward(new Record<String, Out>(ev.eventId(), new Out.Outcome(json), ev.ts()));
    }

    private static String dedupKey(Event ev) {
        String topic = ev instanceof Recharge ? Contract.RECHARGES : ev instanceof Gift ? Contract.GIFTS : Contract.SPEND_LIMITS;
        return topic + "|" + ev.subject() + "|" + ev.eventId();
    }

    /** The idiomatic Kafka Streams de-duplication: a window store of the ids seen, looked
     *  up within the duplicate window around the event's time. */
    private boolean isDuplicate(String key, long ts) {
        try (WindowStoreIterator<Long> it = seen.fetch(key, Math.max(0, ts - Contract.MAX_BEHIND_MS),
                ts + Contract.MAX_BEHIND_MS)) {
            return it.hasNext();
        }
    }
}
