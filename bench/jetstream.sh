#!/usr/bin/env bash
# bench/jetstream.sh: durable ingest on storage.engine jetstream beside bbolt.
#
# Alternates, RUNS rounds, under the same wrk load (-t2 -c256, 1 KiB POST
# bodies, the route's target paused so only ingest runs):
#   bbolt  sluice serve, engine bbolt, fsync always (the reference)
#   js-r1  sluice serve, engine jetstream, no urls: the embedded server in
#          storage.dir, syncing every write (sync_interval: always)
#   js-r3  sluice serve, engine jetstream, replicas 3, on a 3-server cluster
#          started in one process on this machine by bench/natscluster,
#          every server syncing every write
# and prints requests/s and latency of each run, the medians, and the
# ratios js-r1/bbolt and js-r3/bbolt round by round. The cluster's three
# servers share the machine's CPUs and disk with sluice and wrk: it prices
# the engine's protocol (publish, quorum, acknowledgement), not a cluster's
# network.
#
#   bench/jetstream.sh                 # 3 runs of 10s each
#   RUNS=5 DURATION=20s CONNS=256 bench/jetstream.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3} DURATION=${DURATION:-10s} CONNS=${CONNS:-256} THREADS=${THREADS:-2}
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk" >&2; exit 1; }

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
go build -o "$work/sluice" ./cmd/sluice
go build -o "$work/natscluster" ./bench/natscluster

. bench/lib.sh
port_free 18081
paused_policy "$work/bbolt.yaml" 18081 "$work/data" always
paused_policy "$work/r1.yaml" 18081 "$work/data" always "engine: jetstream"
sed -i 's/, fsync: "always"//' "$work/r1.yaml"

machine
echo "load: wrk -t$THREADS -c$CONNS -d$DURATION, 1 KiB POST; bbolt fsync always; jetstream servers sync always"
printf '%-6s %-4s %12s %9s %9s %7s %11s %7s\n' server run req/s p50_ms p99_ms non2xx cpu_us/req steal%
for w in bbolt r1 r3; do : > "$work/$w.txt"; done
run() { # NAME POLICY
  rm -rf "$work/data"
  "$work/sluice" serve --policy "$2" --log-level warn 2> "$work/$1.log" > /dev/null & sp=$!
  wait_port 18081
  sleep 1 # the drainer's lease and the stream are set up
  r=$(wrk_post 18081 $sp); echo "$r" >> "$work/$1.txt"
  kill $sp; wait $sp 2>/dev/null || true
  printf '%-6s %-4s %12s %9s %9s %7s %11s %7s\n' "$1" "$i" $r
}
for i in $(seq "$RUNS"); do
  run bbolt "$work/bbolt.yaml"
  run r1 "$work/r1.yaml"
  rm -rf "$work/nats"
  "$work/natscluster" -n 3 -dir "$work/nats" > "$work/urls" & cp=$!
  for _ in $(seq 600); do [ -s "$work/urls" ] && break; sleep 0.1; done
  urls=$(head -1 "$work/urls")
  paused_policy "$work/r3.yaml" 18081 "$work/data" always "engine: jetstream" "jetstream: { urls: [$urls], replicas: 3 }"
  sed -i 's/, fsync: "always"//' "$work/r3.yaml"
  run r3 "$work/r3.yaml"
  kill $cp; wait $cp 2>/dev/null || true
done
for w in bbolt r1 r3; do
  echo "median $w: $(cut -d' ' -f1 "$work/$w.txt" | median) req/s, p99 $(cut -d' ' -f3 "$work/$w.txt" | median) ms, $(cut -d' ' -f5 "$work/$w.txt" | median) CPU-us/req (sluice only), non-2xx $(cut -d' ' -f4 "$work/$w.txt" | tr '\n' ' ')"
done
paired() {
  paste -d' ' <(cut -d' ' -f1 "$work/$1.txt") <(cut -d' ' -f1 "$work/$2.txt") | awk '{ printf "%.2f\n", $2/$1 }' | sort -g > "$work/pair.txt"
  echo "$(median < "$work/pair.txt") ($(head -1 "$work/pair.txt")-$(tail -1 "$work/pair.txt"))"
}
echo "ratio js-r1/bbolt round by round: $(paired bbolt r1)"
echo "ratio js-r3/bbolt round by round: $(paired bbolt r3)"
