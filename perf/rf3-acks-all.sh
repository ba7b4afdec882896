#!/usr/bin/env bash
# usage: perf/rf3-acks-all.sh BIN_DIR LABEL RATE [corelog-perf produce args...]
# 3 brokers of BIN_DIR/corelog (`dev-cluster`, 1 shard each, min.insync.replicas=2) on a fresh
# data dir; after 5 s idle, `corelog-perf produce` (BIN_DIR's) at RATE messages/s of 1 KiB
# (0: as fast as it goes, 2 connections x 16 in flight, 256 KiB batches) with acks=all into a
# new 6-partition RF 3 topic for DUR seconds (default 10), the brokers' CPU-seconds included.
# WARM=S first produces S seconds at 1,000 msg/s on the same topic and reports it apart, so the
# measured run starts with the followers fetching (not in the first leader-election backoff).
# Then prints each broker's fdatasyncs per acknowledged batch (its "storage counters" line).
set -uo pipefail
bindir=$1; label=$2; rate=$3; shift 3
work=$(mktemp -d /tmp/corelog-rf3.XXXX)
base=$((19600 + (RANDOM % 20) * 5))
bootstrap=127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))
"$bindir/corelog" dev-cluster --brokers 3 --base-port $base --data-dir "$work/data" \
    --set min.insync.replicas=2 >"$work/dev.log" 2>&1 & dc=$!
trap 'kill -INT $dc 2>/dev/null; wait $dc 2>/dev/null; rm -rf "$work"' EXIT
for p in 0 1 2; do
    for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$((base + p))) 2>/dev/null && break; sleep 0.1; done
done
sleep 5
pids=$(pgrep -P $dc | paste -sd,)
produce() { "$bindir/corelog-perf" produce -b "$bootstrap" -t rf3 --create-partitions 6 \
    --replication-factor 3 --message-size 1024 --acks -1 "$@"; }
if [ -n "${WARM:-}" ]; then
    produce --duration-secs "$WARM" --rate 1000 2>&1 | grep -E "^latency" | sed "s/^/$label warm-up: /"
fi
if [ "$rate" != 0 ]; then load=(--rate "$rate"); else load=(--connections 2 --max-in-flight 16 --batch-bytes 262144); fi
produce --duration-secs "${DUR:-10}" "${load[@]}" --broker-pids "$pids" "$@" 2>&1 \
    | grep -E -A3 "^(throughput|latency|broker cpu|errors)" | grep -v "^--" | sed "s/^/$label rate=$rate: /"
kill -INT $dc 2>/dev/null; wait $dc 2>/dev/null
for i in 1 2 3; do
    grep -h "storage counters" "$work/data/broker-$i.log" | tail -1 | grep -o "fdatasyncs=.*" | sed "s/^/$label broker $i: /"
done
