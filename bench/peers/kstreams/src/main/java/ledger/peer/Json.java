package ledger.peer;

import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.Arrays;
import java.util.Base64;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.Map;

/** The output records' JSON (CONTRACT.md, Output topics). */
public final class Json {
    private Json() {}

    /**
     * A `ledger-outcomes` value. Ids are validated against ^[A-Za-z0-9_.:-]{1,64}$ and the
     * reasons are fixed words, so nothing needs escaping.
     */
    public static byte[] outcome(String eventId, String type, String status, String reason, String subjectId,
                                 Long coins, Long diamonds, Long usdCents, Long balanceAfter, long ts) {
        StringBuilder b = new StringBuilder(200);
        b.append("{\"event_id\":\"").append(eventId)
                .append("\",\"type\":\"").append(type)
                .append("\",\"status\":\"").append(status)
                .append("\",\"reason\":");
        if (reason == null) b.append("null"); else b.append('"').append(reason).append('"');
        b.append(",\"subject_id\":\"").append(subjectId).append('"');
        b.append(",\"coins\":").append(coins);
        b.append(",\"diamonds\":").append(diamonds);
        b.append(",\"usd_cents\":").append(usdCents);
        b.append(",\"balance_after\":").append(balanceAfter);
        b.append(",\"ts\":").append(ts).append('}');
        return b.toString().getBytes(StandardCharsets.US_ASCII);
    }

    public static byte[] deadLetter(String sourceTopic, int partition, long offset, String error, byte[] payload) {
        byte[] p = payload == null ? new byte[0] : payload;
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("source_topic", sourceTopic);
        m.put("partition", partition);
        m.put("offset", offset);
        m.put("error", error);
        m.put("payload_b64", Base64.getEncoder().encodeToString(
                p.length > Contract.DEAD_LETTER_PAYLOAD_BYTES ? Arrays.copyOf(p, Contract.DEAD_LETTER_PAYLOAD_BYTES) : p));
        m.put("payload_bytes", p.length);
        m.put("payload_sha256", sha256(p));
        try {
            return Decode.STRICT.writeValueAsBytes(m);
        } catch (Exception e) {
            throw new IllegalStateException(e);
        }
    }

    private static String sha256(byte[] p) {
        try {
            return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(p));
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }
}
