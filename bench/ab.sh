#!/usr/bin/env bash
# bench/ab.sh: A/B of servers (or builds, or settings) under one wrk load.
#
# Each NAME=COMMAND is a server that listens on 127.0.0.1:18081 and serves
# POST /api/orders. One round runs each of them in turn on a fresh data
# directory, under the load of bench/ingest.sh (wrk -t2 -c256, 1 KiB POST
# bodies); ROUNDS rounds alternate them, so that a noisy spell of the host
# falls on all of them alike. It prints every run and then, per server, the
# medians of req/s, p99 and CPU µs a request, and how many rounds it won
# against the first server. In COMMAND, $WORK is a directory that outlives
# the runs, $SLUICE a build of this tree, $NOOP bench/noop, $POLICY a policy
# for $WORK/data with a paused target (fsync $FSYNC), $DATA the data
# directory, emptied before every run.
#
#   bench/ab.sh 5 'noop=$NOOP -listen 127.0.0.1:18081' 'sluice=$SLUICE serve --policy $POLICY'
#   bench/ab.sh 6 'old=/tmp/sluice-old serve --policy $POLICY' 'new=$SLUICE serve --policy $POLICY'
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n '2,16p' "$0" >&2; exit 2; }
ROUNDS=$1; shift
DURATION=${DURATION:-8s} CONNS=${CONNS:-256} THREADS=${THREADS:-2} FSYNC=${FSYNC:-always}
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk" >&2; exit 1; }

WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
SLUICE=$WORK/sluice NOOP=$WORK/noop POLICY=$WORK/policy.yaml DATA=$WORK/data
go build -o "$SLUICE" ./cmd/sluice
go build -o "$NOOP" ./bench/noop
export WORK SLUICE NOOP POLICY DATA

. bench/lib.sh
port_free 18081
paused_policy "$POLICY" 18081 "$DATA" "$FSYNC"
machine
echo "load: wrk -t$THREADS -c$CONNS -d$DURATION, 1 KiB POST; $ROUNDS rounds"
printf '%-10s %-4s %10s %8s %8s %7s %10s %6s %11s %9s\n' server round req/s p50_ms p99_ms non2xx cpu_us/req steal% msgs/commit commit_ms
names=()
for v in "$@"; do names+=("${v%%=*}"); : > "$WORK/${v%%=*}.txt"; done
for i in $(seq "$ROUNDS"); do
  for v in "$@"; do
    name=${v%%=*} cmd=${v#*=}
    rm -rf "$DATA"
    eval "exec $cmd" 2> "$WORK/$name.log" > /dev/null & p=$!
    wait_port 18081 || { echo "$name did not listen on 18081; its log:" >&2; cat "$WORK/$name.log" >&2; exit 1; }
    r=$(wrk_post 18081 $p)
    kill $p; wait $p 2>/dev/null || true
    grep -q "writer stopped" "$WORK/$name.log" && r="$r $(writer_cycle "$WORK/$name.log")"
    echo "$r" >> "$WORK/$name.txt"
    printf '%-10s %-4s %10s %8s %8s %7s %10s %6s %11s %9s\n' "$name" "$i" $r
  done
done
echo "-- medians; wins: rounds with more req/s than ${names[0]}"
printf '%-10s %10s %8s %10s %6s\n' server req/s p99_ms cpu_us/req wins
for name in "${names[@]}"; do
  wins=$(paste -d' ' <(cut -d' ' -f1 "$WORK/${names[0]}.txt") <(cut -d' ' -f1 "$WORK/$name.txt") | awk '$2 > $1 { w++ } END { print w+0 }')
  printf '%-10s %10s %8s %10s %6s\n' "$name" "$(cut -d' ' -f1 "$WORK/$name.txt" | median)" "$(cut -d' ' -f3 "$WORK/$name.txt" | median)" "$(cut -d' ' -f5 "$WORK/$name.txt" | median)" "$wins/$ROUNDS"
done
