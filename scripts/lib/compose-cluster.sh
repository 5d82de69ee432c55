# shellcheck shell=bash disable=SC2154 # dlq, operator, started: set by scripts/test-compose
# The checks of `scripts/test-compose --cluster`, sourced by it once compose.yaml and
# compose.cluster.yaml are up (COMPOSE_FILE names both) and its steps 1 and 2 have passed: every
# container healthy, loadgen's burst final. It uses test-compose's helpers (pass, fail, log,
# await, sql, place, status_is, $api, $operator).
#
#  C1. NATS: three nodes in one cluster; each of the three streams at three replicas, with a
#      leader and both followers current.
#  C2. Both order-apis take orders and both dlq-services answer the review API.
#  C3. A network partition under load: two loadgens (one per order-api) place orders for
#      PARTITION_BEFORE + PARTITION_FOR + PARTITION_AFTER seconds; PARTITION_BEFORE seconds in,
#      the node leading `orders_stream` is cut off from the compose network (`docker network
#      disconnect`: its routes and its clients' connections go dark, the process keeps running);
#      PARTITION_FOR seconds later it is connected again. Then: every accepted order final, none
#      reserved twice, the stock exact, one dead letter per dead-lettered order. It prints the
#      orders placed, how long `orders_stream` had no leader, how long the healed node took to
#      catch up, and the latency (accepted to final) of the orders placed during the partition.

PARTITION_BEFORE=${PARTITION_BEFORE:-15}
PARTITION_FOR=${PARTITION_FOR:-30}
PARTITION_AFTER=${PARTITION_AFTER:-15}
PARTITION_RATE=${PARTITION_RATE:-10} # orders per second, per order-api
network=${PROJECT}_default
streams='["orders_stream", "order_events", "orders_unprocessed"]'

# compose.cluster.yaml's nodes: the service that runs each, and its name (`-n`).
nodes=(nats:n1 nats-2:n2 nats-3:n3)
service_of_node() { # n2 -> nats-2
  local pair
  for pair in "${nodes[@]}"; do
    [ "${pair#*:}" != "$1" ] || { echo "${pair%%:*}"; return; }
  done
  fail "no service runs the NATS node $1"
}

# JetStream as one node sees it, read inside its container: the host's published monitoring
# port of a node cut off from the network is cut off too.
jsz() { # service
  docker compose exec -T "$1" wget -q -T 5 -O - "http://localhost:8222/jsz?accounts=true&streams=true&config=true"
}
leader_of() { # service stream -> the node leading it, as that service's node sees it
  jsz "$1" | jq -r --arg s "$2" '[.account_details[]?.stream_detail[]? | select(.name == $s) | .cluster.leader // empty][0] // empty'
}
# Each stream as its leader sees it: only the leader knows whether its followers are current
# (a follower's view of the others is stale). A node that cannot be reached adds nothing; one
# that still believes it leads a stream another node now leads adds a second entry.
streams_view() {
  local pair
  for pair in "${nodes[@]}"; do
    jsz "${pair%%:*}" 2>/dev/null | jq -c --arg me "${pair#*:}" '[.account_details[]?.stream_detail[]?
      | select(.cluster.leader == $me)
      | {stream: .name, replicas: .config.num_replicas, leader: .cluster.leader,
         followers: [.cluster.replicas[]? | "\(.name) current=\(.current)"]}]' || true
  done | jq -sc 'add // []'
}
# Every stream at three replicas, with one leader and both followers current.
streams_replicated() {
  streams_view | jq -e --argjson want "$streams" '. as $v | all($want[]; . as $s
    | [$v[] | select(.stream == $s)] | length == 1 and .[0].replicas == 3
      and (.[0].followers | length == 2 and all(.[]; endswith("current=true"))))'
}

# --- C1. NATS ----------------------------------------------------------------------------------
meta_of_three() { jsz nats | jq -e '.meta_cluster.cluster_size == 3 and (.meta_cluster.leader // "") != ""'; }
await 60 "the JetStream meta group is not three nodes with a leader: $(jsz nats | jq -c .meta_cluster 2>&1)" meta_of_three
await 60 "the streams are not all at three replicas with current followers: $(streams_view 2>&1)" streams_replicated
pass "NATS: three nodes in one JetStream cluster; every stream at three replicas, followers current: $(streams_view)"

