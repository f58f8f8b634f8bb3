#!/usr/bin/env bash
# bench/drain.sh: the drain ceiling end to end, as a ratio of a plain
# fasthttp client to the same downstream in the same run.
#
# Reference: bench/blast, one fasthttp.HostClient with CONC connections and
# CONC workers (a keep-alive pool as large as the workers, no rate limit:
# its best configuration), sends N 1 KiB POSTs to bench/noop.
# sluice: N 1 KiB POSTs are stored with the route's TARGETS targets paused
# (rate 0), sluice is stopped, then started again with every target at
# rate unlimited, concurrency CONC, to the same bench/noop; the rate is
# what noop counts between its first delivery and the last (TARGETS x N),
# and CPU is sluice's over that time, per delivered message. Alternating,
# RUNS rounds; medians, ranges and the ratio of each round.
#
#   bench/drain.sh                       # N=60000 CONC=64 TARGETS=1 FSYNC=always
#   TARGETS=4 N=20000 bench/drain.sh     # fan-out: aggregate deliveries/s
#   ENGINE=jetstream N=20000 bench/drain.sh  # storage.engine jetstream, embedded server
#   ENGINE=jetstream REPLICAS=3 N=20000 bench/drain.sh  # on a 3-server cluster (bench/natscluster)
#   EVENT_LOOPS_B=0 bench/drain.sh       # and, each round, sluice with server.event_loops: 0 (attempts
#                                        # in goroutines, not on delivery loops), as sluice-b
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3} N=${N:-60000} CONC=${CONC:-64} TARGETS=${TARGETS:-1} FSYNC=${FSYNC:-always} ENGINE=${ENGINE:-bbolt} REPLICAS=${REPLICAS:-1}
EVENT_LOOPS=${EVENT_LOOPS:-auto} EVENT_LOOPS_B=${EVENT_LOOPS_B:-}
[[ $EVENT_LOOPS =~ ^([0-9]+|auto)$ && $EVENT_LOOPS_B =~ ^([0-9]*|auto)$ ]] || { echo "EVENT_LOOPS, EVENT_LOOPS_B: want auto or a whole number" >&2; exit 2; }
. bench/lib.sh
port_free 18080 18082

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
go build -o "$work/sluice" ./cmd/sluice
go build -o "$work/noop" ./bench/noop
go build -o "$work/blast" ./bench/blast

policy() { # FILE RATE [EVENT_LOOPS]
  {
    echo "listen: 127.0.0.1:18080"
    echo "server: { event_loops: ${3:-$EVENT_LOOPS} }"
    if [ "$ENGINE" = jetstream ] && [ "$REPLICAS" -gt 1 ]; then
      echo "storage: { engine: jetstream, dir: $work/data, jetstream: { urls: [$urls], replicas: $REPLICAS, stream_prefix: run$i } }"
    elif [ "$ENGINE" = jetstream ]; then
      echo "storage: { engine: jetstream, dir: $work/data }" # the embedded server syncs every write
    else
      echo "storage: { dir: $work/data, fsync: \"$FSYNC\" }"
    fi
    echo "routes:"
    echo "  - name: orders"
    echo "    match: { path: /api/orders, methods: [POST] }"
    echo "    targets:"
    for t in $(seq "$TARGETS"); do
      echo "      - { name: t$t, url: \"http://127.0.0.1:18082\", rate: $2, concurrency: $CONC }"
    done
  } > "$1"
}
if [ "$ENGINE" = jetstream ] && [ "$REPLICAS" -gt 1 ]; then
  go build -o "$work/natscluster" ./bench/natscluster
  "$work/natscluster" -n "$REPLICAS" -dir "$work/nats" > "$work/urls" &
  for _ in $(seq 600); do [ -s "$work/urls" ] && break; sleep 0.1; done
  urls=$(head -1 "$work/urls")
fi

