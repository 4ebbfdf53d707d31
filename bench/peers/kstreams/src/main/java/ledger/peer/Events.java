package ledger.peer;

/**
 * What an input record decodes to: a contract event or a malformed record (an Either,
 * so that a bad record flows through the topology to {@code dead-letters} instead of
 * failing a deserializer). Lives only between processors of one subtopology: never
 * serialized.
 */
public final class Events {
    private Events() {}

    public sealed interface Parsed permits Event, Malformed {}

    public sealed interface Event extends Parsed permits Recharge, Gift, Payout, SpendLimit {
        String eventId();
        String subject();
        long ts();
    }

    public record Recharge(String eventId, String userId, long coins, long ts) implements Event {
        public String subject() { return userId; }
    }

    public record Gift(String eventId, String senderId, String creatorId, String streamId, String giftId,
                       long quantity, long ts) implements Event {
        public String subject() { return senderId; }
    }

    public record Payout(String eventId, String creatorId, long diamonds, long ts) implements Event {
        public String subject() { return creatorId; }
    }

    /** `hasDaily` false: the field was absent (the limit stays as it was); `daily` null: cleared. */
    public record SpendLimit(String eventId, String userId, boolean hasDaily, Long daily, long ts)
            implements Event {
        public String subject() { return userId; }
    }

    public record Malformed(String sourceTopic, int partition, long offset, String error, byte[] payload)
            implements Parsed {}
}
