#!/usr/bin/env bash
# librdkafka's rdkafka_performance, a load tool no corelog code is in (issue 11's numbers come
# from it). The first call builds it into target/rdkafka_performance from the librdkafka the
# rdkafka-sys crate bundles; every call then runs it with the arguments given.
#
#   bash perf/rdkafka-performance.sh [--build-only] [rdkafka_performance ARGS...]
#
# The produce run of perf/README.md (1 KiB messages, acks=1, to a topic of 6 partitions):
#   bash perf/rdkafka-performance.sh -P -t perf6 -b 127.0.0.1:9092 -s 1024 -a 1 -c 2000000
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/target/rdkafka_performance

# Compiles the example in librdkafka tree $1 (configured, src/librdkafka.a built) against its
# static library, with the libraries and paths its configure found.
link_against() {
    local tree=$1 libs ldflags
    [ -f "$tree/src/librdkafka.a" ] && [ -f "$tree/config.h" ] && [ -f "$tree/Makefile.config" ] ||
        return 1
    libs=$(sed -n 's/^LIBS+=[[:space:]]*//p' "$tree/Makefile.config" | tr '\n' ' ')
    ldflags=$(sed -n 's/^LDFLAGS+=[[:space:]]*//p' "$tree/Makefile.config" | tr '\n' ' ')
    # shellcheck disable=SC2086 # word splitting of the flag lists is intended
    gcc -O2 -I"$tree" -I"$tree/src" "$tree/examples/rdkafka_performance.c" \
        "$tree/src/librdkafka.a" $ldflags $libs -o "$bin.tmp" 2>"$bin.log" &&
        mv "$bin.tmp" "$bin"
}

build() {
    mkdir -p "$root/target"
    # The trees rdkafka-sys's build script configured and built (cargo build of the tests).
    local tree
    for tree in "$root"/target/*/build/rdkafka-sys-*/out; do
        if link_against "$tree"; then
            echo "built $bin from $tree" >&2
            return 0
        fi
    done
    # None (or none that links): configure and build librdkafka from the crate's sources.
    local src tmp
    src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/rdkafka-sys-*/librdkafka 2>/dev/null |
        sort -V | tail -n 1)
    if [ -z "$src" ]; then
        echo "no rdkafka-sys sources in the cargo registry: run 'cargo fetch' first" >&2
        return 1
    fi
    tmp=$(mktemp -d /tmp/librdkafka.XXXXXX)
    echo "building librdkafka from $src in $tmp (a few minutes)" >&2
    # (Its configure takes every configure.* file there for a module: logs are named build-*.)
    cp -r "$src"/. "$tmp"
    if (cd "$tmp" && ./configure --disable-ssl --disable-gssapi --disable-curl --disable-zstd \
        --disable-lz4-ext >"$tmp/build-configure.log" 2>&1 &&
        make -C src -j"$(nproc)" librdkafka.a >"$tmp/build-make.log" 2>&1) &&
        link_against "$tmp"; then
        echo "built $bin" >&2
        rm -rf "$tmp"
        return 0
    fi
    echo "building rdkafka_performance failed: see $tmp/build-configure.log, $tmp/build-make.log, $bin.log" >&2
    return 1
}

build_only=0
if [ "${1:-}" = "--build-only" ]; then
    build_only=1
    shift
fi
[ -x "$bin" ] || build
rm -f "$bin.log"
[ "$build_only" = 1 ] && exit 0
exec "$bin" "$@"