drain_round() { # NAME EVENT_LOOPS: one round of sluice, results in $work/NAME.txt
  policy "$work/fill.yaml" 0 "$2"
  policy "$work/drain.yaml" unlimited "$2"
  rm -rf "$work/data"
  "$work/sluice" serve --policy "$work/fill.yaml" 2>"$work/fill.log" & sp=$!
  wait_port 18080
  "$work/blast" -url http://127.0.0.1:18080/api/orders -n "$N" -c 64 >/dev/null
  kill -TERM $sp; wait $sp 2>/dev/null || true
  "$work/noop" -listen 127.0.0.1:18082 & np=$!
  wait_port 18082
  s0=$(steal_ticks)
  "$work/sluice" serve --policy "$work/drain.yaml" 2>"$work/drain.log" & sp=$!
  c0=$(cpu_ticks $sp)
  r=$("$work/blast" -watch -url http://127.0.0.1:18082/_count -n $((N * TARGETS)))
  c1=$(cpu_ticks $sp)
  st=$(steal_pct "$s0" "$(steal_ticks)")
  kill -TERM $sp; wait $sp 2>/dev/null || true
  kill $np; wait $np 2>/dev/null || true
  rps=$(awk '{print $6}' <<<"$r")
  cpu=$(awk -v a="$c0" -v b="$c1" -v n=$((N * TARGETS)) -v hz="$(getconf CLK_TCK)" 'BEGIN{ printf "%.1f", (b-a)/hz*1e6/n }')
  echo "$rps $cpu" >> "$work/$1.txt"
  printf '%-8s %-4s %10.0f %12s %7s\n' "$1" "$i" "$rps" "$cpu" "$st"
}

machine
echo "N=$N CONC=$CONC TARGETS=$TARGETS engine=$ENGINE replicas=$REPLICAS fsync=$FSYNC; reference: bench/blast (fasthttp.HostClient, MaxConns=$CONC, $CONC workers)"
printf '%-8s %-4s %10s %12s %7s\n' who run msgs/s cpu_us/msg steal%
for i in $(seq "$RUNS"); do
  # The reference.
  "$work/noop" -listen 127.0.0.1:18082 & np=$!
  wait_port 18082
  s0=$(steal_ticks)
  r=$("$work/blast" -url http://127.0.0.1:18082/api/orders -n "$N" -c "$CONC")
  st=$(steal_pct "$s0" "$(steal_ticks)")
  kill $np; wait $np 2>/dev/null || true
  rps=$(awk '{print $6}' <<<"$r"); cpu=$(awk '{print $8}' <<<"$r")
  echo "$rps $cpu" >> "$work/client.txt"
  printf '%-8s %-4s %10.0f %12s %7s\n' client "$i" "$rps" "$cpu" "$st"

  # sluice: fill with the targets paused, then drain.
  drain_round sluice "$EVENT_LOOPS"
  if [ -n "$EVENT_LOOPS_B" ]; then drain_round sluice-b "$EVENT_LOOPS_B"; fi
done
paste "$work/sluice.txt" "$work/client.txt" | awk '{ print $1/$3 }' > "$work/ratio.txt"
whos="client sluice"
if [ -n "$EVENT_LOOPS_B" ]; then
  whos="$whos sluice-b"
  paste "$work/sluice-b.txt" "$work/client.txt" | awk '{ print $1/$3 }' > "$work/ratio-b.txt"
fi
for w in $whos; do
  med=$(cut -d' ' -f1 "$work/$w.txt" | median); lo=$(cut -d' ' -f1 "$work/$w.txt" | sort -g | head -1)
  hi=$(cut -d' ' -f1 "$work/$w.txt" | sort -g | tail -1); cpu=$(cut -d' ' -f2 "$work/$w.txt" | median)
  printf '%-7s median %.0f msgs/s (%.0f-%.0f), cpu %s us/msg\n' "$w" "$med" "$lo" "$hi" "$cpu"
done
echo "ratio sluice/client (event_loops $EVENT_LOOPS), round by round: $(tr '\n' ' ' < "$work/ratio.txt")-> median $(median < "$work/ratio.txt")"
if [ -n "$EVENT_LOOPS_B" ]; then
  echo "ratio sluice-b/client (event_loops $EVENT_LOOPS_B), round by round: $(tr '\n' ' ' < "$work/ratio-b.txt")-> median $(median < "$work/ratio-b.txt")"
fi
