#!/bin/sh
# Writes the default user from RABBITMQ_DEFAULT_USER/PASS (as the official image honours
# them), then runs the command. The user is created when the node first starts.
set -eu
conf=/tmp/rabbitmq.conf
{
  echo "default_user = ${RABBITMQ_DEFAULT_USER:-guest}"
  echo "default_pass = ${RABBITMQ_DEFAULT_PASS:-guest}"
  echo "loopback_users = none"
} > "$conf"
export RABBITMQ_CONFIG_FILE="$conf"
exec "$@"
