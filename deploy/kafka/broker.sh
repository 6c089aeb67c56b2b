#!/usr/bin/env bash
# Local single-node Apache Kafka 4.x broker (KRaft, broker + controller in one JVM)
# for photoclust development and integration tests. Needs only bash, coreutils,
# java (17+) and mvn; the Kafka jars come from Maven Central via ./pom.xml.
#
#   broker.sh fetch                         resolve the Kafka jars into the cache (once)
#   broker.sh start [--port P] [--data-dir D] [--controller-port C] [--fresh]
#                   [--timeout S] [--config key=value ...]
#                                           start (idempotent); last stdout line = 127.0.0.1:P
#   broker.sh stop   [--port P | --data-dir D]        SIGTERM, SIGKILL after 30 s (idempotent)
#   broker.sh status [--port P | --data-dir D]        exit 0 if running and listening
#   broker.sh wipe   [--port P | --data-dir D]        stop, then delete the data dir
#   broker.sh tool CLASS|ALIAS [ARGS...]              run a Kafka tool on the cached classpath
#   broker.sh log    [--port P | --data-dir D] [-n N] tail the broker log
#   broker.sh classpath                               print the java classpath (fetches first)
#
# Environment:
#   PHOTOCLUST_KAFKA_PORT             default 19092
#   PHOTOCLUST_KAFKA_CONTROLLER_PORT  default PORT+1
#   PHOTOCLUST_KAFKA_DATA             default ${TMPDIR:-/tmp}/photoclust-kafka-$PORT
#   PHOTOCLUST_KAFKA_CACHE            default <this dir>/.cache  (jars in <cache>/libs)
#   PHOTOCLUST_KAFKA_HEAP             default "-Xms256m -Xmx512m"
#   PHOTOCLUST_KAFKA_START_TIMEOUT    default 90 (seconds)
#   PHOTOCLUST_KAFKA_JAVA_OPTS        extra JVM options for the broker
#   PHOTOCLUST_KAFKA_TOOL_JAVA_OPTS   extra JVM options for `tool`
#   JAVA, MVN                         java / mvn executables (default: from PATH)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$SCRIPT_DIR/pom.xml"
LOG4J_CONF="$SCRIPT_DIR/log4j2.properties"
CACHE="${PHOTOCLUST_KAFKA_CACHE:-$SCRIPT_DIR/.cache}"
LIBS="$CACHE/libs"
STAMP="$CACHE/libs.stamp"
JAVA="${JAVA:-java}"
MVN="${MVN:-mvn}"
HOST=127.0.0.1
MARKER=.photoclust-kafka   # file that marks a data dir as ours (wipe refuses otherwise)

die() { echo "broker.sh: error: $*" >&2; exit 1; }
info() { echo "broker.sh: $*" >&2; }

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

# ----------------------------------------------------------------------------- jars

pom_hash() {
  # key the cache on the pom contents (and nothing else)
  sha256sum "$POM" | cut -d' ' -f1
}

libs_ready() {
  [[ -f "$STAMP" && -d "$LIBS" ]] || return 1
  [[ "$(cat "$STAMP")" == "$(pom_hash)" ]] || return 1
  compgen -G "$LIBS/kafka_2.13-*.jar" >/dev/null
}

fetch() {
  libs_ready && return 0
  command -v "$MVN" >/dev/null || die "'$MVN' not found on PATH (needed once to download the Kafka jars)"
  mkdir -p "$CACHE"
  # serialise concurrent fetches (e.g. parallel test workers)
  exec 9>"$CACHE/.fetch.lock"
  if command -v flock >/dev/null; then flock 9; fi
  if libs_ready; then exec 9>&-; return 0; fi

  local hash work log
  hash="$(pom_hash)"
  work="$CACHE/build.$$"
  log="$CACHE/fetch.log"
  rm -rf "$work" && mkdir -p "$work"
  cp "$POM" "$work/pom.xml"     # run Maven outside the source tree (no target/ in git)
  info "resolving Kafka jars with Maven into $LIBS ..."
  if ! (cd "$work" && "$MVN" -q -B -Dstyle.color=never dependency:copy-dependencies \
          -DincludeScope=runtime -DoutputDirectory="$work/libs") >"$log" 2>&1; then
    echo "broker.sh: error: Maven failed to resolve $POM; its output:" >&2
    sed 's/\x1b\[[0-9;]*m//g' "$log" >&2   # strip ANSI colour codes jansi emits even with -B
    rm -rf "$work"
    exit 1
  fi
  compgen -G "$work/libs/kafka_2.13-*.jar" >/dev/null \
    || { cat "$log" >&2; rm -rf "$work"; die "Maven succeeded but no kafka_2.13 jar in $work/libs"; }
  rm -rf "$LIBS"
  mv "$work/libs" "$LIBS"
  rm -rf "$work"
  echo "$hash" >"$STAMP"
  info "cached $(find "$LIBS" -name '*.jar' | wc -l) jars in $LIBS"
  exec 9>&-
}

