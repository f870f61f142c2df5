#!/usr/bin/env bash
# Starts and stops, on 127.0.0.1, a throwaway 3-master Redis Cluster (one
# replica each: 6 redis-server) and a 3-node RabbitMQ cluster, for the
# integration tests and `scripts/demo --cluster`. Everything lives in DIR;
# several DIRs can run side by side (ports are probed and claimed).
#
#   scripts/clusters.sh start DIR [--redis-only]  boot both clusters (or the Redis Cluster alone), write DIR/cluster.env + DIR/cluster.json
#   scripts/clusters.sh stop DIR            stop all recorded processes (idempotent; logs stay)
#   scripts/clusters.sh ctl DIR N ARGS...   rabbitmqctl -n <node N> ARGS... with the right env
#   scripts/clusters.sh restart-rabbit DIR N  boot node N again (after a kill -9), wait until it rejoined
#   scripts/clusters.sh status DIR          one line per node: up or down (exit 1 if any is down)
#
# The machine may also run a shared broker (rabbit@localhost, epmd on 4369)
# and a shared Redis (6379). Our nodes never go near them: own node names,
# ports, data/log/config files, Erlang cookie and epmd. The Debian
# /usr/sbin/rabbitmq* wrappers are bypassed because, run as root, they su to
# the rabbitmq user, cd to /var/lib/rabbitmq and overwrite the shared node's
# /var/log/rabbitmq/startup_log.
set -euo pipefail

