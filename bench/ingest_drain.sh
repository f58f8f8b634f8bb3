#!/usr/bin/env bash
# bench/ingest_drain.sh: ingest while a target drains, as a ratio of the
# same ingest with that target paused, in the same run.
#
# `sluice serve` with one buffered route and one target at bench/noop
# (concurrency 64), fsync FSYNC; wrk -t2 -cCONNS, 1 KiB POSTs, DURATION.
# "paused": the target's rate is 0 (only ingest runs). "draining": its rate
# is unlimited, so every accepted request is also delivered while wrk
# runs; the script prints how many the downstream got against how many
# were accepted (the drain keeping pace: 1.00). Alternating, RUNS rounds,
# a fresh data directory each run. Beside sluice's CPU per accepted
# request, it prints the downstream's (noop_us) and the rest of the
# machine's (rest_us: wrk, and anything else running) per accepted
# request, and the CPUs left idle: where the two CPUs went.
#
#   bench/ingest_drain.sh
#   RUNS=5 CONNS=64 DURATION=10s bench/ingest_drain.sh
#   SLUICE_B=/tmp/sluice-old bench/ingest_drain.sh   # and another build of sluice (sluice-b), each round
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3} DURATION=${DURATION:-10s} CONNS=${CONNS:-64} THREADS=${THREADS:-2} FSYNC=${FSYNC:-always} SLUICE_B=${SLUICE_B:-}
command -v wrk >/dev/null && command -v curl >/dev/null || { echo "wrk and curl are required: apt-get install wrk curl" >&2; exit 1; }
. bench/lib.sh
port_free 18080 18082

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
go build -o "$work/sluice" ./cmd/sluice
go build -o "$work/noop" ./bench/noop
go build -o "$work/blast" ./bench/blast

policy() { # FILE RATE
  cat > "$1" <<YAML
listen: 127.0.0.1:18080
storage: { dir: $work/data, fsync: "$FSYNC" }
routes:
  - name: orders
    match: { path: /api/orders, methods: [POST] }
    targets:
      - { name: store, url: "http://127.0.0.1:18082", rate: $2, concurrency: 64 }
YAML
}
policy "$work/paused.yaml" 0
policy "$work/draining.yaml" unlimited

machine
echo "load: wrk -t$THREADS -c$CONNS -d$DURATION, 1 KiB POST; fsync $FSYNC; target concurrency 64 to bench/noop"
cpu_all() { awk '$1=="cpu" { t=0; for (i=2;i<=NF;i++) t+=$i; print $5+$6, t; exit }' /proc/stat; } # idle+iowait, all
printf '%-10s %-4s %10s %9s %9s %11s %7s %12s %8s %8s %9s\n' target run req/s p50_ms p99_ms cpu_us/req steal% delivered/acc noop_us rest_us idle_cpus
: > "$work/paused.txt"; : > "$work/draining.txt"; : > "$work/paused-b.txt"; : > "$work/draining-b.txt"
"$work/noop" -listen 127.0.0.1:18082 & np=$!
wait_port 18082
for i in $(seq "$RUNS"); do
  for run in paused draining ${SLUICE_B:+paused-b draining-b}; do
    mode=${run%-b} bin=$work/sluice
    [ "$run" = "$mode" ] || bin=$SLUICE_B
    rm -rf "$work/data"
    before=$(curl -s http://127.0.0.1:18082/_count)
    "$bin" serve --policy "$work/$mode.yaml" 2>"$work/$run.log" & sp=$!
    wait_port 18080
    n0=$(cpu_ticks $np); a0=$(cpu_all)
    r=$(wrk_post 18080 $sp)
    n1=$(cpu_ticks $np); a1=$(cpu_all)
    after=$(curl -s http://127.0.0.1:18082/_count)
    kill -TERM $sp; wait $sp 2>/dev/null || true
    echo "$r" >> "$work/$run.txt"
    set -- $r
    acc=$(awk -v r="$1" -v d="$DURATION" 'BEGIN{ sub(/s$/,"",d); printf "%.0f", r*d }')
    pace=$(awk -v a="$acc" -v b="$before" -v c="$after" 'BEGIN{ printf "%.2f", (c-b)/(a>0?a:1) }')
    split=$(awk -v acc="$acc" -v s="$5" -v n0="$n0" -v n1="$n1" -v a0="$a0" -v a1="$a1" -v hz="$(getconf CLK_TCK)" -v cpus="$(nproc)" 'BEGIN{
      split(a0, x, " "); split(a1, y, " "); idle = y[1]-x[1]; all = y[2]-x[2]
      noop = (n1-n0)/hz*1e6/(acc>0?acc:1); busy = (all-idle)/hz*1e6/(acc>0?acc:1)
      printf "%.1f %.1f %.2f", noop, busy-s-noop, (all>0 ? idle/all*cpus : 0) }')
    printf '%-10s %-4s %10s %9s %9s %11s %7s %12s %8s %8s %9s\n' "$run" "$i" "$1" "$2" "$3" "$5" "$6" "$pace" $split
  done
done
for sfx in "" ${SLUICE_B:+-b}; do
  p=$(cut -d' ' -f1 "$work/paused$sfx.txt" | median); d=$(cut -d' ' -f1 "$work/draining$sfx.txt" | median)
  paste -d' ' "$work/draining$sfx.txt" "$work/paused$sfx.txt" | awk '{ printf "%.2f\n", $1/$7 }' > "$work/ratio.txt"
  echo "medians${sfx:+ (sluice-b: $SLUICE_B)}: paused $p req/s, draining $d req/s"
  echo "ratio draining/paused$sfx: $(awk -v a="$d" -v b="$p" 'BEGIN{ printf "%.2f", a/b }') (round by round: $(tr '\n' ' ' < "$work/ratio.txt"))"
done