check_java() {
  command -v "$JAVA" >/dev/null || die "'$JAVA' not found on PATH (Kafka 4.x needs Java 17+)"
}

# ----------------------------------------------------------------------------- options

PORT="${PHOTOCLUST_KAFKA_PORT:-19092}"
CONTROLLER_PORT="${PHOTOCLUST_KAFKA_CONTROLLER_PORT:-}"
DATA_DIR="${PHOTOCLUST_KAFKA_DATA:-}"
TIMEOUT="${PHOTOCLUST_KAFKA_START_TIMEOUT:-90}"
FRESH=0
TAIL_N=100
EXTRA_CONFIG=()

parse_opts() {
  while (($#)); do
    case "$1" in
      --port) [[ $# -ge 2 ]] || die "--port needs a value"; PORT="$2"; shift 2 ;;
      --port=*) PORT="${1#*=}"; shift ;;
      --controller-port) [[ $# -ge 2 ]] || die "--controller-port needs a value"; CONTROLLER_PORT="$2"; shift 2 ;;
      --controller-port=*) CONTROLLER_PORT="${1#*=}"; shift ;;
      --data-dir) [[ $# -ge 2 ]] || die "--data-dir needs a value"; DATA_DIR="$2"; shift 2 ;;
      --data-dir=*) DATA_DIR="${1#*=}"; shift ;;
      --timeout) [[ $# -ge 2 ]] || die "--timeout needs a value"; TIMEOUT="$2"; shift 2 ;;
      --timeout=*) TIMEOUT="${1#*=}"; shift ;;
      --config) [[ $# -ge 2 ]] || die "--config needs key=value"; EXTRA_CONFIG+=("$2"); shift 2 ;;
      --config=*) EXTRA_CONFIG+=("${1#*=}"); shift ;;
      --fresh) FRESH=1; shift ;;
      -n) [[ $# -ge 2 ]] || die "-n needs a value"; TAIL_N="$2"; shift 2 ;;
      -h|--help) usage; exit 0 ;;
      *) die "unknown option '$1' (see $0 --help)" ;;
    esac
  done
  if ! [[ "$PORT" =~ ^[0-9]+$ ]] || ((PORT < 1 || PORT > 65535)); then die "bad port '$PORT'"; fi
  [[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "bad timeout '$TIMEOUT'"
  [[ "$TAIL_N" =~ ^[0-9]+$ ]] || die "bad -n '$TAIL_N'"
  if [[ -z "$DATA_DIR" ]]; then
    DATA_DIR="${TMPDIR:-/tmp}/photoclust-kafka-$PORT"
  fi
  DATA_DIR="$(realpath -m -- "$DATA_DIR")"
  PIDFILE="$DATA_DIR/broker.pid"
  LOGFILE="$DATA_DIR/broker.log"
  OUTFILE="$DATA_DIR/broker.stdout.log"
  PROPS="$DATA_DIR/server.properties"
}

# the port a running broker of DATA_DIR really listens on (it may differ from $PORT
# when stop/status is called with --data-dir only)
effective_port() {
  if [[ -f "$DATA_DIR/broker.port" ]]; then cat "$DATA_DIR/broker.port"; else echo "$PORT"; fi
}

# ----------------------------------------------------------------------------- process helpers

# prints the pid if DATA_DIR's broker process is alive (and really is our kafka.Kafka)
running_pid() {
  [[ -f "$PIDFILE" ]] || return 1
  local pid
  pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if [[ -r "/proc/$pid/cmdline" ]]; then
    # guard against pid reuse: must be kafka.Kafka with our server.properties
    local cmd
    cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    [[ "$cmd" == *kafka.Kafka*"$PROPS"* ]] || return 1
  fi
  echo "$pid"
}

port_open() {  # port_open PORT -> 0 if something accepts TCP connections on 127.0.0.1:PORT
  (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

print_log_tail() {  # print_log_tail [BYTE_OFFSET_OF_THIS_RUN]
  local f first
  ((TAIL_N > 0)) || return 0
  if [[ -f "$LOGFILE" ]]; then
    first="$(tail -c +"$((${1:-0} + 1))" "$LOGFILE" | grep -m1 -A2 -E '^\[[^]]*\] (ERROR|FATAL) ' || true)"
    [[ -n "$first" ]] && printf 'broker.sh: first error in %s:\n%s\n' "$LOGFILE" "$first" >&2
  fi
  for f in "$LOGFILE" "$OUTFILE"; do
    if [[ -s "$f" ]]; then
      echo "----- last ${TAIL_N} lines of $f -----" >&2
      tail -n "$TAIL_N" "$f" >&2
    fi
  done
}

kill_and_wait() {  # kill_and_wait PID GRACE_SECONDS
  local pid="$1" grace="$2" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  info "broker (pid $pid) did not exit within ${grace}s after SIGTERM; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  die "could not kill broker pid $pid"
}

# serialise start/stop/wipe on one data dir (e.g. several test workers calling start);
# the lock file lives next to the data dir so that wiping the dir does not drop it
lock_data_dir() {
  command -v flock >/dev/null || return 0
  mkdir -p "$(dirname "$DATA_DIR")"
  exec 8>"$DATA_DIR.lock"
  flock -w $((TIMEOUT + 60)) 8 || die "timed out waiting for the lock $DATA_DIR.lock"
}

# ----------------------------------------------------------------------------- commands

write_properties() {
  local cport="$1"
  cat >"$PROPS" <<EOF
# Generated by deploy/kafka/broker.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ) -- rewritten on every start.
# Single-node KRaft: this process is both broker and (the only) controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$cport
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$cport
advertised.listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$cport
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT

log.dirs=$DATA_DIR/logs

# single node: every internal topic has replication factor 1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1

# topics / groups
num.partitions=1
auto.create.topics.enable=true
delete.topic.enable=true
group.initial.rebalance.delay.ms=0

# large batches of 32-byte hashes + cluster-state snapshots
message.max.bytes=16777216
replica.fetch.max.bytes=16777216
socket.request.max.bytes=104857600

# small machine (2 cores)
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
background.threads=4
EOF
  if ((${#EXTRA_CONFIG[@]})); then
    echo "" >>"$PROPS"
    echo "# --config overrides" >>"$PROPS"
    local kv
    for kv in "${EXTRA_CONFIG[@]}"; do
      [[ "$kv" == *=* ]] || die "--config expects key=value, got '$kv'"
      echo "$kv" >>"$PROPS"
    done
  fi
}

new_cluster_id() {
  # Kafka Uuid: 16 random bytes, url-safe base64 without padding (22 chars);
  # avoid a leading '-' so the id can never be mistaken for a CLI flag
  local id
  while :; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    [[ "$id" != -* && ${#id} -eq 22 ]] && { echo "$id"; return; }
  done
}

wipe_dir() {
  if [[ -e "$DATA_DIR" ]]; then
    if [[ -f "$DATA_DIR/$MARKER" ]] || [[ -z "$(ls -A "$DATA_DIR" 2>/dev/null)" ]]; then
      rm -rf -- "$DATA_DIR"
      info "deleted $DATA_DIR"
    else
      die "refusing to delete $DATA_DIR: it does not look like a broker.sh data dir (no $MARKER file)"
    fi
  fi
}

cmd_stop() {
  local pid
  if pid="$(running_pid)"; then
    info "stopping broker pid $pid ($DATA_DIR)"
    kill_and_wait "$pid" 30
    info "stopped"
  else
    info "no broker running for $DATA_DIR"
  fi
  rm -f "$PIDFILE"
}

cmd_status() {
  local pid port
  port="$(effective_port)"
  if pid="$(running_pid)"; then
    if port_open "$port"; then
      info "running: pid $pid, data dir $DATA_DIR"
      echo "$HOST:$port"
      return 0
    fi
    info "process $pid is alive but $HOST:$port is not accepting connections (starting or stopping?)"
    echo "$HOST:$port"
    return 1
  fi
  info "not running ($DATA_DIR)"
  echo "$HOST:$port"
  return 1
}

# wait until the broker (pid $1) is up: TCP port open and "Kafka Server started"
# written to the part of the log produced by this run (byte offset $2)
wait_ready() {
  local pid="$1" offset="$2" port="$3" deadline
  deadline=$((SECONDS + TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "broker.sh: error: broker process $pid exited during startup" >&2
      print_log_tail "$offset"
      rm -f "$PIDFILE"
      exit 1
    fi
    if port_open "$port" && [[ -f "$LOGFILE" ]] \
       && tail -c +"$((offset + 1))" "$LOGFILE" | grep -q -e 'Kafka Server started'; then
      return 0
    fi
    sleep 0.2
  done
  echo "broker.sh: error: broker did not become ready on $HOST:$port within ${TIMEOUT}s" >&2
  print_log_tail "$offset"
  info "killing the half-started broker (pid $pid)"
  kill_and_wait "$pid" 10
  rm -f "$PIDFILE"
  exit 1
}

cmd_start() {
  local pid cport
  if ((FRESH)); then
    if pid="$(running_pid)"; then
      info "--fresh: stopping running broker pid $pid"
      kill_and_wait "$pid" 30
    fi
    rm -f "$PIDFILE"
    wipe_dir
  fi

  if pid="$(running_pid)"; then
    local port
    port="$(effective_port)"
    [[ "$port" == "$PORT" ]] || info "note: broker in $DATA_DIR runs on port $port, not $PORT"
    PORT="$port"
    if port_open "$PORT"; then
      info "broker already running (pid $pid, data dir $DATA_DIR)"
      echo "$HOST:$PORT"
      return 0
    fi
    info "broker pid $pid is alive but not listening yet; waiting"
    wait_ready "$pid" 0 "$PORT"
    echo "$HOST:$PORT"
    return 0
  fi
  rm -f "$PIDFILE"

  cport="${CONTROLLER_PORT:-$((PORT + 1))}"
  if ! [[ "$cport" =~ ^[0-9]+$ ]] || ((cport < 1 || cport > 65535 || cport == PORT)); then
    die "bad controller port '$cport' (must differ from the client port $PORT)"
  fi
  port_open "$PORT" && die "port $HOST:$PORT is already in use by another process (not a broker of $DATA_DIR)"
  port_open "$cport" && die "controller port $HOST:$cport is already in use by another process"

  check_java
  fetch

  mkdir -p "$DATA_DIR/logs"
  touch "$DATA_DIR/$MARKER"
  write_properties "$cport"

  local cp="$LIBS/*"
  if [[ ! -f "$DATA_DIR/logs/meta.properties" ]]; then
    local cid out
    cid="$(new_cluster_id)"
    info "formatting storage in $DATA_DIR/logs (cluster id $cid)"
    if ! out="$("$JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
                 -cp "$cp" kafka.tools.StorageTool format \
                 --config "$PROPS" --cluster-id "$cid" --ignore-formatted 2>&1)"; then
      echo "$out" >&2
      die "kafka-storage format failed"
    fi
    echo "$cid" >"$DATA_DIR/cluster.id"
  fi

  echo "$PORT" >"$DATA_DIR/broker.port"
  # broker.log always holds the current run; the previous run's log is kept as broker.log.prev
  [[ -f "$LOGFILE" ]] && mv -f "$LOGFILE" "$LOGFILE.prev"
  [[ -f "$OUTFILE" ]] && mv -f "$OUTFILE" "$OUTFILE.prev"
  local offset=0

  local -a heap extra
  read -r -a heap <<<"${PHOTOCLUST_KAFKA_HEAP:--Xms256m -Xmx512m}"
  read -r -a extra <<<"${PHOTOCLUST_KAFKA_JAVA_OPTS:-}"
  local -a jvm=(
    "${heap[@]}"
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
    -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError
    -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$LOG4J_CONF"
    -Dkafka.logs.dir="$DATA_DIR"
    "${extra[@]}"
  )
  local -a launcher=()
  # own session: Ctrl-C in the caller's terminal / test runner does not kill the broker
  command -v setsid >/dev/null && launcher=(setsid)

  info "starting Kafka broker on $HOST:$PORT (controller $HOST:$cport), data dir $DATA_DIR"
  (
    cd "$DATA_DIR"
    exec 8>&- 9>&-   # do not let the broker inherit (and hold) our lock fds
    exec "${launcher[@]}" "$JAVA" "${jvm[@]}" -cp "$cp" kafka.Kafka "$PROPS"
  ) >>"$OUTFILE" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$PIDFILE"

  wait_ready "$pid" "$offset" "$PORT"
  info "broker ready (pid $pid) after ${SECONDS}s"
  echo "$HOST:$PORT"
}

cmd_wipe() {
  local pid
  if pid="$(running_pid)"; then
    info "stopping broker pid $pid"
    kill_and_wait "$pid" 30
  fi
  rm -f "$PIDFILE"
  wipe_dir
}

cmd_log() {
  [[ -f "$LOGFILE" ]] || die "no log at $LOGFILE"
  tail -n "$TAIL_N" "$LOGFILE"
}

tool_class() {
  case "$1" in
    topics|kafka-topics) echo org.apache.kafka.tools.TopicCommand ;;
    consumer-groups|kafka-consumer-groups) echo org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
    share-groups|kafka-share-groups) echo org.apache.kafka.tools.consumer.group.ShareGroupCommand ;;
    groups|kafka-groups) echo org.apache.kafka.tools.GroupsCommand ;;
    broker-api-versions|api-versions) echo org.apache.kafka.tools.BrokerApiVersionsCommand ;;
    metadata-quorum) echo org.apache.kafka.tools.MetadataQuorumCommand ;;
    get-offsets|get-offset-shell) echo org.apache.kafka.tools.GetOffsetShell ;;
    console-consumer) echo org.apache.kafka.tools.consumer.ConsoleConsumer ;;
    console-producer) echo org.apache.kafka.tools.ConsoleProducer ;;
    producer-perf-test) echo org.apache.kafka.tools.ProducerPerformance ;;
    consumer-perf-test) echo org.apache.kafka.tools.ConsumerPerformance ;;
    delete-records) echo org.apache.kafka.tools.DeleteRecordsCommand ;;
    log-dirs) echo org.apache.kafka.tools.LogDirsCommand ;;
    transactions) echo org.apache.kafka.tools.TransactionsCommand ;;
    configs) echo org.apache.kafka.admin.ConfigCommand ;;
    storage) echo kafka.tools.StorageTool ;;
    *) echo "$1" ;;
  esac
}

