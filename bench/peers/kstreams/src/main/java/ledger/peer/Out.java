package ledger.peer;

/** What the ledger processors emit; the topology splits it by kind to its sink. */
public sealed interface Out permits Out.Outcome, Out.Op, Out.DeadLetter {
    /** A `ledger-outcomes` value (JSON), keyed by event_id. */
    record Outcome(byte[] json) implements Out {}

    /** A credit or payout for the creator side, keyed by creator_id. */
    record Op(CreatorOp op) implements Out {}

    /** A `dead-letters` value (JSON). */
    record DeadLetter(byte[] json) implements Out {}
}
