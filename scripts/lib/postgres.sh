# Helpers to run a private Postgres server from Debian's binaries (sourced by scripts).
# Postgres refuses to run as root; as root, its tools run as the `postgres` user.

# free_port: a port free on 127.0.0.1, below the kernel's ephemeral range, where no outgoing
# connection can take it before the server binds it (see free_port in crates/test-support).
free_port() {
  python3 - <<'PY'
import random, socket
try:
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except (OSError, ValueError):
    low = 32768
while True:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", random.randrange(10000, low) if low > 11000 else 0))
        except OSError:
            continue
        print(s.getsockname()[1])
        break
PY
}

as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# start_private_postgres DIR PORT [persistent]: initdb into DIR/data if needed, start on PORT.
# Without "persistent", durability is traded for speed (fsync off): for tests only.
# PG_EXTRA_OPTS adds settings (scripts/bench --profile loads pg_stat_statements with it).
start_private_postgres() {
  local dir=$1 port=$2 mode=${3:-}
  local bin=${PG_BIN_DIR:?PG_BIN_DIR is not set: run scripts/ensure-tools}
  [ "$(id -u)" -eq 0 ] && chown postgres "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_postgres "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-instructions >/dev/null
  fi
  local opts="-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=300"
  [ "$mode" = persistent ] || opts="$opts -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
  opts="$opts ${PG_EXTRA_OPTS:-}"   # more `-c name=value` settings, for a profile run
  as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -o "$opts" -w start >/dev/null
}

stop_private_postgres() {
  local dir=$1
  as_postgres "${PG_BIN_DIR}/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
}
