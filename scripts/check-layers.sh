#!/usr/bin/env bash
# The sans-IO cores must stay pure: no async runtime, no files, sockets, clocks, threads or
# hash-order iteration. A violation here breaks the simulator's determinism silently, so it is
# rejected loudly instead. (Rules from shared/STYLE.md, "Recommended workspace layout".)
set -euo pipefail
cd "$(dirname "$0")/.."

status=0
pure_crates=(keel-raft keel-node keel-membership keel-placement keel-auth)

for crate in "${pure_crates[@]}"; do
  deps=$(cargo tree -p "$crate" -e normal --prefix none --format '{p}' 2>/dev/null | awk '{print $1}' | sort -u)
  for banned in tokio tonic prost rand mio; do
    if grep -qx "$banned" <<<"$deps"; then
      echo "layering: $crate depends on $banned"
      status=1
    fi
  done
  if grep -rnE 'std::fs|std::net|Instant::now|SystemTime|thread_rng|std::thread|HashMap|HashSet' "crates/$crate/src" \
      | grep -v '^\s*//' ; then
    echo "layering: $crate uses IO, clocks, threads or hash-ordered collections (above)"
    status=1
  fi
done

# keel-check is a standalone tool: it must not depend on any other keel crate.
if cargo tree -p keel-check -e normal --prefix none --format '{p}' | awk '{print $1}' | grep -v '^keel-check$' | grep -q '^keel-'; then
  echo "layering: keel-check depends on another keel crate"
  status=1
fi

[ "$status" = 0 ] && echo "layering: ok"
exit "$status"
