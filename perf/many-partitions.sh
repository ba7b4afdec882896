#!/usr/bin/env bash
# Issue 11's "10,000 partitions" goals on one broker with default settings (besides
# corelog.max.partitions.per.shard): RSS while and after writing, time to serving again after
# kill -9, clean shutdown and clean restart times.
#
#   bash perf/many-partitions.sh [PARTITIONS] [MESSAGES]      (defaults 10000, 10000000 = 10 GB)
#
# BIN=DIR runs the corelog binaries of DIR (e.g. a copy of an older build) instead of building
# target/release. Each restart also prints the bytes the broker read from storage until it
# served (read_bytes of /proc/PID/io).
#
# Messages are 1 KiB, acks=1, in 256 KiB batches to a random partition each (corelog-perf's
# sticky partitioner), so every partition gets data. The data directory is deleted at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
partitions=${1:-10000}
messages=${2:-10000000}
work=$(mktemp -d /tmp/corelog-partitions.XXXXXX)
port=${PORT:-19877}
cleanup() {
    if [ -n "${sampler:-}" ]; then kill "$sampler" 2>/dev/null || true; fi
    if [ -n "${broker:-}" ]; then kill -9 "$broker" 2>/dev/null || true; wait "$broker" 2>/dev/null || true; fi
    if [ -n "${KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
bin=${BIN:-target/release}
[ -n "${BIN:-}" ] || cargo build --release --bins >/dev/null 2>&1
# corelog listens with SO_REUSEPORT: a broker already on the port would silently share the
# connections (and the measurement) with ours.
if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "something already listens on 127.0.0.1:$port" >&2
    exit 1
fi
per_shard=$(( (partitions + $(nproc) - 1) / $(nproc) ))
per_shard=$(( per_shard > 1000 ? per_shard : 1000 ))

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }
rss_mib() { awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$broker/status"; }
# Starts the broker and prints how long it took until it served: accepted a connection (fresh)
# or acknowledged a produce to the topic (restarts; right after a kill -9 the dead process's
# listening socket can still accept for a moment, its io_uring being torn down after exit).
start() {
    local t0
    t0=$(now)
    "$bin"/corelog serve --listen 127.0.0.1:$port --data-dir "$work/data" \
        --set corelog.max.partitions.per.shard=$per_shard >>"$work/broker.log" 2>&1 &
    broker=$!
    if [ "$1" = fresh ]; then
        until (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; do sleep 0.02; done
    else
        until "$bin"/corelog-perf produce -b 127.0.0.1:$port -t many --count 1 \
            --acks 1 --retries 0 --json 2>/dev/null | grep -q '"msgs":1,'; do
            kill -0 "$broker" || { tail "$work/broker.log"; exit 1; }
            sleep 0.02
        done
    fi
    echo "$1_to_serving_s $(since "$t0")  read_MiB $(awk '/^read_bytes/ { printf "%.1f", $2 / 1048576 }' "/proc/$broker/io")"
}
stop() {
    local t0
    t0=$(now)
    kill "-$1" "$broker"
    wait "$broker" 2>/dev/null || true
    [ "$1" = TERM ] && echo "clean_shutdown_s $(since "$t0")"
    return 0
}

echo "== $partitions partitions, $messages messages of 1 KiB, $(nproc) shards"
start fresh
t0=$(now)
"$bin"/corelog topics --bootstrap-server 127.0.0.1:$port --create --topic many \
    --partitions "$partitions" --replication-factor 1 >/dev/null
echo "create_topic_s $(since "$t0")  rss_MiB $(rss_mib)"
( while kill -0 "$broker" 2>/dev/null; do rss_mib; echo; sleep 1; done ) >"$work/rss" 2>/dev/null &
sampler=$!
"$bin"/corelog-perf produce -b 127.0.0.1:$port -t many --count "$messages" \
    --message-size 1024 --acks 1 --connections 2 --max-in-flight 16 --batch-bytes 262144 \
    --linger-ms 50 --broker-pids "$broker" --json 2>/dev/null | tail -n 1
kill "$sampler"; sampler=
echo "rss_MiB_max_while_writing $(sort -n "$work/rss" | tail -n 1)  rss_MiB_after $(rss_mib)"
echo "data_MiB $(du -sm "$work/data" | cut -f1)"
stop 9
start restart_after_kill9
echo "rss_MiB_after_restart $(rss_mib)"
stop TERM
start clean_restart
