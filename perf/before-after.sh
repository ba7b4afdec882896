#!/usr/bin/env bash
# usage: perf/before-after.sh CORELOG_BIN LABEL [serve args...]: one broker (2 shards) on a fresh
# data dir; rdkafka_performance acks=1 (2M x 1 KiB into 6 partitions), corelog-perf produce at
# full rate with acks=1 and acks=-1, then a consume, each with the broker's CPU-seconds per GB.
# Build first: cargo build --release --bins; bash perf/rdkafka-performance.sh --build-only
set -euo pipefail
bin=$1; label=$2; shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
perfbin=$root/target/release/corelog-perf
rdk=$root/target/rdkafka_performance
work=$(mktemp -d /tmp/corelog-before-after.XXXX)
port=$((19700 + RANDOM % 100))
$bin serve --listen 127.0.0.1:$port --data-dir "$work/data" "$@" >"$work/broker.log" 2>&1 & broker=$!
trap 'kill $broker 2>/dev/null; wait $broker 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
cpu() { awk -v tck="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / tck }' "/proc/$broker/stat"; }
$root/target/release/corelog topics --bootstrap-server 127.0.0.1:$port --create --topic r6 --partitions 6 --replication-factor 1 >/dev/null
b=$(cpu); t0=$(date +%s.%N)
out=$($rdk -P -t r6 -b 127.0.0.1:$port -s 1024 -a 1 -c 2000000 -X linger.ms=5 2>&1 | grep -E "messages produced" | tail -1)
a=$(cpu); t1=$(date +%s.%N)
python3 - "$b" "$a" "$t0" "$t1" "$label" "$out" <<'PY'
import sys,re
b,a,t0,t1=map(float,sys.argv[1:5]); label=sys.argv[5]; out=sys.argv[6]
gb=2000000*1024/1e9; cpu=a-b
m=re.search(r'([\d.]+) MB/s',out)
print(f"{label} rdkafka_performance acks=1: {m.group(1) if m else '?'} MB/s (tool), broker {cpu:.2f} CPU-s for {gb:.3f} GB: {gb/cpu:.2f} GB/CPU-s")
PY
for acks in 1 -1; do
  $perfbin produce -b 127.0.0.1:$port -t p6 --create-partitions 6 --message-size 1024 --duration-secs 10 --acks $acks --connections 2 --max-in-flight 16 --batch-bytes 262144 --broker-pids $broker 2>&1 | grep -E "^(throughput|latency|broker cpu)" | sed "s/^/$label produce acks=$acks: /"
done
$perfbin consume -b 127.0.0.1:$port -t p6 --duration-secs 10 --broker-pids $broker 2>&1 | grep -E "^(throughput|broker cpu)" | sed "s/^/$label consume: /"
grep "storage counters" "$work/broker.log" | tail -2 | sed "s/^/$label /" || true
