#!/usr/bin/env bash
# bench/passthrough.sh: passthrough throughput, sluice vs. nginx at nginx's best.
#
# Both proxy the same upstream (bench/noop, a fasthttp server answering 202)
# under the same wrk load (-t2 -c128, 1 KiB POST). sluice runs one
# passthrough route with its defaults.
#
# The reference, nginx, is given its best configuration for this load:
#   - upstream { keepalive K; } with K = max(256, CONNS): a pool at least as
#     large as the client connections, so that no request waits for or opens
#     an upstream connection (with a smaller pool, as in this script before,
#     nginx closes and redials upstream connections under load and loses
#     ~20%);
#   - proxy_http_version 1.1 and proxy_set_header Connection "": without them
#     nginx speaks HTTP/1.0 upstream and keeps no connection alive;
#   - access_log off (sluice logs no request either);
#   - worker_processes 1 and auto (one per CPU) are both measured each round,
#     and the one with the higher median req/s is the reference: which wins
#     depends on the machine and its load (on 2 shared CPUs, 2026-12-05,
#     auto won by a third at -c128; issue 27's figures were against one).
# Each round runs nginx (1), nginx (auto) and sluice in turn, RUNS rounds;
# the script prints every run, the medians, the ratio of the medians and
# the ratio of each round (sluice / the reference's run of that round).
# With FLOORS=1 each round also runs bench/passfloor's two floors (a bare Go
# relay, a minimal fasthttp proxy): what the model sluice is built on costs
# on this machine, with nothing of sluice in it.
#
# cpu_us/req is the proxy's CPU (user + system) per request, up_us/req the
# upstream's in the same run: the upstream does the same work behind every
# proxy, so on a machine shared with other jobs, cpu_us/req divided by
# up_us/req (printed as cpu/up) moves less with the neighbours than either.
#
#   bench/passthrough.sh                         # 3 rounds of 4s runs, -c128
#   RUNS=5 DURATION=10s CONNS=512 bench/passthrough.sh
#   PROFILE=/tmp/pass.prof bench/passthrough.sh   # CPU profile of sluice's last run
#   SLUICE_ENV="GOMAXPROCS=1" bench/passthrough.sh  # sluice with these environment variables
#   FLOORS=1 bench/passthrough.sh                 # and the floors, each round
#   SLUICE_B=/tmp/sluice-old bench/passthrough.sh # and another build of sluice, each round
#   EVENT_LOOPS=2 bench/passthrough.sh            # sluice with server.event_loops: 2 (default auto; 0: none)
#   EVENT_LOOPS_B=0 bench/passthrough.sh          # and sluice with that many loops, as sluice-b, each round
#   FLOORS=1 FLOOR_KINDS="relay epoll" bench/passthrough.sh  # the floors named (relay fasthttp epoll epoll2)
#
# The machine's load average is printed before and after: on a shared
# machine, read the round ratios (runs seconds apart), not the absolute rates.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3} DURATION=${DURATION:-4s} CONNS=${CONNS:-128} THREADS=${THREADS:-2} PROFILE=${PROFILE:-} SLUICE_ENV=${SLUICE_ENV:-} FLOORS=${FLOORS:-} SLUICE_B=${SLUICE_B:-}
EVENT_LOOPS=${EVENT_LOOPS:-auto} EVENT_LOOPS_B=${EVENT_LOOPS_B:-}
[[ $EVENT_LOOPS =~ ^([0-9]+|auto)$ && $EVENT_LOOPS_B =~ ^([0-9]*|auto)$ ]] || { echo "EVENT_LOOPS, EVENT_LOOPS_B: want auto or a whole number" >&2; exit 2; }
for v in RUNS CONNS THREADS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "$v=${!v}: want a positive whole number" >&2; exit 2; }
done
[[ $DURATION =~ ^[1-9][0-9]*[smh]?$ ]] || { echo "DURATION=$DURATION: want a wrk duration such as 4s" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk is required: apt-get install -y wrk" >&2; exit 1; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "nginx is required: apt-get install -y nginx" >&2; exit 1; }
KEEPALIVE=$(( CONNS > 256 ? CONNS : 256 ))

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
go build -o "$work/sluice" ./cmd/sluice
go build -o "$work/noop" ./bench/noop
go build -o "$work/passfloor" ./bench/passfloor

# policy LOOPS: sluice's policy, with server.event_loops LOOPS
policy() {
  cat <<YAML
listen: 127.0.0.1:18082
server: { event_loops: $1 }
storage: { dir: $work/data }
routes:
  - name: api
    match: { path: / }
    mode: passthrough
    upstream: http://127.0.0.1:18080
YAML
}
policy "$EVENT_LOOPS" > "$work/policy.yaml"
policy "${EVENT_LOOPS_B:-$EVENT_LOOPS}" > "$work/policy-b.yaml"
if [ -n "$EVENT_LOOPS_B" ] && [ -z "$SLUICE_B" ]; then SLUICE_B=$work/sluice; fi

# nginx_conf WORKERS: nginx's configuration (see the header) in $work/nginx-WORKERS
nginx_conf() {
  local d=$work/nginx-$1
  mkdir -p "$d"
  cat > "$d/nginx.conf" <<CONF
worker_processes $1;
daemon off;
master_process on;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $d/body;
  proxy_temp_path $d/proxy;
  fastcgi_temp_path $d/fastcgi;
  uwsgi_temp_path $d/uwsgi;
  scgi_temp_path $d/scgi;
  client_max_body_size 1m;
  upstream noop { server 127.0.0.1:18080; keepalive $KEEPALIVE; }
  server {
    listen 127.0.0.1:18083 backlog=4096;
    location / {
      proxy_pass http://noop;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF
}
nginx_conf 1
nginx_conf auto

. bench/lib.sh
# cpu_ticks PID: as lib.sh's, plus the process's children (nginx's workers)
cpu_ticks() {
  local t=0 p
  for p in "$1" $(pgrep -P "$1"); do t=$(( t + $(awk '{print $14+$15}' "/proc/$p/stat") )); done
  echo "$t"
}
port_free 18080 18082 18083 18084

"$work/noop" -listen 127.0.0.1:18080 & np=$!
wait_port 18080

machine
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "load: wrk -t$THREADS -c$CONNS -d$DURATION, 1 KiB POST; upstream bench/noop; $("$NGINX" -v 2>&1)"
echo "sluice: server.event_loops $EVENT_LOOPS${EVENT_LOOPS_B:+; sluice-b: $EVENT_LOOPS_B}"
echo "nginx: upstream keepalive $KEEPALIVE, HTTP/1.1, Connection \"\", access_log off; worker_processes 1 and auto ($(nproc))"
row() { printf '%-12s %-4s %10s %8s %8s %7s %11s %7s %10s %6s\n' "$@"; }
row server round req/s p50_ms p99_ms non2xx cpu_us/req steal% up_us/req cpu/up
: > "$work/n1.txt"; : > "$work/nauto.txt"; : > "$work/sluice.txt"; : > "$work/relay.txt"; : > "$work/fasthttp.txt"; : > "$work/epoll.txt"; : > "$work/epoll2.txt"; : > "$work/sluice-b.txt"
secs=$(awk -v d="$DURATION" 'BEGIN{ n=d+0; if (d ~ /m$/) n*=60; if (d ~ /h$/) n*=3600; print n }')
# measure PORT PID: wrk_post's fields, then the upstream's CPU per request and cpu/up
measure() {
  local u0 u1 r
  u0=$(cpu_ticks "$np"); r=$(wrk_post "$1" "$2"); u1=$(cpu_ticks "$np")
  awk -v r="$r" -v a="$u0" -v b="$u1" -v s="$secs" -v hz="$(getconf CLK_TCK)" 'BEGIN{ split(r, f, " "); up=(b-a)/hz*1e6/(f[1]*s); printf "%s %.1f %.2f\n", r, up, (up > 0 ? f[5]/up : 0) }'
}
for i in $(seq "$RUNS"); do
  for w in 1 auto; do
    "$NGINX" -c "$work/nginx-$w/nginx.conf" -p "$work/nginx-$w" 2>>"$work/nginx-$w/error.log" & xp=$!
    wait_port 18083
    r=$(measure 18083 "$xp"); echo "$r" >> "$work/n$w.txt"
    row "nginx($w)" "$i" $r
    kill -QUIT $xp; wait $xp 2>/dev/null || true
    while (exec 3<>/dev/tcp/127.0.0.1/18083) 2>/dev/null; do sleep 0.05; done
  done

  prof=()
  if [ -n "$PROFILE" ] && [ "$i" = "$RUNS" ]; then prof=(--cpuprofile "$PROFILE"); fi
  env $SLUICE_ENV "$work/sluice" serve --policy "$work/policy.yaml" --log-level error "${prof[@]}" & sp=$!
  wait_port 18082
  r=$(measure 18082 "$sp"); echo "$r" >> "$work/sluice.txt"
  row sluice "$i" $r
  kill $sp; wait $sp 2>/dev/null || true

  if [ -n "$SLUICE_B" ]; then
    env $SLUICE_ENV "$SLUICE_B" serve --policy "$work/policy-b.yaml" --log-level error & sp=$!
    wait_port 18082
    r=$(measure 18082 "$sp"); echo "$r" >> "$work/sluice-b.txt"
    row sluice-b "$i" $r
    kill $sp; wait $sp 2>/dev/null || true
    while (exec 3<>/dev/tcp/127.0.0.1/18082) 2>/dev/null; do sleep 0.05; done
  fi

  if [ -n "$FLOORS" ]; then
    for k in ${FLOOR_KINDS:-relay fasthttp}; do
      "$work/passfloor" -kind "$k" -listen 127.0.0.1:18084 -upstream 127.0.0.1:18080 & fp=$!
      wait_port 18084
      r=$(measure 18084 "$fp"); echo "$r" >> "$work/$k.txt"
      row "$k" "$i" $r
      kill $fp; wait $fp 2>/dev/null || true
      while (exec 3<>/dev/tcp/127.0.0.1/18084) 2>/dev/null; do sleep 0.05; done
    done
  fi
done
kill $np; wait $np 2>/dev/null || true

echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)${SLUICE_ENV:+; sluice ran with $SLUICE_ENV}"
med() { cut -d' ' -f"$2" "$work/$1.txt" | median; }
n1=$(med n1 1) na=$(med nauto 1)
ref=n1 refname="nginx(1)"
if awk -v a="$na" -v b="$n1" 'BEGIN{ exit !(a > b) }'; then ref=nauto refname="nginx(auto)"; fi
medrow() { printf 'median %-12s %10s req/s, p99 %s ms, %s cpu_us/req, cpu/up %s\n' "$1:" "$(med "$2" 1)" "$(med "$2" 3)" "$(med "$2" 5)" "$(med "$2" 8)"; }
medrow "nginx(1)" n1
medrow "nginx(auto)" nauto
medrow sluice sluice
if [ -n "$SLUICE_B" ]; then medrow sluice-b sluice-b; fi
if [ -n "$FLOORS" ]; then for k in ${FLOOR_KINDS:-relay fasthttp}; do medrow "$k" "$k"; done; fi
echo "reference: $refname (the faster median)"
awk -v s="$(med sluice 1)" -v n="$(med $ref 1)" 'BEGIN{ printf "ratio sluice/%s: %.2f (goal 1.10)\n", "'"$refname"'", s/n }'
if [ -n "$SLUICE_B" ]; then
  printf 'round ratios sluice/sluice-b, cpu/up:'
  paste -d' ' "$work/sluice.txt" "$work/sluice-b.txt" | awk '{ printf " %.2f", $8/$16 } END { print "" }'
fi
if [ -n "$FLOORS" ]; then
  for k in ${FLOOR_KINDS:-relay fasthttp}; do
    awk -v s="$(med $k 1)" -v n="$(med $ref 1)" -v k=$k 'BEGIN{ printf "ratio %s/%s: %.2f\n", k, "'"$refname"'", s/n }'
  done
fi
printf 'round ratios:'
paste -d' ' "$work/sluice.txt" "$work/$ref.txt" | awk '{ printf " %.2f", $1/$9 } END { print "" }'
