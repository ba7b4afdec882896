#!/usr/bin/env bash
# usage: perf/profile-produce.sh CORELOG_BIN LABEL: one broker (2 shards, fresh data dir), rdkafka_performance
# acks=1, 3M x 1 KiB into 6 partitions, linger.ms=5; perf record (DWARF stacks) of the broker for 4 s
# from the 2nd second; prints the broker CPU-s for the run and leaves the report and perf.data in a temp dir.
set -euo pipefail
bin=$1; label=$2
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/corelog-profile.XXXX)
port=$((19800 + RANDOM % 100))
$bin serve --listen 127.0.0.1:$port --data-dir "$work/data" >"$work/broker.log" 2>&1 & broker=$!
trap 'kill $broker 2>/dev/null; wait $broker 2>/dev/null; rm -rf "$work/data"' EXIT
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
$root/target/release/corelog topics --bootstrap-server 127.0.0.1:$port --create --topic r6 --partitions 6 --replication-factor 1 >/dev/null
cpu() { awk -v tck="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / tck }' "/proc/$broker/stat"; }
b=$(cpu)
$root/target/rdkafka_performance -P -t r6 -b 127.0.0.1:$port -s 1024 -a 1 -c 3000000 -X linger.ms=5 > $work/rdk.out 2>&1 & rdk=$!
sleep 2
perf record -F 499 -e cpu-clock --call-graph dwarf,16384 -p $broker -o $work/perf.data -- sleep 4 >/dev/null 2>&1
wait $rdk
a=$(cpu)
echo "$label: broker CPU $(echo "$a - $b" | bc) s for 3.072 GB; $(grep -E 'messages produced' $work/rdk.out | tail -1)"
perf report -i $work/perf.data --no-children --sort sym -g none 2>/dev/null | grep -v "^#" | grep -v "^$" | head -30 > $work/report.txt
perf report -i $work/perf.data --children --sort sym -g none 2>/dev/null | grep -E "asm_exc_page_fault|__memset|__memmove|clear_page|memcg|SliceCursor|frame::grow|buffer_pool::take" | head -20 >> $work/report.txt
echo "report in $work/report.txt"
