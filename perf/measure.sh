#!/usr/bin/env bash
# Measures this machine's limits and a single corelog broker in one run, for perf/RESULTS.md:
# loopback bandwidth (iperf3), fdatasync rate and O_DIRECT write bandwidth (fio), then
# librdkafka's rdkafka_performance produce at acks=1 (perf/rdkafka-performance.sh), corelog-perf
# produce at acks=1 and acks=all and a consume, 1 KiB messages, 6 partitions, each with the
# broker's CPU-seconds and GB per broker CPU-second.
#
#   bash perf/measure.sh [SECONDS_PER_RUN]     (needs iperf3 and fio: apt-get install iperf3 fio)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
work=$(mktemp -d /tmp/corelog-measure.XXXXXX)
port=19876
cleanup() {
    # Every step may fail (a process already gone) without skipping the removal: the broker's
    # data is gigabytes.
    if [ -n "${broker:-}" ]; then kill "$broker" 2>/dev/null || true; wait "$broker" 2>/dev/null || true; fi
    if [ -n "${iperf:-}" ]; then kill "$iperf" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --bins >/dev/null 2>&1
# corelog listens with SO_REUSEPORT: a broker already on the port would silently share the
# connections (and the measurement) with ours.
if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "something already listens on 127.0.0.1:$port" >&2
    exit 1
fi
echo "== machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, kernel $(uname -r)"

echo "== loopback bandwidth (iperf3, 1 stream, 5 s)"
iperf3 -s -1 -p 5299 >/dev/null 2>&1 & iperf=$!
sleep 0.5
iperf3 -c 127.0.0.1 -p 5299 -t 5 -J | python3 -c 'import json,sys; d=json.load(sys.stdin); print("loopback_GBps %.2f" % (d["end"]["sum_received"]["bits_per_second"]/8e9))'

echo "== fdatasync rate (fio, 4 KiB writes, fdatasync after each, 5 s)"
fio --name=fsync --directory="$work" --rw=write --bs=4k --size=64m --fdatasync=1 \
    --runtime=5 --time_based --output-format=json 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin)["jobs"][0]; print("fdatasync_per_s %.0f" % d["sync"]["lat_ns"]["N"] if "sync" in d else "fdatasync_per_s %.0f" % d["write"]["iops"])'

echo "== O_DIRECT write bandwidth (fio, 1 MiB writes, 5 s)"
fio --name=direct --directory="$work" --rw=write --bs=1m --size=1g --direct=1 \
    --runtime=5 --time_based --output-format=json 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin)["jobs"][0]; print("odirect_write_GBps %.2f" % (d["write"]["bw_bytes"]/1e9))'
rm -f "$work"/fsync* "$work"/direct*

echo "== corelog: 1 broker, $(nproc) shards"
target/release/corelog serve --listen 127.0.0.1:$port --data-dir "$work/data" \
    >"$work/broker.log" 2>&1 & broker=$!
for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.1
done
perf=target/release/corelog-perf
# Broker CPU time (user + system, all its threads) in seconds, from /proc: fields 14 and 15,
# counted after the command name's closing parenthesis.
cpu_seconds() {
    sed 's/.*) //' "/proc/$broker/stat" | awk -v tck="$(getconf CLK_TCK)" '{ printf "%.2f", ($12 + $13) / tck }'
}
# Runs one corelog-perf command and prints its JSON report, which carries the broker's
# CPU-seconds and GB (10^9 bytes of values) per broker CPU-second (stable on a shared machine
# where absolute speed is not).
measured() {
    "$@" --json --broker-pids "$broker" | tail -n 1
}

echo "-- rdkafka_performance produce acks=1, 1 KiB, 6 partitions, $((secs * 100000)) messages"
bash perf/rdkafka-performance.sh --build-only
target/release/corelog topics --bootstrap-server 127.0.0.1:$port --create --topic rdkafka6 \
    --partitions 6 --replication-factor 1 >/dev/null
echo "   perf/rdkafka-performance.sh -P -t rdkafka6 -b 127.0.0.1:$port -s 1024 -a 1 -c $((secs * 100000))"
before=$(cpu_seconds)
summary=$(bash perf/rdkafka-performance.sh -P -t rdkafka6 -b 127.0.0.1:$port -s 1024 -a 1 \
    -c $((secs * 100000)) 2>&1 | grep 'messages produced' | tail -n 1)
after=$(cpu_seconds)
echo "   $summary"
# "... N delivered (offset O, F failed) in T ms: R msgs/s and M MB/s" (MB = 10^6 bytes).
echo "$summary" | python3 -c '
import re, sys
line = sys.stdin.read()
m = re.search(r"(\d+) messages produced \((\d+) bytes\), (\d+) delivered .*?(\d+) failed\) in (\d+)ms: (\d+) msgs/s and ([\d.]+) MB/s", line)
if not m:
    sys.exit("rdkafka_performance printed no summary")
msgs, nbytes, ok, failed, ms, rate, mbs = m.groups()
cpu = float(sys.argv[2]) - float(sys.argv[1])
gb = int(nbytes) * int(ok) / max(int(msgs), 1) / 1e9
eff = "%.3f" % (gb / cpu) if cpu > 0 else "n/a"
print("   rdkafka_performance_MBps %s  delivered %s failed %s  broker_cpu_s %.2f  gb_per_broker_cpu_s %s"
      % (mbs, ok, failed, cpu, eff))' "$before" "$after"

for acks in 1 -1; do
    echo "-- produce acks=$acks, 1 KiB, 6 partitions, ${secs} s"
    echo "   $perf produce -b 127.0.0.1:$port -t acks$acks --create-partitions 6 --message-size 1024 --duration-secs $secs --acks $acks --connections 2 --max-in-flight 16 --batch-bytes 262144 --broker-pids $broker"
    measured $perf produce -b 127.0.0.1:$port -t "acks$acks" --create-partitions 6 --message-size 1024 \
        --duration-secs "$secs" --acks "$acks" --connections 2 --max-in-flight 16 \
        --batch-bytes 262144
done
for rate in 10000 50000 100000; do
    echo "-- produce acks=-1 at a fixed $rate msg/s (1 KiB), ${secs} s"
    measured $perf produce -b 127.0.0.1:$port -t "rate$rate" --create-partitions 6 --message-size 1024 \
        --duration-secs "$secs" --acks -1 --rate "$rate"
done
echo "-- consume everything produced at acks=1"
measured $perf consume -b 127.0.0.1:$port -t acks1 --duration-secs "$secs"
