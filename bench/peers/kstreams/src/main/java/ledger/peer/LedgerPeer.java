package ledger.peer;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;
import org.apache.kafka.streams.kstream.Branched;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Named;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.Repartitioned;
import ledger.peer.Events.Malformed;
import ledger.peer.Events.Parsed;
import org.apache.kafka.streams.state.Stores;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The coin and gift ledger's core (CONTRACT.md) as a Kafka Streams application.
 *
 * <pre>
 * recharges, gifts, spend-limits --parse--+-- malformed --> dead-letters
 *                 payouts --------parse---+
 *                                         +-- UserLedger (users, user-events-seen) --> ledger-outcomes
 *                                                 | credits of accepted gifts, payouts
 *                                                 v  repartition by creator_id (creator-ops)
 *                                         CreatorLedger (creators, payouts-seen, reorder buffer) --> ledger-outcomes
 * </pre>
 *
 * Two subtopologies: the first reads partition p of the four input topics in one task,
 * merged by event time; the second reads partition p of the repartition topic.
 */
public final class LedgerPeer {
    private static final Logger log = LoggerFactory.getLogger(LedgerPeer.class);

    record Config(String bootstrap, String inputPrefix, String outputPrefix, String appId, int partitions,
                  String stateDir, long progressEveryMs, long idleMs, long maxHoldMs) {
        static Config fromEnv() {
            return new Config(env("PEER_BOOTSTRAP", "127.0.0.1:9092"), env("PEER_INPUT_PREFIX", ""),
                    env("PEER_OUTPUT_PREFIX", ""), env("PEER_APP_ID", "kstreams-ledger-peer"),
                    Integer.parseInt(env("PEER_PARTITIONS", "4")),
                    env("PEER_STATE_DIR", System.getProperty("java.io.tmpdir") + "/kstreams-ledger-peer"),
                    Long.parseLong(env("PEER_PROGRESS_EVERY_MS", "100")),
                    Long.parseLong(env("PEER_IDLE_MS", "1000")),
                    Long.parseLong(env("PEER_MAX_HOLD_MS", "60000")));
        }

        String in(String name) { return inputPrefix + name; }

        String out(String name) { return outputPrefix + name; }
    }

