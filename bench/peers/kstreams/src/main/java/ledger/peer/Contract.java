package ledger.peer;

import java.util.Map;

/** The wire contract's constants (CONTRACT.md, Economics: the defaults). */
public final class Contract {
    private Contract() {}

    public static final String RECHARGES = "recharges";
    public static final String GIFTS = "gifts";
    public static final String PAYOUTS = "payouts";
    public static final String SPEND_LIMITS = "spend-limits";
    public static final String OUTCOMES = "ledger-outcomes";
    public static final String DEAD_LETTERS = "dead-letters";

    public static final Map<String, Long> CATALOG = Map.of(
            "rose", 1L, "finger_heart", 5L, "perfume", 20L, "confetti", 100L,
            "money_gun", 500L, "galaxy", 1000L, "lion", 29999L, "universe", 44999L);
    public static final long CREATOR_SHARE_PERCENT = 50;
    public static final long USD_MILLICENTS_PER_DIAMOND = 500; // usd_cents = diamonds * 500 // 1000
    public static final long MIN_PAYOUT = 2_000;
    public static final long PLATFORM_DAILY_LIMIT = 200_000;
    public static final long DAY_MS = 86_400_000L;
    public static final long MAX_AHEAD_MS = 5 * 60_000L;
    public static final long MAX_BEHIND_MS = 7 * DAY_MS; // the duplicate window
    public static final long MAX_TS = 253_402_300_799_999L; // 9999-12-31T23:59:59.999Z
    public static final int MAX_VALUE_BYTES = 1_048_576;
    public static final int DEAD_LETTER_PAYLOAD_BYTES = 64 * 1024;

    /** An event is in time when at most 5 minutes ahead of the clock and at most 7 days behind. */
    public static boolean inTime(long ts, long nowMs) {
        return nowMs - MAX_BEHIND_MS <= ts && ts <= nowMs + MAX_AHEAD_MS;
    }

    /** ^[A-Za-z0-9_.:-]{1,64}$ */
    public static boolean isId(String s) {
        int n = s.length();
        if (n < 1 || n > 64) return false;
        for (int i = 0; i < n; i++) {
            char c = s.charAt(i);
            boolean ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
                    || c == '_' || c == '.' || c == ':' || c == '-';
            if (!ok) return false;
        }
        return true;
    }
}