say() { printf '[clusters] %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
usage() { sed -n '7,11p' "$0" | sed 's/^# *//' >&2; exit 2; }

RMQ_BIN=${RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}
[ -x "$RMQ_BIN/rabbitmq-server" ] || RMQ_BIN=$(dirname "$(command -v rabbitmq-server || echo /x/x)")
TIMEOUT=${CLUSTERS_TIMEOUT:-90}             # seconds allowed for each wait
CLAIMS=/tmp/rw-cluster-ports               # one file per port handed out, shared by all DIRs (not $TMPDIR)

[ $# -ge 2 ] || usage
CMD=$1 DIR=$2; shift 2
[ "$CMD" = start ] && mkdir -p "$DIR"
if [ -d "$DIR" ]; then DIR=$(cd "$DIR" && pwd); fi

# --- bookkeeping: DIR/state (ports, names), DIR/pids ("name pid", last wins),
# DIR/ports (claims to release). Every process we start carries RWC_DIR=$DIR
# in its environment: that is how we recognise our processes (a recorded pid
# may have been reused) and how `stop` finds strays of a half-failed start.
note() { printf '%s=%q\n' "$1" "$2" >> "$DIR/state"; printf -v "$1" %s "$2"; }
record() { echo "$1 $2" >> "$DIR/pids"; }
pid_of() { awk -v n="$1" '$1 == n { p = $2 } END { print p }' "$DIR/pids" 2>/dev/null; }
ours() {
  [ -n "${1:-}" ] || return 1
  grep -zqxF "RWC_DIR=$DIR" "/proc/$1/environ" 2>/dev/null && return 0
  # redis-server overwrites its environment (to set its process title), but
  # it runs in its --dir, DIR/redis-PORT.
  [ "$(cat "/proc/$1/comm" 2>/dev/null)" = redis-server ] && [[ $(readlink "/proc/$1/cwd") == "$DIR"/redis-* ]]
}
any_ours() { local p; for p in $(awk '{ print $2 }' "$DIR/pids" 2>/dev/null); do ours "$p" && return 0; done; return 1; }
load() { [ -f "$DIR/state" ] || die "no cluster recorded in $DIR (run: $0 start $DIR)"; . "$DIR/state"; }
node_name() { local v="NODE_$1"; echo "${!v}"; }
amqp_port() { local v="AMQP_$1"; echo "${!v}"; }
dist_port() { local v="DIST_$1"; echo "${!v}"; }

# (No `cmd | grep -q` anywhere: with pipefail, grep quitting early can fail the pipeline.)
port_free() { [ -z "$(ss -Htan "( sport = :$1 )")" ]; }
# pick_port VAR LO HI [bus]: a random port that no socket uses, claimed
# atomically (noclobber) so that parallel starts never pick the same one.
# Redis also needs port+10000 (cluster bus); ranges stay below the kernel's
# ephemeral range (32768+), where outgoing connections pick their ports.
pick_port() {
  local p i
  for ((i = 0; i < 500; i++)); do
    p=$(($2 + (RANDOM * 32768 + RANDOM) % ($3 - $2)))
    port_free "$p" || continue
    if [ -n "${4:-}" ]; then port_free $((p + 10000)) || continue; fi
    (set -o noclobber; echo "$DIR" > "$CLAIMS/$p") 2>/dev/null || continue
    echo "$p" >> "$DIR/ports"; note "$1" "$p"; return 0
  done
  die "found no free port in $2-$3"
}
release_ports() {
  local p
  for p in $(cat "$DIR/ports" 2>/dev/null); do
    [ "$(cat "$CLAIMS/$p" 2>/dev/null)" = "$DIR" ] && rm -f "$CLAIMS/$p"
  done
  rm -f "$DIR/ports"
}

# --- RabbitMQ environment. HOME holds this cluster's own .erlang.cookie;
# ERL_EPMD_PORT points nodes and CLI at our own epmd, so that nothing we run
# can even see rabbit@localhost (registered in the shared epmd on 4369).
# RABBITMQ_CONF_ENV_FILE replaces /etc/rabbitmq/rabbitmq-env.conf, which
# would otherwise set NODENAME=rabbit@localhost. The CLI gets ephemeral
# distribution ports (the default 35672-35682 is shared by every rabbitmqctl
# on the machine) and must not spawn an epmd of its own.
rmq_env() {
  unset $(compgen -e | grep -E '^(RABBITMQ_|ERL_)') 2>/dev/null || true
  export HOME="$DIR/home" ERL_EPMD_PORT=$EPMD_PORT RABBITMQ_CONF_ENV_FILE="$DIR/home/rabbitmq-env.conf" \
    RABBITMQ_CTL_DIST_PORT_MIN=0 RABBITMQ_CTL_DIST_PORT_MAX=0 \
    RABBITMQ_CTL_ERL_ARGS="-start_epmd false -kernel inet_dist_use_interface {127,0,0,1}"
}
ctl() { local n=$1; shift; (rmq_env; exec "$RMQ_BIN/rabbitmqctl" -n "$(node_name "$n")" "$@"); }

launch_rabbit() { # N: boot node N in the background (same name/ports/data on a restart)
  local n=$1 d="$DIR/rabbit-$1"
  rm -f "$d/pid"
  (
    rmq_env
    export RWC_DIR="$DIR" RABBITMQ_NODENAME="$(node_name "$n")" \
      RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$(amqp_port "$n")" \
      RABBITMQ_DIST_PORT="$(dist_port "$n")" \
      RABBITMQ_MNESIA_BASE="$d/mnesia" RABBITMQ_LOG_BASE="$d/log" RABBITMQ_PID_FILE="$d/pid" \
      RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" RABBITMQ_CONFIG_FILES="$d/conf.d" \
      RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config" RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-start_epmd false -kernel inet_dist_use_interface {127,0,0,1}"
    # Not -detached: the startup script then stays our child and logs to
    # console.log; the broker's own pid is read from its pid file once booted.
    exec setsid "$RMQ_BIN/rabbitmq-server"
  ) < /dev/null >> "$d/console.log" 2>&1 &
  record "rabbit$n-sh" $!
}

await_rabbit() { # N: wait until node N has booted, record the broker's pid
  local n=$1 d="$DIR/rabbit-$1" deadline=$((SECONDS + TIMEOUT))
  local logs="see $d/console.log and $d/log/$(node_name "$n").log"
  until [ -s "$d/pid" ]; do  # (`rabbitmqctl wait` would not notice an early crash)
    ours "$(pid_of "rabbit$n-sh")" || die "RabbitMQ node $n exited while booting; $logs"
    [ $SECONDS -lt $deadline ] || die "RabbitMQ node $n wrote no pid file within $TIMEOUT s; $logs"
    sleep 0.2
  done
  ctl "$n" wait --timeout $((deadline - SECONDS + 1)) "$d/pid" > "$d/wait.log" 2>&1 ||
    die "RabbitMQ node $n ($(node_name "$n")) did not boot within $TIMEOUT s; $logs and $d/wait.log"
  record "rabbit$n" "$(cat "$d/pid")"
}

# Speaks the AMQP 0-9-1 header and expects a Connection.Start frame back.
amqp_ok() {
  local r
  r=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"; printf "AMQP\0\0\11\1" >&3; head -c 3 <&3' "$1" 2>/dev/null | od -An -tx1) || true
  [ "${r// /}" = 010000 ]
}

await_members() { # N...: wait until each listed node sees 3 running nodes and accepts AMQP
  local n deadline=$((SECONDS + TIMEOUT))
  for n in "$@"; do
    until [ "$(ctl "$n" eval 'length(rabbit_nodes:all_running()).' 2>/dev/null)" = 3 ] && amqp_ok "$(amqp_port "$n")"; do
      [ $SECONDS -lt $deadline ] || die "RabbitMQ node $n does not see 3 running nodes after $TIMEOUT s; see $DIR/rabbit-$n/log/ and: $0 ctl $DIR $n cluster_status"
      sleep 0.5
    done
  done
}

start_epmd() {
  (export RWC_DIR="$DIR"; exec setsid epmd -port "$EPMD_PORT" -address 127.0.0.1) < /dev/null >> "$DIR/epmd.log" 2>&1 &
  record epmd $!
  local deadline=$((SECONDS + 10))
  until ! port_free "$EPMD_PORT"; do
    [ $SECONDS -lt $deadline ] && ours "$(pid_of epmd)" || die "epmd did not start on port $EPMD_PORT; see $DIR/epmd.log"
    sleep 0.1
  done
}

# --- Redis
redis() { redis-cli -h 127.0.0.1 -p "$@"; }
role_of() { redis "$1" role 2>/dev/null | sed -n 1p; }  # master or slave
redis_ready() { # every node: cluster_state:ok; every master: its replica attached and in sync
  local p info
  for p in $REDIS_PORTS; do
    info=$(redis "$p" cluster info 2>/dev/null) || return 1
    [[ $info == *cluster_state:ok* ]] || return 1
    info=$(redis "$p" info replication 2>/dev/null) || return 1
    if [ "$(role_of "$p")" = master ]; then
      [[ $info == *slave0:*state=online* ]] || return 1
    else
      [[ $info == *master_link_status:up* ]] || return 1
    fi
  done
}

start_redis() {
  local p d deadline
  for p in $REDIS_PORTS; do
    d="$DIR/redis-$p"; mkdir -p "$d"
    # cluster-replica-validity-factor 0: a replica may always take over,
    # however long it was cut off from its master (tests kill masters and
    # pause processes; the default factor can leave a slot range masterless).
    RWC_DIR="$DIR" redis-server --port "$p" --bind 127.0.0.1 --daemonize yes \
      --cluster-enabled yes --cluster-node-timeout 2000 --cluster-replica-validity-factor 0 \
      --cluster-config-file "$d/nodes.conf" --dir "$d" --save "" --appendonly no \
      --pidfile "$d/redis.pid" --logfile "$d/redis.log" < /dev/null >> "$d/redis.log" 2>&1 ||
      die "redis-server on port $p did not start; see $d/redis.log"
  done
  deadline=$((SECONDS + 20))
  for p in $REDIS_PORTS; do
    d="$DIR/redis-$p"
    until [ -s "$d/redis.pid" ] && [ "$(redis "$p" ping 2>/dev/null)" = PONG ]; do
      [ $SECONDS -lt $deadline ] || die "redis-server on port $p does not answer; see $d/redis.log"
      sleep 0.1
    done
    record "redis$p" "$(cat "$d/redis.pid")"
  done
  say "redis: 6 servers up, creating the cluster"
  # shellcheck disable=SC2046
  redis-cli --cluster create $(printf '127.0.0.1:%s ' $REDIS_PORTS) --cluster-replicas 1 --cluster-yes \
    < /dev/null > "$DIR/redis-create.log" 2>&1 || die "redis-cli --cluster create failed; see $DIR/redis-create.log"
  deadline=$((SECONDS + TIMEOUT))
  until redis_ready; do
    [ $SECONDS -lt $deadline ] || die "Redis cluster not ok after $TIMEOUT s; see $DIR/redis-*/redis.log and: redis-cli -p ${REDIS_PORTS%% *} cluster nodes"
    sleep 0.2
  done
  for p in $REDIS_PORTS; do
    if [ "$(role_of "$p")" = master ]; then note "ROLE_$p" master; else note "ROLE_$p" replica; fi
  done
  say "redis: cluster ok (3 masters, 3 replicas)"
}

write_outputs() { # cluster.env and cluster.json, each written to a temp file then renamed
  local n p amqp="" rurl="" rabbit="" rjson=""
  for n in $RABBIT_NODES; do
    amqp+="${amqp:+,}amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/%2f"
    rabbit+="${rabbit:+, }{\"node\": \"$(node_name "$n")\", \"amqp_port\": $(amqp_port "$n"), \"pid\": $(pid_of "rabbit$n")}"
  done
  for p in $REDIS_PORTS; do
    local role="ROLE_$p"
    [ "${!role}" = master ] && rurl+="${rurl:+,}redis://127.0.0.1:$p"
    rjson+="${rjson:+, }{\"port\": $p, \"pid\": $(pid_of "redis$p"), \"role\": \"${!role}\"}"
  done
  { [ -z "$amqp" ] || printf "export AMQP_URL='%s'\n" "$amqp"
    printf "export REDIS_URL='%s'\nexport RW_REDIS__CLUSTER=true\n" "$rurl"; } > "$DIR/cluster.env.tmp"
  printf '{"amqp_url": "%s",\n "redis_url": "%s",\n "rabbit": [%s],\n "redis": [%s]}\n' \
    "$amqp" "$rurl" "$rabbit" "$rjson" > "$DIR/cluster.json.tmp"
  mv "$DIR/cluster.env.tmp" "$DIR/cluster.env"; mv "$DIR/cluster.json.tmp" "$DIR/cluster.json"
}

# --- subcommands
stop_all() {
  local n pid p deadline stoppers=()
  [ -f "$DIR/state" ] && . "$DIR/state"
  # RabbitMQ first and gracefully (needs our epmd), all three at once.
  for n in 1 2 3; do
    pid=$(pid_of "rabbit$n")
    if ours "$pid" && [ -n "${EPMD_PORT:-}" ]; then
      # (timeout signals its whole process group, so erl goes too)
      (timeout 15 bash "$0" ctl "$DIR" "$n" stop "$DIR/rabbit-$n/pid" > /dev/null 2>&1 || true) &
      stoppers+=($!)
    fi
  done
  # Only these: a bare `wait` would also wait for the servers a failed start launched.
  [ ${#stoppers[@]} -eq 0 ] || wait "${stoppers[@]}"
  # Then SIGTERM whatever is left (recorded or not), SIGKILL after 5 s.
  for sig in TERM KILL; do
    deadline=$((SECONDS + 5))
    for p in /proc/[0-9]*; do
      pid=${p#/proc/}
      [ "$pid" != $$ ] && ours "$pid" && kill -"$sig" "$pid" 2> /dev/null || true
    done
    while [ "$sig" = TERM ] && [ $SECONDS -lt $deadline ]; do
      any_ours || break
      sleep 0.2
    done
  done
  release_ports
}

case $CMD in
start)
  if [ -f "$DIR/state" ]; then
    for pid in $(awk '{ print $2 }' "$DIR/pids" 2>/dev/null); do
      ours "$pid" && die "a cluster started in $DIR is still running; run: $0 stop $DIR"
    done
    release_ports
  fi
  rm -rf "$DIR"/{state,pids,ports,home,epmd.log,redis-create.log,cluster.env,cluster.json} "$DIR"/rabbit-* "$DIR"/redis-*
  mkdir -p -m 1777 "$CLAIMS"; find "$CLAIMS" -type f -mmin +1440 -delete 2> /dev/null || true
  trap 'rc=$?; if [ $rc -ne 0 ]; then say "start failed; stopping what it started (logs stay in $DIR)"; stop_all || true; fi' EXIT
  trap 'exit 1' INT TERM HUP  # so that an interrupted start cleans up too (a kill -9 needs `stop DIR`)
  t0=$SECONDS
  if [ "${1:-}" = --redis-only ]; then note RABBIT_NODES ""; else note RABBIT_NODES "1 2 3"; fi
  note TAG "$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
  pick_port EPMD_PORT 23000 30000
  for i in 1 2 3 4 5 6; do pick_port "REDIS_$i" 20000 22700 bus; done
  note REDIS_PORTS "$REDIS_1 $REDIS_2 $REDIS_3 $REDIS_4 $REDIS_5 $REDIS_6"
  mkdir -p "$DIR/home"
  : > "$DIR/home/rabbitmq-env.conf"  # stands in for /etc/rabbitmq/rabbitmq-env.conf
  (umask 077; od -An -N15 -tx1 /dev/urandom | tr -d ' \n' | tr a-f A-F > "$DIR/home/.erlang.cookie")
  chmod 400 "$DIR/home/.erlang.cookie"
  for n in $RABBIT_NODES; do
    note "NODE_$n" "rwc$n-$TAG@localhost"
    pick_port "AMQP_$n" 23000 30000; pick_port "DIST_$n" 23000 30000
    d="$DIR/rabbit-$n"; mkdir -p "$d/conf.d" "$d/log" "$d/mnesia"
    printf 'listeners.tcp.default = 127.0.0.1:%s\nloopback_users.guest = true\nlog.console = false\nlog.file.level = info\n' \
      "$(amqp_port "$n")" > "$d/rabbitmq.conf"
    echo '[].' > "$d/advanced.config"
    # Only the plugin partitioned mode needs; nothing that opens more ports.
    echo '[rabbitmq_consistent_hash_exchange].' > "$d/enabled_plugins"
  done
  if [ -n "$RABBIT_NODES" ]; then
    say "ports: redis $REDIS_PORTS; amqp $AMQP_1 $AMQP_2 $AMQP_3; dist $DIST_1 $DIST_2 $DIST_3; epmd $EPMD_PORT"
  else
    say "ports: redis $REDIS_PORTS"
  fi
  if [ -z "$RABBIT_NODES" ]; then
    start_redis
    write_outputs
    say "ready in $((SECONDS - t0)) s (Redis Cluster only): source $DIR/cluster.env (details in $DIR/cluster.json)"
    exit 0
  fi
  start_epmd
  # The brokers boot (slowest part) while Redis is set up.
  for n in 1 2 3; do launch_rabbit "$n"; done
  say "rabbitmq: booting $NODE_1 $NODE_2 $NODE_3"
  start_redis
  for n in 1 2 3; do await_rabbit "$n"; done
  say "rabbitmq: 3 nodes booted, clustering"
  for n in 2 3; do
    for step in stop_app reset "join_cluster $NODE_1" start_app; do
      # shellcheck disable=SC2086
      ctl "$n" $step >> "$DIR/rabbit-$n/join.log" 2>&1 || die "rabbitmqctl $step on node $n failed; see $DIR/rabbit-$n/join.log"
    done
  done
  await_members 1 2 3
  write_outputs
  say "ready in $((SECONDS - t0)) s: source $DIR/cluster.env (details in $DIR/cluster.json)"
  ;;
stop)
  [ -d "$DIR" ] || { say "nothing to stop in $DIR"; exit 0; }
  stop_all
  say "stopped everything started from $DIR"
  ;;
ctl)
  load; [[ ${1:-} =~ ^[123]$ ]] || usage
  ctl "$@"
  ;;
restart-rabbit)
  load; [[ ${1:-} =~ ^[123]$ ]] || usage
  n=$1; old=$(pid_of "rabbit$n"); deadline=$((SECONDS + 5))
  while ours "$old" && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  ours "$old" && die "node $n ($(node_name "$n")) is still running as pid $old"
  ours "$(pid_of epmd)" || start_epmd
  launch_rabbit "$n"; await_rabbit "$n"
  await_members "$n" $((n % 3 + 1))  # the restarted node and one other agree
  write_outputs
  say "node $n ($(node_name "$n")) is back as pid $(pid_of "rabbit$n")"
  ;;
status)
  load; bad=0
  for n in $RABBIT_NODES; do
    pid=$(pid_of "rabbit$n"); s=down
    ours "$pid" && amqp_ok "$(amqp_port "$n")" && s=up
    [ $s = up ] || bad=1
    echo "rabbit$n $(node_name "$n") 127.0.0.1:$(amqp_port "$n") pid=$pid $s"
  done
  for p in $REDIS_PORTS; do
    pid=$(pid_of "redis$p"); s=down; role=-
    if ours "$pid" && [ "$(redis "$p" ping 2>/dev/null)" = PONG ]; then s=up; role=$(role_of "$p"); [ "$role" = slave ] && role=replica; fi
    [ $s = up ] || bad=1
    echo "redis 127.0.0.1:$p $role pid=$pid $s"
  done
  exit $bad
  ;;
*) usage ;;
esac