    private static String env(String name, String fallback) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? fallback : v;
    }

    /** The running client's metrics (the embedded consumer's included), once it exists. */
    static volatile KafkaStreams client;

    static Map<org.apache.kafka.common.MetricName, ? extends org.apache.kafka.common.Metric> clientMetrics() {
        KafkaStreams k = client;
        return k == null ? Map.of() : k.metrics();
    }

    static Topology topology(Config c) {
        StreamsBuilder builder = new StreamsBuilder();
        Consumed<byte[], byte[]> raw = Consumed.with(Serdes.ByteArray(), Serdes.ByteArray())
                .withTimestampExtractor(new EventTimeExtractor());

        Set<String> inputs = Set.of(c.in(Contract.RECHARGES), c.in(Contract.GIFTS), c.in(Contract.SPEND_LIMITS),
                c.in(Contract.PAYOUTS));
        KStream<String, Parsed> userEvents = builder
                .stream(List.of(c.in(Contract.RECHARGES), c.in(Contract.GIFTS), c.in(Contract.SPEND_LIMITS)),
                        raw.withName("user-topics"))
                .process(() -> new ParseProcessor(c.inputPrefix(), c.partitions()), Named.as("parse-user-events"));
        KStream<String, Parsed> payouts = builder
                .stream(c.in(Contract.PAYOUTS), raw.withName("payouts-topic"))
                .process(() -> new ParseProcessor(c.inputPrefix(), c.partitions()), Named.as("parse-payouts"));

        // Malformed records of any input: to dead-letters, no other effect.
        var parsed = userEvents.merge(payouts, Named.as("inputs"))
                .split(Named.as("input-"))
                .branch((k, v) -> v instanceof Malformed, Branched.as("malformed"))
                .defaultBranch(Branched.as("valid"));
        parsed.get("input-malformed")
                .mapValues(v -> {
                    Malformed m = (Malformed) v;
                    return Json.deadLetter(m.sourceTopic(), m.partition(), m.offset(), m.error(), m.payload());
                }, Named.as("dead-letter-json"))
                .to(c.out(Contract.DEAD_LETTERS), Produced.with(Serdes.String(), Serdes.ByteArray()).withName("dead-letters"));

        builder.addStateStore(Stores.keyValueStoreBuilder(
                Stores.persistentKeyValueStore(UserLedger.USERS), Serdes.String(), State.userSerde())
                .withCachingEnabled());
        builder.addStateStore(seenStore(UserLedger.SEEN));
        KStream<String, Out> userOut = parsed.get("input-valid")
                .process(() -> new UserLedger(inputs, LedgerPeer::clientMetrics, c.progressEveryMs(), c.idleMs()), Named.as("user-ledger"),
                        UserLedger.USERS, UserLedger.SEEN);
        sinks(c, userOut, "user");

        builder.addStateStore(Stores.keyValueStoreBuilder(
                Stores.persistentKeyValueStore(CreatorLedger.CREATORS), Serdes.String(), State.creatorSerde())
                .withCachingEnabled());
        builder.addStateStore(seenStore(CreatorLedger.SEEN));
        builder.addStateStore(Stores.keyValueStoreBuilder(
                Stores.persistentKeyValueStore(CreatorLedger.BUFFER), Serdes.Bytes(), Serdes.ByteArray())
                // cached: an op released within the commit interval it came in never reaches RocksDB
                .withCachingEnabled());
        KStream<String, Out> creatorOut = userOut
                .filter((k, v) -> v instanceof Out.Op, Named.as("creator-ops-only"))
                .mapValues(v -> ((Out.Op) v).op(), Named.as("creator-op"))
                .repartition(Repartitioned.<String, CreatorOp>as("creator-ops")
                        .withKeySerde(Serdes.String()).withValueSerde(CreatorOp.serde())
                        .withStreamPartitioner(new CreatorOp.Partitioner())
                        .withNumberOfPartitions(c.partitions()))
                .process(() -> new CreatorLedger(c.partitions(), c.maxHoldMs()), Named.as("creator-ledger"),
                        CreatorLedger.CREATORS, CreatorLedger.SEEN, CreatorLedger.BUFFER);
        sinks(c, creatorOut, "creator");
        return builder.build();
    }

    /** The ids seen within the duplicate window (7 days of event time, kept a day longer). */
    private static org.apache.kafka.streams.state.StoreBuilder<?> seenStore(String name) {
        return Stores.windowStoreBuilder(
                Stores.persistentWindowStore(name, Duration.ofMillis(Contract.MAX_BEHIND_MS + Contract.DAY_MS),
                        Duration.ofMillis(Contract.MAX_BEHIND_MS), false),
                Serdes.String(), Serdes.Long());
    }

    private static void sinks(Config c, KStream<String, Out> out, String side) {
        out.filter((k, v) -> v instanceof Out.Outcome, Named.as(side + "-outcomes-only"))
                .mapValues(v -> ((Out.Outcome) v).json(), Named.as(side + "-outcome-json"))
                .to(c.out(Contract.OUTCOMES), Produced.with(Serdes.String(), Serdes.ByteArray()).withName(side + "-outcomes"));
        if (side.equals("creator")) {
            out.filter((k, v) -> v instanceof Out.DeadLetter, Named.as(side + "-dead-letters-only"))
                    .mapValues(v -> ((Out.DeadLetter) v).json(), Named.as(side + "-dead-letter-json"))
                    .to(c.out(Contract.DEAD_LETTERS),
                            Produced.with(Serdes.String(), Serdes.ByteArray()).withName(side + "-dead-letters"));
        }
    }

    static Properties properties(Config c) {
        Properties p = new Properties();
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, c.appId());
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, c.bootstrap());
        p.put(StreamsConfig.STATE_DIR_CONFIG, c.stateDir());
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
        // commit.interval.ms: the exactly-once default (100 ms) is kept.
        // Wait for data known to be on the broker before choosing the next record by
        // timestamp, but do not idle for data not yet produced (see README.md).
        p.put(StreamsConfig.MAX_TASK_IDLE_MS_CONFIG, 0L);
        // Records cache: flushed at every commit under exactly-once anyway; 64 MiB keeps
        // the hot users' and creators' entries deserialized-free between commits.
        p.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, 64L * 1024 * 1024);
        p.put(StreamsConfig.ROCKSDB_CONFIG_SETTER_CLASS_CONFIG, BoundedMemoryRocksDBConfig.class);
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.MAX_POLL_RECORDS_CONFIG), 2000);
        p.put(StreamsConfig.producerPrefix(ProducerConfig.LINGER_MS_CONFIG), 5);
        p.put(StreamsConfig.producerPrefix(ProducerConfig.BATCH_SIZE_CONFIG), 256 * 1024);
        // Experiments: PEER_STREAMS_CONFIG="commit.interval.ms=1000,producer.linger.ms=20" overrides any of the above.
        for (String kv : env("PEER_STREAMS_CONFIG", "").split(",")) {
            int eq = kv.indexOf('=');
            if (eq > 0) p.put(kv.substring(0, eq).trim(), kv.substring(eq + 1).trim());
        }
        return p;
    }

    /** Creates the output topics if missing (the runner normally has); checks the inputs exist. */
    static void ensureTopics(Config c) throws Exception {
        Properties ap = new Properties();
        ap.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, c.bootstrap());
        try (Admin admin = Admin.create(ap)) {
            Set<String> existing = admin.listTopics().names().get(30, TimeUnit.SECONDS);
            List<String> missingInputs = new ArrayList<>();
            for (String t : List.of(Contract.RECHARGES, Contract.GIFTS, Contract.PAYOUTS, Contract.SPEND_LIMITS))
                if (!existing.contains(c.in(t))) missingInputs.add(c.in(t));
            if (!missingInputs.isEmpty())
                throw new IllegalStateException("input topics missing: " + missingInputs);
            List<NewTopic> create = new ArrayList<>();
            for (String t : List.of(Contract.OUTCOMES, Contract.DEAD_LETTERS))
                if (!existing.contains(c.out(t))) create.add(new NewTopic(c.out(t), c.partitions(), (short) -1));
            if (!create.isEmpty()) {
                try {
                    admin.createTopics(create).all().get(30, TimeUnit.SECONDS);
                    log.info("created {}", create);
                } catch (java.util.concurrent.ExecutionException e) {
                    if (!(e.getCause() instanceof TopicExistsException)) throw e;
                }
            }
            var described = admin.describeTopics(List.of(c.in(Contract.RECHARGES), c.in(Contract.GIFTS),
                    c.in(Contract.PAYOUTS), c.in(Contract.SPEND_LIMITS))).allTopicNames().get(30, TimeUnit.SECONDS);
            for (var d : described.values())
                if (d.partitions().size() != c.partitions())
                    throw new IllegalStateException(d.name() + " has " + d.partitions().size()
                            + " partitions, PEER_PARTITIONS=" + c.partitions());
        }
    }

    public static void main(String[] args) throws Exception {
        Config c = Config.fromEnv();
        ensureTopics(c);
        Topology topology = topology(c);
        log.info("config {}\n{}", c, topology.describe());
        KafkaStreams streams = new KafkaStreams(topology, properties(c));
        client = streams;
        CountDownLatch done = new CountDownLatch(1);
        int[] exit = {0};
        streams.setUncaughtExceptionHandler(e -> {
            log.error("stream thread failed; shutting down", e);
            exit[0] = 1;
            return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        streams.setStateListener((now, before) -> {
            log.info("state {} -> {}", before, now);
            if (now == KafkaStreams.State.NOT_RUNNING || now == KafkaStreams.State.ERROR) done.countDown();
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            log.info("shutting down");
            streams.close(Duration.ofSeconds(30));
            done.countDown();
        }, "shutdown"));
        streams.start();
        done.await();
        streams.close(Duration.ofSeconds(30));
        if (exit[0] != 0) Runtime.getRuntime().halt(exit[0]);
    }
}
