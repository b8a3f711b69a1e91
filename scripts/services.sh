#!/usr/bin/env bash
# Starts the local RabbitMQ the integration tests use, if it is installed and not running.
set -euo pipefail
amqp_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
if amqp_up; then
  exit 0
fi
if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "services: rabbitmq-server is not installed (scripts/setup.sh installs it)" >&2
  exit 1
fi
echo "services: starting RabbitMQ"
rabbitmq-server -detached >/dev/null 2>&1 || true
for _ in $(seq 1 120); do
  if amqp_up && rabbitmqctl -q await_startup >/dev/null 2>&1; then
    echo "services: RabbitMQ is up"
    exit 0
  fi
  sleep 1
done
echo "services: RabbitMQ did not start within 120 s" >&2
exit 1
