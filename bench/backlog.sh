#!/usr/bin/env bash
# bench/backlog.sh: a backlog of N messages (default 10^7 x 1 KiB, ~10 GiB).
#
# Fills a buffered route whose target is paused (rate 0) with wrk, 1 KiB POST
# bodies, fsync always, in windows of WINDOW seconds, and reports:
#   - ingest rate in the first and the last window (goal: last within 10%)
#   - RSS (anonymous and file-backed) with an empty queue and with the backlog
#   - disk bytes per payload byte
#   - restart-to-ready time with the backlog (SIGTERM, start, first 202)
#   - time to expire a full segment (restart with retention 1s, count segments
#     deleted per second)
# Cleans up its data directory. Needs wrk and ~1.5x N KiB of free disk.
#
#   bench/backlog.sh                       # N=10000000
#   N=1000000 bench/backlog.sh             # a quick version
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-10000000} WINDOW=${WINDOW:-10} CONNS=${CONNS:-256} DIR=${DIR:-$(mktemp -d -p "${TMPDIR:-/tmp}" sluice-backlog-XXXX)}
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk" >&2; exit 1; }
. bench/lib.sh # steal_ticks, port_free, paused_policy
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DIR"' EXIT
port_free 18082
go build -o "$DIR/sluice" ./cmd/sluice

policy() { paused_policy "$DIR/policy.yaml" 18082 "$DIR/data" always "retention: $1"; }
wait_ready() { # prints seconds until a POST is answered 202
  local t0=$(date +%s.%N)
  for _ in $(seq 6000); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -XPOST --data x http://127.0.0.1:18082/api/orders 2>/dev/null || true)
    [ "$code" = 202 ] && { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}'; return 0; }
    sleep 0.01
  done
  echo "never ready" >&2; return 1
}
stop() { kill -TERM "$1"; for _ in $(seq 600); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; }
rss() { awk '/^RssAnon/ {a=$2} /^RssFile/ {f=$2} END {printf "anon %.1f MiB, file %.1f MiB", a/1024, f/1024}' /proc/$1/status; }
start() { "$DIR/sluice" serve --policy "$DIR/policy.yaml" --log-level "${1:-warn}" >/dev/null 2>>"$DIR/log" & echo $!; }

echo "machine: $(nproc) cpu, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | xargs), $(uname -r); disk: $(df -h "$DIR" | awk 'NR==2 {print $2" total, "$4" free"}')"
policy 72h
pid=$(start); wait_ready >/dev/null
echo "empty queue: RSS $(rss $pid)"
total=0; first=""; last=""; w=0
while [ "$total" -lt "$N" ]; do
  s0=$(steal_ticks)
  out=$(wrk -t2 -c"$CONNS" -d"${WINDOW}s" -s bench/post.lua http://127.0.0.1:18082/api/orders)
  s1=$(steal_ticks)
  st=$(steal_pct "$s0" "$s1")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out"); rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  total=$((total + reqs)); w=$((w + 1)); last=$rps; [ -z "$first" ] && first=$rps
  echo "window $w: $rps req/s, total $total, CPU steal $st%"
done
filled=$(date +%s)
echo "backlog of $total: RSS $(rss $pid)"
echo "ingest: first window $first req/s, last window $last req/s, last/first $(awk -v a="$first" -v b="$last" 'BEGIN{printf "%.2f", b/a}')"
stop $pid
# Allocated blocks, not apparent sizes: a segment's bbolt file is sized
# sparsely for its mapping, and most of it is never written.
bytes=$(du -s --block-size=1 "$DIR/data" | cut -f1)
apparent=$(du -sb "$DIR/data" | cut -f1)
echo "disk: $bytes bytes allocated ($apparent apparent) for $total x 1 KiB payloads: $(awk -v b="$bytes" -v n="$total" 'BEGIN{printf "%.2f", b/(n*1024)}') disk bytes per payload byte"
pid=$(start); echo "restart with the backlog: ready (first 202) after $(wait_ready) s; RSS $(rss $pid)"
stop $pid
segs=$(ls "$DIR"/data/queues/orders/seg-*.db | wc -l)
policy 1m # the floor of storage.retention: wait until the newest message is older
while [ $(( $(date +%s) - filled )) -le 61 ]; do sleep 1; done
t0=$(date +%s.%N); pid=$(start info)
while [ "$(ls "$DIR"/data/queues/orders/seg-*.db 2>/dev/null | wc -l)" -gt 2 ]; do sleep 0.2; done
t1=$(date +%s.%N)
stop $pid
if [ "$segs" -gt 2 ]; then
  awk -v a="$t0" -v b="$t1" -v n="$segs" 'BEGIN{printf "expiry: %d segments (of undelivered messages, each counted) expired in %.1f s: %.3f s per segment\n", n-2, b-a, (b-a)/(n-2)}'
else
  echo "expiry: not measured: the fill made $segs segment(s) and the newest two are never expired here (raise N)"
fi
grep -c "retention expired undelivered" "$DIR/log" | sed 's/^/expiry log lines: /'
