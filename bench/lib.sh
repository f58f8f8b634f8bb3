# bench/lib.sh: helpers shared by the ingest scripts (source it).

# port_free PORT...: fail if something already listens on a port, e.g. a
# server left from an earlier run, which would take this run's load unseen.
port_free() {
  local p
  for p in "$@"; do
    if (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then
      echo "port $p is already in use (a server left from an earlier run?): stop it first" >&2
      return 1
    fi
  done
}

# paused_policy FILE PORT DATA FSYNC [STORAGE...]: a policy with one buffered
# route, /api/orders, whose target is paused (rate 0), so that only ingest
# runs; STORAGE adds keys to the storage mapping (such as "retention: 1h").
paused_policy() {
  local file=$1 port=$2 data=$3 fsync=$4; shift 4
  local extra=""; for kv in "$@"; do extra="$extra, $kv"; done
  cat > "$file" <<YAML
listen: 127.0.0.1:$port
storage: { dir: $data, fsync: "$fsync"$extra }
routes:
  - name: orders
    match: { path: /api/orders, methods: [POST] }
    targets:
      - { name: paused, url: "http://127.0.0.1:9", rate: 0 }
YAML
}

wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }

# cpu_ticks PID: user + system CPU of a process so far, in clock ticks
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

to_ms() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v); print v+0} else if (v ~ /s$/) {sub(/s/,"",v); print v*1000} else print v }'; }
median() { sort -g | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }

# steal_ticks: "steal total" clock ticks of all CPUs so far (/proc/stat).
# On a virtual machine, steal is the time the host ran someone else while
# this guest had work: a run with much steal measured the neighbours.
steal_ticks() { awk '$1=="cpu" { t=0; for (i=2;i<=NF;i++) t+=$i; print $9, t; exit }' /proc/stat; }
# steal_pct BEFORE AFTER: steal as a % of all CPU time between two steal_ticks
steal_pct() { awk -v a="$1" -v b="$2" 'BEGIN{ split(a,x," "); split(b,y," "); d=y[2]-x[2]; printf "%.0f", (d > 0 ? (y[1]-x[1])*100/d : 0) }'; }

# wrk_post PORT PID: one wrk run of 1 KiB POSTs (THREADS, CONNS, DURATION);
# prints "rps p50 p99 non2xx cpu_us_per_req steal_pct" (latencies in ms).
# CPU per request is the server's user + system time over the requests wrk
# completed: on a shared machine it moves less than req/s. steal_pct is the
# share of the run's CPU time the host took away (see steal_ticks).
wrk_post() {
  local out c0 c1 s0 s1
  c0=$(cpu_ticks "$2"); s0=$(steal_ticks)
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s bench/post.lua "http://127.0.0.1:$1/api/orders")
  c1=$(cpu_ticks "$2"); s1=$(steal_ticks)
  local rps p50 p99 non2xx reqs cpr
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  cpr=$(awk -v a="$c0" -v b="$c1" -v n="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN{ printf "%.1f", (b-a)/hz*1e6/n }')
  local st
  st=$(steal_pct "$s0" "$s1")
  echo "$rps $(to_ms "$p50") $(to_ms "$p99") ${non2xx:-0} $cpr $st"
}

# writer_cycle LOG: "requests_per_commit avg_commit_ms" from the line sluice's
# writer logs when it stops (log level info).
writer_cycle() {
  awk '/writer stopped/ { for (i=1;i<=NF;i++) { split($i,kv,"="); if (kv[1]=="requests_per_commit") r=kv[2]; if (kv[1]=="avg_commit") c=kv[2] } }
       END { v=c; if (v ~ /µs$/) { sub(/µs$/,"",v); v=v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v=v*1000 }; printf "%s %.3f\n", r, v }' "$1"
}

machine() { echo "machine: $(nproc) cpu, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | xargs), $(uname -r)"; }