# --- C2. Two of each service -------------------------------------------------------------------
api_2=http://127.0.0.1:8084
dlq_2=http://127.0.0.1:8085
first=$(place WIDGET-1 1)
second=$(api=$api_2 place WIDGET-1 1)
await 60 "order $first (through order-api) not reserved" status_is "$first" reserved
await 60 "order $second (through order-api-2) not reserved" status_is "$second" reserved
[ "$(api=$api_2 order_status "$first")" = reserved ] || fail "order-api-2 does not see order $first as reserved"
pass "both order-apis take orders, and each reads the other's: $first, $second reserved"
for url in "$dlq" "$dlq_2"; do
  curl -fsS --max-time 5 "${operator[@]}" "$url/dead-letters?limit=1" | jq -e '.items | type == "array"' >/dev/null ||
    fail "the review API at $url does not list dead letters"
done
pass "both dlq-services answer GET /dead-letters"

# --- C3. A network partition under load --------------------------------------------------------
# The stock as it stands now: each SKU's available + reserved must not change, and its reserved
# units must equal those of its reserved orders once the run settles.
stock_totals() { sql "SELECT string_agg(sku || '=' || (available + reserved), ' ' ORDER BY sku) FROM inventory.inventory"; }
stock_before=$(stock_totals)

leader=$(leader_of nats orders_stream)
[ -n "$leader" ] || fail "orders_stream has no leader before the partition"
cut_service=$(service_of_node "$leader")
cut_container=$(docker compose ps -q "$cut_service")
survivor=nats
[ "$cut_service" = nats ] && survivor=nats-2

loadgen_log=${TMPDIR:-/tmp}/test-compose-partition
rm -f "$loadgen_log".*
load_for=$((PARTITION_BEFORE + PARTITION_FOR + PARTITION_AFTER))
log "partition: two loadgens at $PARTITION_RATE orders/s each for $load_for s; $leader ($cut_service, leading orders_stream) cut off after $PARTITION_BEFORE s for $PARTITION_FOR s"
loadgen_pids=()
for target in order-api order-api-2; do
  # --wait: a dead order whose advisory the cut lost is found by the sweep, which looks once a
  # minute and asks the workers before it takes a message as dead; if no worker answered, it
  # would wait 3 minutes more on a cluster (crates/dlq-service/src/sweep.rs). 420 s covers both.
  docker compose run --rm --no-deps -T -e "ORDER_API_URL=http://$target:8080" loadgen \
    --rate "$PARTITION_RATE" --duration "${load_for}s" --wait 420s --quiet >"$loadgen_log.$target" 2>&1 &
  loadgen_pids+=($!)
done
load_started=$SECONDS
# The run's timeline: these are phases of the load, not waits for a condition.
sleep "$PARTITION_BEFORE"

cut_at=$(sql "SELECT now()")
cut_t=$SECONDS
docker network disconnect "$network" "$cut_container" || fail "docker network disconnect $network $cut_service"
log "partition: $cut_service disconnected from $network"
new_leader_elsewhere() {
  local now; now=$(leader_of "$survivor" orders_stream)
  [ -n "$now" ] && [ "$now" != "$leader" ]
}
await 60 "no other node took the lead of orders_stream after $leader was cut off" new_leader_elsewhere
leaderless=$((SECONDS - cut_t))
new_leader=$(leader_of "$survivor" orders_stream)
pass "$leader cut off: $new_leader leads orders_stream within $leaderless s (polled each second)"

sleep $((cut_t + PARTITION_FOR - SECONDS > 0 ? cut_t + PARTITION_FOR - SECONDS : 0))
healed_at=$(sql "SELECT now()")
heal_t=$SECONDS
# With its service name as alias again: the other nodes' routes and the clients' URLs use it.
docker network connect --alias "$cut_service" "$network" "$cut_container" || fail "docker network connect $network $cut_service"
await 120 "$leader did not catch up after the partition: $(streams_view 2>&1)" streams_replicated
pass "$leader connected again: every stream at three replicas with current followers again within $((SECONDS - heal_t)) s"

for pid in "${loadgen_pids[@]}"; do
  wait "$pid" || fail "a loadgen exited non-zero: $(cat "$loadgen_log".* 2>&1)"
done
log "partition: loadgens done $((SECONDS - load_started)) s after they started"
figure() { awk -v what="$2" '$0 ~ "^  " what " " { print $(NF == 2 ? 2 : 3); exit }' "$loadgen_log.$1"; }
for target in order-api order-api-2; do
  printf '%s\n' "--- loadgen through $target:" && cat "$loadgen_log.$target"
  still=$(awk '/still pending/ { print $3 }' "$loadgen_log.$target")
  [ "$still" = 0 ] || fail "loadgen through $target: $still accepted orders not final"
done

