#!/usr/bin/env bash
# bench/ingest.sh: durable ingest vs. a server that stores nothing.
#
# Alternates a no-op fasthttp server (bench/noop), two floors and `sluice
# serve` with a buffered route, under the same wrk load (-t2 -c256, 1 KiB
# POST bodies), RUNS times each, and prints requests/s and latency for each
# run, the medians, and the ratios (of the medians, and round by round:
# median and range of the ratios of runs seconds apart, which a noisy host
# disturbs less). The floors are the smallest durable group commits, each
# batch of bodies appended to a file with one write and one fdatasync, no
# framing, no index, no checksum:
#   floor  bench/floor: one goroutine runs an epoll loop over every
#          connection (the ingest issue's floor, built literally);
#   nooplog  bench/noop -log: fasthttp, a goroutine per connection, each
#          body handed to one batcher goroutine (what a Go server like
#          sluice cannot avoid paying).
# A floor prices what this machine's disk and scheduler cost any store that
# acknowledges after fdatasync; sluice/floor is what sluice's own code costs
# beyond that. The route's target is paused (rate 0) so only ingest is
# measured. FLOOR=0 leaves the floors out.
#
#   bench/ingest.sh                 # fsync always, 3 runs of 10s each
#   FSYNC=interval:10ms bench/ingest.sh
#   RUNS=5 DURATION=20s CONNS=256 bench/ingest.sh
#   SLUICE_B=/tmp/sluice-old bench/ingest.sh   # and another build of sluice (sluice-b), each round
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3} DURATION=${DURATION:-10s} CONNS=${CONNS:-256} THREADS=${THREADS:-2} FSYNC=${FSYNC:-always}
SLUICE_B=${SLUICE_B:-}
FLOOR=${FLOOR:-$([ "$FSYNC" = always ] && echo 1 || echo 0)} # the floor fsyncs every batch: it prices fsync always only
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk" >&2; exit 1; }

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
go build -o "$work/sluice" ./cmd/sluice
go build -o "$work/noop" ./bench/noop
go build -o "$work/floor" ./bench/floor

. bench/lib.sh
port_free 18080 18081
paused_policy "$work/policy.yaml" 18081 "$work/data" "$FSYNC"

machine
echo "load: wrk -t$THREADS -c$CONNS -d$DURATION, 1 KiB POST; sluice fsync: $FSYNC"
printf '%-7s %-4s %12s %9s %9s %7s %11s %7s %11s %10s\n' server run req/s p50_ms p99_ms non2xx cpu_us/req steal% msgs/commit commit_ms
: > "$work/noop.txt"; : > "$work/sluice.txt"; : > "$work/floor.txt"; : > "$work/nooplog.txt"; : > "$work/sluice-b.txt"
sluice_run() { # NAME BINARY: one run of that sluice, results in $work/NAME.txt
  rm -rf "$work/data"
  "$2" serve --policy "$work/policy.yaml" --log-level info 2> "$work/sluice.log" > /dev/null & sp=$!
  wait_port 18081
  r=$(wrk_post 18081 $sp)
  kill $sp; wait $sp 2>/dev/null || true
  r="$r $(writer_cycle "$work/sluice.log")"; echo "$r" >> "$work/$1.txt"
  printf '%-7s %-4s %12s %9s %9s %7s %11s %7s %11s %10s\n' "$1" "$i" $r
}

for i in $(seq "$RUNS"); do
  "$work/noop" -listen 127.0.0.1:18080 & np=$!
  wait_port 18080
  r=$(wrk_post 18080 $np); echo "$r" >> "$work/noop.txt"
  printf '%-7s %-4s %12s %9s %9s %7s %11s %7s\n' noop "$i" $r
  kill $np; wait $np 2>/dev/null || true

  if [ "$FLOOR" = 1 ]; then
    rm -f "$work/floor.log"
    "$work/floor" -listen 127.0.0.1:18080 -log "$work/floor.log" & np=$!
    wait_port 18080
    r=$(wrk_post 18080 $np); echo "$r" >> "$work/floor.txt"
    printf '%-7s %-4s %12s %9s %9s %7s %11s %7s\n' floor "$i" $r
    kill $np; wait $np 2>/dev/null || true
    rm -f "$work/floor.log"
    "$work/noop" -listen 127.0.0.1:18080 -log "$work/floor.log" & np=$!
    wait_port 18080
    r=$(wrk_post 18080 $np); echo "$r" >> "$work/nooplog.txt"
    printf '%-7s %-4s %12s %9s %9s %7s %11s %7s\n' nooplog "$i" $r
    kill $np; wait $np 2>/dev/null || true
    rm -f "$work/floor.log"
  fi

  sluice_run sluice "$work/sluice"
  if [ -n "$SLUICE_B" ]; then sluice_run sluice-b "$SLUICE_B"; fi
