#!/usr/bin/env bash
# bench/serve_on_spare.sh MODE: a server command for bench/ab.sh that stands
# for sluice's steady state, where deleted segments leave spare logs that
# new heads write over (buffer/segment.go, takeSpare). It serves the paused
# route of bench/ab.sh with 512 MiB segments (so that one spare outlasts a
# run) on $DATA, and first, with MODE warm or cold, seeds one 512 MiB spare
# log of bound 1 there; cold then drops the page cache (root), as for a
# spare that has been on disk for days. MODE fresh seeds nothing.
#
#   bench/ab.sh 5 'fresh=bench/serve_on_spare.sh fresh' 'warm=bench/serve_on_spare.sh warm' 'cold=bench/serve_on_spare.sh cold'
#   CONNS=16 bench/ab.sh 5 ...
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: serve_on_spare.sh fresh|warm|cold}
: "${DATA:?run from bench/ab.sh}" "${SLUICE:?run from bench/ab.sh}" "${WORK:?run from bench/ab.sh}"
. bench/lib.sh
paused_policy "$WORK/spare-policy.yaml" 18081 "$DATA" "${FSYNC:-always}" "segment_bytes: 512MiB"
q=$DATA/queues/orders
mkdir -p "$q"
case $mode in
  fresh) ;;
  warm|cold)
    head -c 512M /dev/zero > "$q/spare-0000000000000001.log"
    sync
    if [ "$mode" = cold ]; then echo 1 > /proc/sys/vm/drop_caches; fi ;;
  *) echo "serve_on_spare.sh: unknown mode $mode (fresh, warm or cold)" >&2; exit 2 ;;
esac
exec "$SLUICE" serve --policy "$WORK/spare-policy.yaml"
