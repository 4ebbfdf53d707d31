package ledger.peer;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.StreamReadFeature;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.json.JsonMapper;
import java.math.BigInteger;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import ledger.peer.Events.Event;
import ledger.peer.Events.Gift;
import ledger.peer.Events.Payout;
import ledger.peer.Events.Recharge;
import ledger.peer.Events.SpendLimit;

/**
 * Validation of an input record against the contract (Input topics). Never throws: a
 * problem is returned as a {@link Problem} with a one-line reason.
 */
public final class Decode {
    private Decode() {}

    /** Strict JSON: a repeated field name (at any depth) or trailing content is an error. */
    static final ObjectMapper STRICT = JsonMapper.builder(JsonFactory.builder()
                    .enable(StreamReadFeature.STRICT_DUPLICATE_DETECTION).build())
            .enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS)
            .build();

    static final class Problem extends Exception {
        Problem(String message) { super(message, null, false, false); }
    }

    /** `topic`: the contract name (no prefix). */
    public static Event decode(String topic, byte[] key, byte[] value) throws Problem {
        if (value == null || value.length == 0) throw new Problem("empty value");
        if (value.length > Contract.MAX_VALUE_BYTES)
            throw new Problem("value of " + value.length + " bytes exceeds " + Contract.MAX_VALUE_BYTES);
        JsonNode root;
        try {
            root = STRICT.readTree(value);
        } catch (Exception e) {
            throw new Problem("not JSON: " + oneLine(e.getMessage()));
        }
        if (root == null || !root.isObject()) throw new Problem("value must be a JSON object");
        Event ev;
        String keyField;
        switch (topic) {
            case Contract.RECHARGES -> {
                keyField = "user_id";
                ev = new Recharge(id(root, "event_id"), id(root, "user_id"), integer(root, "coins", 1, 1_000_000L),
                        ts(root));
                integer(root, "amount_cents", 0, null);
                currency(root);
            }
            case Contract.GIFTS -> {
                keyField = "sender_id";
                String eventId = id(root, "event_id");
                String sender = id(root, "sender_id");
                String creator = id(root, "creator_id");
                String stream = id(root, "stream_id");
                JsonNode gift = field(root, "gift_id");
                if (!gift.isTextual()) throw new Problem("gift_id must be a string");
                long quantity = integer(root, "quantity", 1, 10_000L);
                ev = new Gift(eventId, sender, creator, stream, gift.textValue(), quantity, ts(root));
            }
            case Contract.PAYOUTS -> {
                keyField = "creator_id";
                ev = new Payout(id(root, "event_id"), id(root, "creator_id"),
                        integer(root, "diamonds", 1, 1_000_000_000_000L), ts(root));
            }
            case Contract.SPEND_LIMITS -> {
                keyField = "user_id";
                String eventId = id(root, "event_id");
                String user = id(root, "user_id");
                long ts = ts(root);
                boolean hasDaily = root.has("daily_coin_limit");
                Long daily = hasDaily ? nullableInteger(root, "daily_coin_limit") : null;
                if (root.has("monthly_coin_limit")) nullableInteger(root, "monthly_coin_limit"); // validated, not applied
                if (!hasDaily && !root.has("monthly_coin_limit"))
                    throw new Problem("missing field daily_coin_limit or monthly_coin_limit");
                ev = new SpendLimit(eventId, user, hasDaily, daily, ts);
            }
            default -> throw new Problem("unknown topic " + topic);
        }
        if (key == null) throw new Problem("message key is missing; it must equal " + keyField);
        String keyText;
        try {
            keyText = StandardCharsets.UTF_8.newDecoder()
                    .onMalformedInput(CodingErrorAction.REPORT).onUnmappableCharacter(CodingErrorAction.REPORT)
                    .decode(ByteBuffer.wrap(key)).toString();
        } catch (CharacterCodingException e) {
            throw new Problem("message key is not UTF-8; it must equal " + keyField);
        }
        if (!keyText.equals(ev.subject()))
            throw new Problem("message key " + quote(keyText) + " does not equal " + keyField);
        return ev;
    }

    private static JsonNode field(JsonNode root, String name) throws Problem {
        JsonNode v = root.get(name);
        if (v == null) throw new Problem("missing field " + name);
        return v;
    }

    private static String id(JsonNode root, String name) throws Problem {
        JsonNode v = field(root, name);
        if (!v.isTextual() || !Contract.isId(v.textValue()))
            throw new Problem(name + " must be a string matching ^[A-Za-z0-9_.:-]{1,64}$");
        return v.textValue();
    }

    private static void currency(JsonNode root) throws Problem {
        JsonNode v = field(root, "currency");
        String s = v.isTextual() ? v.textValue() : null;
        boolean ok = s != null && s.length() == 3;
        for (int i = 0; ok && i < 3; i++) {
            char c = s.charAt(i);
            ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
        }
        if (!ok) throw new Problem("currency must be 3 letters");
    }

    private static long ts(JsonNode root) throws Problem {
        return integer(root, "ts", 0, Contract.MAX_TS);
    }

    private static Long nullableInteger(JsonNode root, String name) throws Problem {
        JsonNode v = field(root, name);
        if (v.isNull()) return null;
        return check(v, name, 0, 1_000_000_000L);
    }

    private static long integer(JsonNode root, String name, long lo, Long hi) throws Problem {
        return check(field(root, name), name, lo, hi);
    }

    /** An integer (JSON number without fraction or exponent) in [lo, hi]. */
    private static long check(JsonNode v, String name, long lo, Long hi) throws Problem {
        if (!v.isIntegralNumber()) throw new Problem(name + " must be an integer");
        BigInteger b = v.bigIntegerValue();
        if (b.compareTo(BigInteger.valueOf(lo)) < 0 || (hi != null && b.compareTo(BigInteger.valueOf(hi)) > 0))
            throw new Problem(hi != null ? name + " must be from " + lo + " to " + hi : name + " must be at least " + lo);
        return b.bitLength() < 64 ? b.longValue() : Long.MAX_VALUE; // only amount_cents is unbounded, and unused
    }

    private static String quote(String s) {
        return "'" + (s.length() > 80 ? s.substring(0, 80) : s) + "'";
    }

    static String oneLine(String s) {
        if (s == null) return "";
        s = s.replace('\n', ' ').replace('\r', ' ');
        return s.length() > 300 ? s.substring(0, 300) : s;
    }
}