cmd_tool() {
  (($#)) || die "usage: broker.sh tool CLASS|ALIAS [ARGS...]   (aliases: topics, consumer-groups, groups, broker-api-versions, metadata-quorum, get-offsets, console-consumer, console-producer, producer-perf-test, consumer-perf-test, delete-records, log-dirs, transactions, configs, storage)"
  check_java
  fetch
  local cls
  cls="$(tool_class "$1")"
  shift
  # short-lived client JVM: fast startup, no log4j2 config => log4j2 default (errors only, to stderr)
  local -a extra
  read -r -a extra <<<"${PHOTOCLUST_KAFKA_TOOL_JAVA_OPTS:-}"
  exec "$JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    "${extra[@]}" -cp "$LIBS/*" "$cls" "$@"
}

main() {
  (($#)) || { usage >&2; exit 2; }
  local cmd="$1"
  shift
  case "$cmd" in
    fetch) check_java; fetch; info "Kafka jars ready in $LIBS" ;;
    classpath) fetch; echo "$LIBS/*" ;;
    start) parse_opts "$@"; lock_data_dir; cmd_start ;;
    stop) parse_opts "$@"; lock_data_dir; cmd_stop ;;
    status) parse_opts "$@"; cmd_status ;;
    wipe) parse_opts "$@"; lock_data_dir; cmd_wipe ;;
    log|logs) parse_opts "$@"; cmd_log ;;
    tool) cmd_tool "$@" ;;
    -h|--help|help) usage ;;
    *) die "unknown command '$cmd' (fetch|start|stop|status|wipe|tool|log|classpath)" ;;
  esac
}

main "$@"