done
n_rps=$(cut -d' ' -f1 "$work/noop.txt" | median)
s_rps=$(cut -d' ' -f1 "$work/sluice.txt" | median)
n_p99=$(cut -d' ' -f3 "$work/noop.txt" | median)
s_p99=$(cut -d' ' -f3 "$work/sluice.txt" | median)
n_cpu=$(cut -d' ' -f5 "$work/noop.txt" | median)
s_cpu=$(cut -d' ' -f5 "$work/sluice.txt" | median)
steal=$(cat "$work/noop.txt" "$work/sluice.txt" "$work/floor.txt" "$work/nooplog.txt" | cut -d' ' -f6 | sort -g | tail -1)
echo "worst CPU steal of a run: $steal% (the host ran other guests; runs with much steal are noise)"
echo "median noop:   $n_rps req/s, p99 $n_p99 ms, $n_cpu CPU-us/req"
s_cyc=$(cut -d' ' -f8 "$work/sluice.txt" | median)
s_bat=$(cut -d' ' -f7 "$work/sluice.txt" | median)
echo "median sluice: $s_rps req/s, p99 $s_p99 ms, $s_cpu CPU-us/req, $s_bat msgs per commit, $s_cyc ms per commit"
if [ "$FLOOR" = 1 ]; then
  f_rps=$(cut -d' ' -f1 "$work/floor.txt" | median)
  f_p99=$(cut -d' ' -f3 "$work/floor.txt" | median)
  f_cpu=$(cut -d' ' -f5 "$work/floor.txt" | median)
  echo "median floor:  $f_rps req/s, p99 $f_p99 ms, $f_cpu CPU-us/req (bench/floor: one epoll goroutine, write + fdatasync per batch)"
  l_rps=$(cut -d' ' -f1 "$work/nooplog.txt" | median)
  l_p99=$(cut -d' ' -f3 "$work/nooplog.txt" | median)
  l_cpu=$(cut -d' ' -f5 "$work/nooplog.txt" | median)
  echo "median nooplog: $l_rps req/s, p99 $l_p99 ms, $l_cpu CPU-us/req (bench/noop -log: a goroutine per connection, one batcher)"
fi
# paired A B: the ratio B/A of req/s round by round (runs of one round are
# seconds apart, so a noisy spell of the host falls on both): "median (range)".
paired() {
  paste -d' ' <(cut -d' ' -f1 "$work/$1.txt") <(cut -d' ' -f1 "$work/$2.txt") | awk '{ printf "%.2f\n", $2/$1 }' | sort -g > "$work/pair.txt"
  echo "$(median < "$work/pair.txt") ($(head -1 "$work/pair.txt")-$(tail -1 "$work/pair.txt"))"
}
awk -v s="$s_rps" -v n="$n_rps" 'BEGIN{ printf "ratio sluice/noop: %.2f\n", s/n }'
echo "ratio sluice/noop round by round: $(paired noop sluice)"
awk -v s="$s_cpu" -v n="$n_cpu" 'BEGIN{ printf "CPU per request sluice/noop: %.2f\n", s/n }'
if [ "$FLOOR" = 1 ]; then
  awk -v f="$f_rps" -v n="$n_rps" 'BEGIN{ printf "ratio floor/noop: %.2f\n", f/n }'
  awk -v s="$s_rps" -v f="$f_rps" 'BEGIN{ printf "ratio sluice/floor: %.2f\n", s/f }'
  echo "ratio floor/noop round by round: $(paired noop floor)"
  echo "ratio sluice/floor round by round: $(paired floor sluice)"
  awk -v s="$s_p99" -v f="$f_p99" 'BEGIN{ printf "p99 sluice/floor: %.2f\n", s/f }'
  echo "ratio nooplog/floor round by round: $(paired floor nooplog)"
  echo "ratio sluice/nooplog round by round: $(paired nooplog sluice)"
fi
if [ -n "$SLUICE_B" ]; then
  b_rps=$(cut -d' ' -f1 "$work/sluice-b.txt" | median)
  b_p99=$(cut -d' ' -f3 "$work/sluice-b.txt" | median)
  b_cpu=$(cut -d' ' -f5 "$work/sluice-b.txt" | median)
  echo "median sluice-b: $b_rps req/s, p99 $b_p99 ms, $b_cpu CPU-us/req ($SLUICE_B)"
  echo "ratio sluice/sluice-b round by round: $(paired sluice-b sluice)"
  if [ "$FLOOR" = 1 ]; then
    echo "ratio sluice-b/floor round by round: $(paired floor sluice-b)"
    awk -v s="$b_p99" -v f="$f_p99" 'BEGIN{ printf "p99 sluice-b/floor: %.2f\n", s/f }'
  fi
fi
