#!/usr/bin/env bash
# bench/passthrough.sh: passthrough throughput, sluice vs. nginx.
#
# Both proxy the same upstream (bench/noop, which answers 202) with upstream
# keep-alive: nginx with one worker, proxy_pass to an upstream block with
# keepalive 64, HTTP/1.1 and Connection "" (its config is written below);
# sluice with one passthrough route. Alternates the two under the same wrk
# load (-t2 -c128, 1 KiB POST), RUNS times each, and prints requests/s and
# latency per run, the medians and the ratio sluice/nginx.
#
#   bench/passthrough.sh                        # 3 runs of 10s each
#   RUNS=5 DURATION=20s CONNS=128 bench/passthrough.sh
#   PROFILE=/tmp/pass.prof bench/passthrough.sh  # CPU profile of sluice's last run
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3} DURATION=${DURATION:-10s} CONNS=${CONNS:-128} THREADS=${THREADS:-2} PROFILE=${PROFILE:-}
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk" >&2; exit 1; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "nginx is required: apt-get install -y nginx" >&2; exit 1; }

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
go build -o "$work/sluice" ./cmd/sluice
go build -o "$work/noop" ./bench/noop

cat > "$work/policy.yaml" <<YAML
listen: 127.0.0.1:18082
storage: { dir: $work/data }
routes:
  - name: api
    match: { path: / }
    mode: passthrough
    upstream: http://127.0.0.1:18080
YAML

mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
master_process on;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  client_max_body_size 1m;
  upstream noop { server 127.0.0.1:18080; keepalive 64; }
  server {
    listen 127.0.0.1:18083;
    location / {
      proxy_pass http://noop;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF

. bench/lib.sh
port_free 18080 18082 18083

# run PORT: one wrk run; prints "rps p50 p99 non2xx" (latencies in ms)
run() {
  local out
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s bench/post.lua "http://127.0.0.1:$1/api/orders")
  local rps p50 p99 non2xx
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  echo "$rps $(to_ms "$p50") $(to_ms "$p99") ${non2xx:-0}"
}

"$work/noop" -listen 127.0.0.1:18080 & np=$!
wait_port 18080

machine
echo "load: wrk -t$THREADS -c$CONNS -d$DURATION, 1 KiB POST; upstream bench/noop; $("$NGINX" -v 2>&1)"
printf '%-6s %-4s %12s %9s %9s %7s %11s %7s\n' server run req/s p50_ms p99_ms non2xx cpu_us/req steal%
: > "$work/nginx.txt"; : > "$work/sluice.txt"
for i in $(seq "$RUNS"); do
  "$NGINX" -c "$work/nginx/nginx.conf" -p "$work/nginx" 2>>"$work/nginx/error.log" & xp=$!
  wait_port 18083
  r=$(run 18083); echo "$r" >> "$work/nginx.txt"
  printf '%-6s %-4s %12s %9s %9s %7s %11s %7s\n' nginx "$i" $r
  kill -QUIT $xp; wait $xp 2>/dev/null || true

  prof=()
  if [ -n "$PROFILE" ] && [ "$i" = "$RUNS" ]; then prof=(--cpuprofile "$PROFILE"); fi
  "$work/sluice" serve --policy "$work/policy.yaml" --log-level error "${prof[@]}" & sp=$!
  wait_port 18082
  r=$(run 18082); echo "$r" >> "$work/sluice.txt"
  printf '%-6s %-4s %12s %9s %9s %7s %11s %7s\n' sluice "$i" $r
  kill $sp; wait $sp 2>/dev/null || true
done
kill $np; wait $np 2>/dev/null || true
x_rps=$(cut -d' ' -f1 "$work/nginx.txt" | median)
s_rps=$(cut -d' ' -f1 "$work/sluice.txt" | median)
x_p99=$(cut -d' ' -f3 "$work/nginx.txt" | median)
s_p99=$(cut -d' ' -f3 "$work/sluice.txt" | median)
echo "median nginx:  $x_rps req/s, p99 $x_p99 ms"
echo "median sluice: $s_rps req/s, p99 $s_p99 ms"
awk -v s="$s_rps" -v n="$x_rps" 'BEGIN{ printf "ratio sluice/nginx: %.2f (goal 1.1)\n", s/n }'
