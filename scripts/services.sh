#!/usr/bin/env bash
# Makes sure RabbitMQ and Redis answer on 127.0.0.1 (or wherever AMQP_URL /
# REDIS_URL point). Uses running servers; otherwise starts installed ones;
# otherwise installs them from Debian packages when it can (root + apt-get);
# otherwise says exactly what to do and exits 1.
set -euo pipefail

say() { printf '[services] %s\n' "$*" >&2; }

# host and port of a URL like amqp://user:pass@host:port/vhost
host_port() {
  local rest=${1#*://}; rest=${rest#*@}; rest=${rest%%/*}
  local host=${rest%%:*} port=${rest##*:}
  [ "$port" = "$rest" ] && port=$2
  echo "$host" "$port"
}

reachable() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_for() { # name host port seconds
  local i
  for ((i = 0; i < $4 * 5; i++)); do
    reachable "$2" "$3" && return 0
    sleep 0.2
  done
  say "$1 did not come up on $2:$3 within $4 s"; return 1
}

is_local() { [ "$1" = 127.0.0.1 ] || [ "$1" = localhost ]; }

can_install() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }

apt_updated=
install_pkg() {
  if ! can_install; then return 1; fi
  if [ -z "$apt_updated" ]; then
    say "apt-get update"; DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2; apt_updated=1
  fi
  say "installing $1 from Debian packages"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >&2
}

ensure_redis() {
  read -r host port < <(host_port "${REDIS_URL:-redis://127.0.0.1:6379/0}" 6379)
  if reachable "$host" "$port"; then say "Redis is up on $host:$port"; return; fi
  if ! is_local "$host"; then say "Redis at $host:$port (REDIS_URL) does not answer"; exit 1; fi
  if ! command -v redis-server >/dev/null && ! install_pkg redis-server; then
    say "Redis is not running and not installed. Install it, then rerun:"
    say "  sudo apt-get install redis-server    # Debian/Ubuntu"
    say "or point REDIS_URL at a running Redis."
    exit 1
  fi
  say "starting redis-server on port $port"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no >&2
  wait_for Redis "$host" "$port" 20
}

ensure_rabbitmq() {
  read -r host port < <(host_port "${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}" 5672)
  if reachable "$host" "$port"; then say "RabbitMQ is up on $host:$port"; return; fi
  if ! is_local "$host"; then say "RabbitMQ at $host:$port (AMQP_URL) does not answer"; exit 1; fi
  if ! command -v rabbitmq-server >/dev/null && ! install_pkg rabbitmq-server; then
    say "RabbitMQ is not running and not installed. Install it, then rerun:"
    say "  sudo apt-get install rabbitmq-server    # Debian/Ubuntu"
    say "or point AMQP_URL at a running RabbitMQ (3.10 or newer)."
    exit 1
  fi
  say "starting rabbitmq-server (takes a few seconds)"
  rabbitmq-server -detached >&2 || true
  wait_for RabbitMQ "$host" "$port" 90
  # The port opens before the broker finishes booting.
  if command -v rabbitmqctl >/dev/null; then rabbitmqctl await_startup >/dev/null 2>&1 || true; fi
}

# Partitioned mode (amqp.partitions > 0) routes through a consistent-hash
# exchange; enable its plugin on a local broker we can administer.
ensure_hash_exchange_plugin() {
  read -r host _ < <(host_port "${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}" 5672)
  is_local "$host" || return 0
  command -v rabbitmq-plugins >/dev/null || return 0
  if ! rabbitmq-plugins is_enabled rabbitmq_consistent_hash_exchange >/dev/null 2>&1; then
    say "enabling the rabbitmq_consistent_hash_exchange plugin (partitioned mode)"
    rabbitmq-plugins enable rabbitmq_consistent_hash_exchange >/dev/null 2>&1 \
      || say "could not enable rabbitmq_consistent_hash_exchange; partitioned mode will be unavailable"
  fi
}

# The TLS tests put stunnel in front of the broker: install it if missing.
ensure_stunnel() {
  command -v stunnel4 >/dev/null || command -v stunnel >/dev/null && return 0
  if ! install_pkg stunnel4; then
    say "stunnel is not installed (the TLS tests need it). Install it, then rerun:"
    say "  sudo apt-get install stunnel4    # Debian/Ubuntu"
    exit 1
  fi
}

ensure_faketime() {
  command -v faketime >/dev/null && return 0
  if ! install_pkg faketime; then
    say "faketime is not installed (the clock-skew test runs a worker with its clock off). Install it, then rerun:"
    say "  sudo apt-get install faketime    # Debian/Ubuntu"
    exit 1
  fi
}

# Prometheus and promtool: the monitoring checks test the alerting rules with
# promtool and scrape a real worker with a real Prometheus.
ensure_prometheus() {
  command -v promtool >/dev/null && command -v prometheus >/dev/null && return 0
  if ! install_pkg prometheus; then
    say "Prometheus is not installed (the monitoring tests run promtool and a Prometheus). Install it, then rerun:"
    say "  sudo apt-get install prometheus    # Debian/Ubuntu: prometheus and promtool"
    exit 1
  fi
}

# Python 3 with venv, and Node.js with npm: the producer examples run on them.
ensure_example_runtimes() {
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    install_pkg python3-venv || { say "python3 with venv is missing: sudo apt-get install python3-venv"; exit 1; }
  fi
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    install_pkg nodejs && install_pkg npm \
      || { say "Node.js and npm are missing: sudo apt-get install nodejs npm"; exit 1; }
  fi
}

ensure_cargo() {
  if command -v cargo >/dev/null; then return; fi
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH" && return
  say "Rust is not installed. Install it with rustup (https://rustup.rs), then rerun."
  exit 1
}

ensure_cargo
ensure_redis
ensure_rabbitmq
ensure_hash_exchange_plugin
