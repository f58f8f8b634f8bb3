#!/bin/sh
# Rate accuracy of a drainer: per-second histogram of deliveries to a no-op
# fasthttp downstream on 127.0.0.1, over a backlog, at 50/s, 500/s and 5000/s.
#
#   bench/drain_accuracy.sh                 # 12s per rate
#   SECONDS_PER_RATE=60 bench/drain_accuracy.sh
#   RATES=100,1000 bench/drain_accuracy.sh
#
# Columns: configured rate, token-bucket burst, complete wall-clock seconds
# measured, mean deliveries per complete second, its error, the busiest
# wall-clock second (the first, with the burst, included), the busiest 1s
# window anywhere, the guarantee (rate + burst), and the most requests in
# flight at once (concurrency is 16, the default).
set -eu
cd "$(dirname "$0")/.."
secs=${SECONDS_PER_RATE:-12}
rates=${RATES:-50,500,5000}
out=$(SLUICE_RATE_ACCURACY=long SLUICE_RATE_ACCURACY_SECONDS=$secs SLUICE_RATE_ACCURACY_RATES=$rates \
	go test -count=1 -run 'TestRateAccuracy' -v -timeout 30m ./drain/) || true
echo "$out" | grep -E '^(--- FAIL|FAIL|ok)' || true
echo
printf '| %-10s | %-5s | %-7s | %-10s | %-7s | %-12s | %-10s | %-10s | %-8s |\n' \
	configured burst seconds "mean/s" error "worst second" "worst 1s" "limit" "max conc"
printf '| %-10s | %-5s | %-7s | %-10s | %-7s | %-12s | %-10s | %-10s | %-8s |\n' \
	---------- ----- ------- ---------- ------- ------------ ---------- ---------- --------
echo "$out" | grep -o 'ACCURACY .*' | while read -r _ rest; do
	eval "$(echo "$rest" | tr ' ' '\n' | sed 's/^\([a-z_0-9]*\)=/\1=/')"
	printf '| %-10s | %-5s | %-7s | %-10s | %-7s | %-12s | %-10s | %-10s | %-8s |\n' \
		"$rate/s" "$burst" "$seconds" "$mean" "$err" "$worst_second" "$worst_1s_window" "$limit" "$max_concurrency"
done
