package ledger.peer;

import java.nio.ByteBuffer;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;

/** The values of the ledger's RocksDB stores, with compact binary serdes. */
public final class State {
    private State() {}

    /** Days of spend kept per user: the day of the newest gift and the 7 before it (the duplicate window). */
    static final int DAYS_KEPT = 8;

    /** A user: coin balance, own daily limit (-1: none), coins spent per recent UTC day. */
    public static final class User {
        public long coins;
        public long dailyLimit = -1;
        public long[] days = new long[0]; // day numbers, ascending
        public long[] spent = new long[0]; // coins spent on accepted gifts on that day

        long spentOn(long day) {
            for (int i = 0; i < days.length; i++) if (days[i] == day) return spent[i];
            return 0;
        }

        void addSpend(long day, long coins) {
            for (int i = 0; i < days.length; i++) {
                if (days[i] == day) { spent[i] += coins; return; }
            }
            long newest = days.length == 0 ? day : Math.max(day, days[days.length - 1]);
            int keep = 0;
            for (long d : days) if (d > newest - DAYS_KEPT) keep++;
            long[] nd = new long[keep + 1], ns = new long[keep + 1];
            int j = 0;
            boolean placed = false;
            for (int i = 0; i < days.length; i++) {
                if (days[i] <= newest - DAYS_KEPT) continue;
                if (!placed && day < days[i]) { nd[j] = day; ns[j++] = coins; placed = true; }
                nd[j] = days[i]; ns[j++] = spent[i];
            }
            if (!placed) { nd[j] = day; ns[j] = coins; }
            days = nd;
            spent = ns;
        }

        byte[] encode() {
            ByteBuffer b = ByteBuffer.allocate(8 + 8 + 4 + days.length * 16);
            b.putLong(coins).putLong(dailyLimit).putInt(days.length);
            for (int i = 0; i < days.length; i++) b.putLong(days[i]).putLong(spent[i]);
            return b.array();
        }

        static User decode(byte[] raw) {
            ByteBuffer b = ByteBuffer.wrap(raw);
            User u = new User();
            u.coins = b.getLong();
            u.dailyLimit = b.getLong();
            int n = b.getInt();
            if (n < 0 || n > DAYS_KEPT + 1) throw new IllegalStateException("corrupt user state");
            u.days = new long[n];
            u.spent = new long[n];
            for (int i = 0; i < n; i++) { u.days[i] = b.getLong(); u.spent[i] = b.getLong(); }
            return u;
        }
    }

    /** A creator: available diamonds, lifetime credited, paid out. */
    public static final class Creator {
        public long available;
        public long lifetime;
        public long paidOut;

        byte[] encode() {
            return ByteBuffer.allocate(24).putLong(available).putLong(lifetime).putLong(paidOut).array();
        }

        static Creator decode(byte[] raw) {
            ByteBuffer b = ByteBuffer.wrap(raw);
            Creator c = new Creator();
            c.available = b.getLong();
            c.lifetime = b.getLong();
            c.paidOut = b.getLong();
            return c;
        }
    }

    public static Serde<User> userSerde() {
        Serializer<User> ser = (t, u) -> u == null ? null : u.encode();
        Deserializer<User> de = (t, raw) -> raw == null ? null : User.decode(raw);
        return Serdes.serdeFrom(ser, de);
    }

    public static Serde<Creator> creatorSerde() {
        Serializer<Creator> ser = (t, c) -> c == null ? null : c.encode();
        Deserializer<Creator> de = (t, raw) -> raw == null ? null : Creator.decode(raw);
        return Serdes.serdeFrom(ser, de);
    }
}