# --- The invariants, over every order of the run (burst included) -------------------------------
await 120 "orders still pending after the partition" none_pending
pass "every accepted order is final: $(sql "SELECT string_agg(status || '=' || n, ' ') FROM (SELECT status, count(*) n FROM order_api.orders GROUP BY 1 ORDER BY 1) s")"
decided=$(sql "SELECT count(*) FROM order_api.orders WHERE status IN ('reserved', 'rejected')")
applied=$(sql "SELECT count(*) FROM inventory.processed_messages WHERE consumer = 'inventory-worker'")
[ "$decided" = "$applied" ] ||
  fail "reserved twice or not at all: $decided orders reserved or rejected, $applied applied by inventory-worker"
pass "0 reserved twice: $applied orders applied once each by the workers, as many as reserved or rejected"
[ "$(stock_totals)" = "$stock_before" ] || fail "stock totals moved: before $stock_before, after $(stock_totals)"
stock_off=$(sql "
  WITH wanted AS (
    SELECT item->>'sku' AS sku, sum((item->>'quantity')::bigint) AS units
    FROM order_api.orders, jsonb_array_elements(items) AS item
    WHERE status = 'reserved' GROUP BY 1)
  SELECT coalesce(string_agg(i.sku || ' reserved ' || i.reserved || ', orders say ' || coalesce(w.units, 0), '; '), '')
  FROM inventory.inventory i LEFT JOIN wanted w USING (sku)
  WHERE i.reserved <> coalesce(w.units, 0)")
[ -z "$stock_off" ] || fail "stock not exact: $stock_off"
pass "stock exact: each SKU's reserved units are its reserved orders' ($(sql "SELECT string_agg(sku || ' ' || reserved, ', ' ORDER BY sku) FROM inventory.inventory"))"
letters_off=$(sql "
  SELECT count(*) FROM order_api.orders o
  WHERE o.status = 'dead_lettered'
    AND (SELECT count(*) FROM dlq.dead_letters d WHERE d.order_id = o.id) <> 1")
strays=$(sql "SELECT count(*) FROM dlq.dead_letters d JOIN order_api.orders o ON o.id = d.order_id WHERE o.status <> 'dead_lettered'")
if [ "$letters_off" != 0 ] || [ "$strays" != 0 ]; then
  fail "dead letters: $letters_off dead-lettered orders without exactly one row, $strays rows for orders not dead-lettered"
fi
pass "one dead letter per dead-lettered order: $(sql "SELECT count(*) FROM dlq.dead_letters"), none twice"

# --- The figures -------------------------------------------------------------------------------
# Orders that end as dead letters (loadgen's FAIL-1, and INVENTORY_FAILURE_RATE's unlucky ones)
# wait out their whole retry schedule by design, and longer when their MAX_DELIVERIES advisory is
# lost with the partition and the sweep finds them instead (docs/running.md): they are counted
# apart, so that the figure for the others says what the cut cost an ordinary order.
latency_of() { # from to -> per outcome: "N orders, p50 …, p99 …, max …" for the orders placed in [from, to)
  sql "SELECT coalesce(string_agg(outcome || ': ' || n || ' orders, accepted to final p50 ' || p50 || ' ms, p99 '
        || p99 || ' ms, max ' || top || ' ms', '; ' ORDER BY outcome DESC), 'no orders')
    FROM (SELECT CASE WHEN status = 'dead_lettered' THEN 'dead-lettered' ELSE 'reserved or rejected' END AS outcome,
            count(*) AS n,
            round(1000 * percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM updated_at - created_at))) AS p50,
            round(1000 * percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM updated_at - created_at))) AS p99,
            round(1000 * max(extract(epoch FROM updated_at - created_at))) AS top
          FROM order_api.orders WHERE created_at >= '$1' AND created_at < '$2' GROUP BY 1) s"
}
printf 'partition figures: %s (%s) cut off for %s s under %s orders/s; orders_stream without a leader for about %s s\n' \
  "$leader" "$cut_service" "$((heal_t - cut_t))" "$((2 * PARTITION_RATE))" "$leaderless"
printf '  before the cut:    %s\n' "$(latency_of "$(sql "SELECT '$cut_at'::timestamptz - interval '$PARTITION_BEFORE seconds'")" "$cut_at")"
printf '  during the cut:    %s\n' "$(latency_of "$cut_at" "$healed_at")"
printf '  after the healing: %s\n' "$(latency_of "$healed_at" "$(sql "SELECT now()")")"
printf '  dead letters found by the sweep (their advisory lost): %s of %s\n' \
  "$(sql "SELECT count(*) FROM dlq.dead_letters WHERE reason LIKE '%found by the sweep%'")" \
  "$(sql "SELECT count(*) FROM dlq.dead_letters WHERE kind = 'exhausted'")"
log "cluster checks passed in $((SECONDS - started)) s"
