#!/usr/bin/env bash
# usage: perf/tail-fetch.sh CORELOG_BIN LABEL [TAIL_CACHE_BYTES_PER_SHARD] [COUNT]: one broker
# (2 shards) on a fresh data dir; COUNT x 1 KiB messages (default 1,000,000) produced into 6
# partitions, then read back from the beginning, alternately by corelog-perf consume (one
# connection) and rdkafka_performance -C (one librdkafka consumer in a group), twice each,
# each with the broker's CPU-seconds per GB read. With the default tail cache (1 GiB per
# shard) every read is served from the tail cache; with 0 every read is a segment (DMA) read.
# Last, consumers that follow a live producer: 10 s of corelog-perf produce at 50,000 x 1 KiB
# messages/s alone, then the same with a consumer from the end of the log; the difference of
# the broker's CPU-seconds is what serving the followers cost.
# Build first: cargo build --release --bins; bash perf/rdkafka-performance.sh --build-only
set -euo pipefail
bin=$1; label=$2; tail=${3:-1073741824}; count=${4:-1000000}
root=$(cd "$(dirname "$0")/.." && pwd)
perfbin=$root/target/release/corelog-perf
rdk=$root/target/rdkafka_performance
work=$(mktemp -d /tmp/corelog-tail-fetch.XXXX)
port=$((19800 + RANDOM % 100))
$bin serve --listen 127.0.0.1:$port --data-dir "$work/data" --cores 2 \
  --set corelog.tail.cache.bytes.per.shard=$tail >"$work/broker.log" 2>&1 & broker=$!
trap 'kill $broker 2>/dev/null; wait $broker 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
cpu() { awk -v tck="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / tck }' "/proc/$broker/stat"; }
$perfbin produce -b 127.0.0.1:$port -t t6 --create-partitions 6 --message-size 1024 --count $count \
  --acks 1 --connections 2 --max-in-flight 16 --batch-bytes 262144 >/dev/null 2>&1
gb=$(python3 -c "print($count*1024/1e9)")
report() { python3 -c "import sys; b,a,t0,t1,gb=map(float,sys.argv[1:6]); print(f'$label tail=$tail $1: {gb/(t1-t0)*1000:.0f} MB/s, broker {a-b:.2f} CPU-s for {gb:.3f} GB: {gb/(a-b) if a>b else float(\"inf\"):.2f} GB/CPU-s')" "$2" "$3" "$4" "$5" "$gb"; }
for pass in 1 2; do
  b=$(cpu); t0=$(date +%s.%N)
  $perfbin consume -b 127.0.0.1:$port -t t6 --count $count --idle-timeout-secs 20 >/dev/null 2>&1
  a=$(cpu); t1=$(date +%s.%N); report "corelog-perf consume #$pass" "$b" "$a" "$t0" "$t1"
  b=$(cpu); t0=$(date +%s.%N)
  $rdk -C -t t6 -b 127.0.0.1:$port -G tail-$pass-$RANDOM -o beginning -c $count -q >/dev/null 2>&1
  a=$(cpu); t1=$(date +%s.%N); report "rdkafka_performance -C #$pass" "$b" "$a" "$t0" "$t1"
done
live() {
  $perfbin produce -b 127.0.0.1:$port -t $1 --create-partitions 6 --message-size 1024 --duration-secs 10 \
    --rate 50000 --acks 1 --connections 2 --max-in-flight 16 --batch-bytes 262144 2>&1 | grep -E "^throughput" | tee "$work/$1"
}
b=$(cpu); live live-alone | sed "s/^/$label live producer alone: /"; a=$(cpu); alone=$(python3 -c "print($a-$b)")
$bin topics --bootstrap-server 127.0.0.1:$port --create --topic live-followed --partitions 6 --replication-factor 1 >/dev/null
b=$(cpu)
$perfbin consume -b 127.0.0.1:$port -t live-followed --from latest --duration-secs 11 --idle-timeout-secs 11 \
  2>&1 | grep -E "^throughput" | sed "s/^/$label live consumer: /" & consumer=$!
sleep 0.5; live live-followed | sed "s/^/$label live producer: /"; wait $consumer; a=$(cpu)
python3 -c "import sys,re; alone,both=float(sys.argv[1]),float(sys.argv[2]); gb=float(re.search(r'([\\d.]+) msg/s',open('$work/live-followed').read()).group(1))*1024*10/1e9; print(f'$label live: producer alone {alone:.2f} CPU-s, with a follower {both:.2f} CPU-s: the follower cost {both-alone:.2f} CPU-s for {gb:.2f} GB: {gb/(both-alone) if both>alone else float(\"inf\"):.2f} GB/CPU-s')" "$alone" "$(python3 -c "print($a-$b)")"
