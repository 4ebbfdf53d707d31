#!/usr/bin/env bash
# Build (if the jar is missing) and run the Kafka Streams ledger peer.
#   bench/peers/kstreams/run.sh          build if needed, then run (exec: SIGTERM reaches the JVM)
#   bench/peers/kstreams/run.sh build    build only
# Environment: PEER_BOOTSTRAP, PEER_INPUT_PREFIX, PEER_OUTPUT_PREFIX, PEER_APP_ID,
# PEER_PARTITIONS, PEER_STATE_DIR (see README.md); JAVA_OPTS adds JVM options.
set -euo pipefail
cd "$(dirname "$0")"
JAR=target/kstreams-ledger-peer.jar

build() {
    if ! command -v mvn >/dev/null; then
        echo "run.sh: Maven (mvn) is not installed" >&2; exit 2
    fi
    # Offline first (everything already in ~/.m2), else from Maven Central.
    if ! mvn -q -B -o package -DskipTests >target-build.log 2>&1; then
        if ! mvn -q -B package -DskipTests >target-build.log 2>&1; then
            cat target-build.log >&2
            echo "run.sh: the Maven build failed (log above)" >&2; exit 2
        fi
    fi
    rm -f target-build.log
    [ -f "$JAR" ] || { echo "run.sh: build finished but $JAR is missing" >&2; exit 2; }
}

if [ "${1:-}" = build ]; then build; exit 0; fi
[ -f "$JAR" ] || build
exec java -Xms256m -Xmx1g -XX:+UseG1GC ${JAVA_OPTS:-} -jar "$JAR"
