#!/usr/bin/env bash
# bench/ingest.sh: durable ingest vs. a server that stores nothing.
#
# Alternates a no-op fasthttp server (bench/noop) and `sluice serve` with a
# buffered route, under the same wrk load (-t2 -c256, 1 KiB POST bodies),
# RUNS times each, and prints requests/s and latency for each run, the
# medians, and the ratio sluice/noop. The route's target is paused (rate 0)
# so only ingest is measured.
#
#   bench/ingest.sh                 # fsync always, 3 runs of 10s each
#   FSYNC=interval:10ms bench/ingest.sh
#   RUNS=5 DURATION=20s CONNS=256 bench/ingest.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3} DURATION=${DURATION:-10s} CONNS=${CONNS:-256} THREADS=${THREADS:-2} FSYNC=${FSYNC:-always}
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk" >&2; exit 1; }

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
go build -o "$work/sluice" ./cmd/sluice
go build -o "$work/noop" ./bench/noop

cat > "$work/policy.yaml" <<YAML
listen: 127.0.0.1:18081
storage: { dir: $work/data, fsync: "$FSYNC" }
routes:
  - name: orders
    match: { path: /api/orders, methods: [POST] }
    targets:
      - { name: paused, url: "http://127.0.0.1:9", rate: 0 }
YAML

wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }

# cpu_ticks PID: user + system CPU of a process so far, in clock ticks
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

# run NAME PORT PID: one wrk run; prints "rps p50 p99 non2xx cpu_us_per_req"
# (latencies in ms). CPU per request is the server's user + system time over
# the requests wrk completed: on a shared machine it moves less than req/s.
run() {
  local out c0 c1
  c0=$(cpu_ticks "$3")
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s bench/post.lua "http://127.0.0.1:$2/api/orders")
  c1=$(cpu_ticks "$3")
  local rps p50 p99 non2xx reqs cpr
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  cpr=$(awk -v a="$c0" -v b="$c1" -v n="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN{ printf "%.1f", (b-a)/hz*1e6/n }')
  echo "$rps $(to_ms "$p50") $(to_ms "$p99") ${non2xx:-0} $cpr"
}
to_ms() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v); print v+0} else if (v ~ /s$/) {sub(/s/,"",v); print v*1000} else print v }'; }
median() { sort -g | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }

echo "machine: $(nproc) cpu, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | xargs), $(uname -r)"
echo "load: wrk -t$THREADS -c$CONNS -d$DURATION, 1 KiB POST; sluice fsync: $FSYNC"
printf '%-6s %-4s %12s %9s %9s %7s %11s\n' server run req/s p50_ms p99_ms non2xx cpu_us/req
: > "$work/noop.txt"; : > "$work/sluice.txt"
for i in $(seq "$RUNS"); do
  "$work/noop" -listen 127.0.0.1:18080 & np=$!
  wait_port 18080
  r=$(run noop 18080 $np); echo "$r" >> "$work/noop.txt"
  printf '%-6s %-4s %12s %9s %9s %7s %11s\n' noop "$i" $r
  kill $np; wait $np 2>/dev/null || true

  rm -rf "$work/data"
  "$work/sluice" serve --policy "$work/policy.yaml" --log-level error & sp=$!
  wait_port 18081
  r=$(run sluice 18081 $sp); echo "$r" >> "$work/sluice.txt"
  printf '%-6s %-4s %12s %9s %9s %7s %11s\n' sluice "$i" $r
  kill $sp; wait $sp 2>/dev/null || true
done
n_rps=$(cut -d' ' -f1 "$work/noop.txt" | median)
s_rps=$(cut -d' ' -f1 "$work/sluice.txt" | median)
n_p99=$(cut -d' ' -f3 "$work/noop.txt" | median)
s_p99=$(cut -d' ' -f3 "$work/sluice.txt" | median)
n_cpu=$(cut -d' ' -f5 "$work/noop.txt" | median)
s_cpu=$(cut -d' ' -f5 "$work/sluice.txt" | median)
echo "median noop:   $n_rps req/s, p99 $n_p99 ms, $n_cpu CPU-us/req"
echo "median sluice: $s_rps req/s, p99 $s_p99 ms, $s_cpu CPU-us/req"
awk -v s="$s_rps" -v n="$n_rps" 'BEGIN{ printf "ratio sluice/noop: %.2f\n", s/n }'
awk -v s="$s_cpu" -v n="$n_cpu" 'BEGIN{ printf "CPU per request sluice/noop: %.2f\n", s/n }'
