#!/usr/bin/env bash
# bench/ceiling.sh: what a group-commit cycle costs in throughput by itself.
#
# Under wrk's closed loop (-t2 -c256, 1 KiB POSTs), a server that acknowledges
# only after a batch commit can serve at most what its connections bring in
# per cycle. This script measures that ceiling with no storage at all:
# bench/noop plain (the reference of bench/ingest.sh), then bench/noop
# -commit-wait W, which hands every request to one batcher that waits W per
# batch and then answers the whole batch. Alternating, RUNS times each,
# medians, each as a ratio of the plain noop measured in the same run.
# Compare with the commit cycle that bench/ingest.sh reports for sluice.
#
#   bench/ceiling.sh
#   WAITS="0 300us 1ms" RUNS=5 bench/ceiling.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3} DURATION=${DURATION:-10s} CONNS=${CONNS:-256} THREADS=${THREADS:-2}
WAITS=${WAITS:-"0 250us 500us 1ms 1500us"}
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk" >&2; exit 1; }
. bench/lib.sh
port_free 18080

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
go build -o "$work/noop" ./bench/noop

machine
echo "load: wrk -t$THREADS -c$CONNS -d$DURATION, 1 KiB POST; noop vs noop -commit-wait W (no storage)"
printf '%-12s %-4s %12s %9s %9s %7s %11s %7s\n' server run req/s p50_ms p99_ms non2xx cpu_us/req steal%
configs="plain log log-zeroed log-2w log-4w"
for w in $WAITS; do configs="$configs wait=$w"; done
for i in $(seq "$RUNS"); do
  for c in $configs; do
    args=()
    case $c in
      wait=*) args=(-commit-wait "${c#wait=}") ;;
      log) rm -f "$work/log"; args=(-log "$work/log") ;;
      log-2w) rm -f "$work/log"; args=(-log "$work/log" -log-writers 2) ;;
      log-4w) rm -f "$work/log"; args=(-log "$work/log" -log-writers 4) ;;
      log-zeroed) rm -f "$work/log"; args=(-log "$work/log" -log-zeroed 1073741824) ;;
    esac
    "$work/noop" -listen 127.0.0.1:18080 "${args[@]}" & np=$!
    wait_port 18080
    r=$(wrk_post 18080 $np); echo "$r" >> "$work/$c.txt"
    printf '%-12s %-4s %12s %9s %9s %7s %11s %7s\n' "$c" "$i" $r
    kill $np; wait $np 2>/dev/null || true
  done
done
base=$(cut -d' ' -f1 "$work/plain.txt" | median)
echo "medians (ratio to plain noop):"
for c in $configs; do
  rps=$(cut -d' ' -f1 "$work/$c.txt" | median)
  p99=$(cut -d' ' -f3 "$work/$c.txt" | median)
  awk -v c="$c" -v r="$rps" -v b="$base" -v p="$p99" 'BEGIN{ printf "  %-12s %10.0f req/s  ratio %.2f  p99 %s ms\n", c, r, r/b, p }'
done
