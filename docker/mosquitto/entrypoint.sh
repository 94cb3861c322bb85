#!/bin/sh
# The broker container's entry point: give Mosquitto private copies of its files, run it, and
# on SIGHUP copy them again before passing the signal on (Mosquitto then rereads the password
# file and the ACL: a new or revoked meter counts from then on).
#
# The files arrive read-only and owned by whoever made them, and Mosquitto reads them after
# dropping to its own user, so it reads copies in /mosquitto/secrets:
#   $AUTH/passwd, $AUTH/acl   from `gridm2m credentials mosquitto` (the gateway's store)
#   $CERTS/mosquitto.pem, $CERTS/mosquitto.key   the broker's TLS certificate and key
set -eu

AUTH=${AUTH:-/run/gridm2m/broker}
CERTS=${CERTS:-/run/gridm2m/certs}
SECRETS=${SECRETS:-/mosquitto/secrets}
CONFIG=${CONFIG:-/mosquitto/config/mosquitto.conf}
OWNER=${OWNER:-mosquitto:mosquitto}

copy_files() {
    mkdir -p "$SECRETS"
    chmod 0700 "$SECRETS"
    for file in "$AUTH/passwd" "$AUTH/acl" "$CERTS/mosquitto.pem" "$CERTS/mosquitto.key"; do
        if [ ! -s "$file" ]; then
            echo "entrypoint: $file is missing (docs/security.md: MQTT)" >&2
            return 1
        fi
        install -m 0600 "$file" "$SECRETS/$(basename "$file")"
    done
    chown -R "$OWNER" "$SECRETS"
}

copy_files
mosquitto -c "$CONFIG" &
broker=$!
# A failed copy keeps the broker on the files it has (and says so).
trap 'copy_files && kill -HUP "$broker"' HUP
trap 'kill -TERM "$broker"' TERM INT
status=0
while kill -0 "$broker" 2>/dev/null; do
    # Returns early when a trapped signal arrives; the last one returns the broker's status.
    if wait "$broker"; then status=0; else status=$?; fi
done
exit "$status"
