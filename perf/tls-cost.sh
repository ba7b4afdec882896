#!/usr/bin/env bash
# The cost of TLS: broker CPU-seconds per GB (utime+stime of /proc/PID/stat) for produce and
# fetch over an SSL listener against a PLAINTEXT one of the same broker (2 shards, 1 KiB
# messages, acks=1, one partition per topic, librdkafka's rdkafka_performance).
#
#   bash perf/tls-cost.sh RDKAFKA_PERFORMANCE [COUNT]
#
# RDKAFKA_PERFORMANCE must be built with SSL (linked against the rdkafka-sys tree whose
# Makefile.config LIBS has -lssl, as `cargo test` builds it now). ORDER="ssl plaintext"
# swaps the runs. Certificates are made with openssl in a temp dir.
set -euo pipefail
perf=$1
count=${2:-1000000}
root=$(cd "$(dirname "$0")/.." && pwd)
corelog=$root/target/release/corelog
dir=$(mktemp -d /tmp/tls-cost.XXXXXX)
(
    cd "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=ca -keyout ca.key -out ca.pem
    openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout b.key -out b.csr
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >san.ext
    openssl x509 -req -in b.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
        -extfile san.ext -out b.crt
    cat b.key b.crt >broker.pem
) >/dev/null 2>&1
"$corelog" serve --data-dir "$dir/data" --cores 2 --listen 127.0.0.1:19192 \
    --set listeners=PLAINTEXT://127.0.0.1:19192,SSL://127.0.0.1:19193 \
    --set ssl.keystore.location="$dir/broker.pem" >"$dir/log" 2>&1 &
pid=$!
trap 'kill $pid; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
sleep 4
cpu() { awk '{print $14+$15}' "/proc/$pid/stat"; }
gb=$(echo "$count * 1024 / 1000000000" | bc -l)
report() { # what ticks seconds
    printf '%-18s %.2f CPU-s for %.3f GB: %.2f CPU-s/GB (%.1f s)\n' "$1" \
        "$(echo "$2/100" | bc -l)" "$gb" "$(echo "$2/100/$gb" | bc -l)" "$3"
}
for proto in ${ORDER:-plaintext ssl}; do
    if [ "$proto" = ssl ]; then
        args=(-b 127.0.0.1:19193 -X security.protocol=ssl -X "ssl.ca.location=$dir/ca.pem")
    else
        args=(-b 127.0.0.1:19192)
    fi
    c0=$(cpu) s0=$(date +%s.%N)
    "$perf" -P -t "t-$proto" -s 1024 -a 1 -c "$count" -X linger.ms=5 "${args[@]}" >"$dir/p.out" 2>&1
    c1=$(cpu) s1=$(date +%s.%N)
    "$perf" -C -t "t-$proto" -p 0 -o beginning -c "$count" "${args[@]}" >"$dir/c.out" 2>&1
    c2=$(cpu) s2=$(date +%s.%N)
    report "$proto produce" "$((c1 - c0))" "$(echo "$s1 - $s0" | bc -l)"
    report "$proto fetch" "$((c2 - c1))" "$(echo "$s2 - $s1" | bc -l)"
done
