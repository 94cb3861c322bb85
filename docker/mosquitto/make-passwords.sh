#!/bin/sh
# Make the DAP broker's password file and the credentials that go with it.
#
#   docker/mosquitto/make-passwords.sh [-n METERS] [-p PREFIX] [-d DIGITS] [-s FIRST]
#                                      [-o DIR] [--force]
#
# Users: one per meter, named by its AE-ID (C + PREFIX + zero-padded number, e.g. Cmtr-000001,
# as `gridm2m fleet` and `gridm2m agent build` name meters), plus gateway, headend and health.
# Each password comes from an environment variable when set, else 24 random characters:
#   GATEWAY_MQTT_PASSWORD, HEADEND_MQTT_PASSWORD, MQTT_HEALTH_PASSWORD,
#   METER_MQTT_PASSWORD (one password for every meter: a lab convenience, not for the field).
# Written to DIR (default: docker/secrets), readable by the owner only:
#   passwd         the hashed password file for mosquitto (password_file)
#   meters.csv     AE-ID,password per meter: mqtt_username / mqtt_password of each board
#   gateway.env    GRIDM2M_GATEWAY__CSE__MQTT__USERNAME / __PASSWORD for the gateway
#   headend.env    GRIDM2M_HEADEND__CSE__MQTT__USERNAME / __PASSWORD for the head-end
#   mosquitto.env  MQTT_HEALTH_PASSWORD for the broker container's health check
# Hashing uses mosquitto_passwd (Debian package mosquitto; $MOSQUITTO_PASSWD to choose one),
# else the eclipse-mosquitto:2 image through docker.
set -eu

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
meters=200
prefix=mtr-
digits=6
first=1
out="$here/../secrets"
force=no

usage() {
    sed -n '2,20s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case $1 in
        -n) meters=${2:?}; shift 2 ;;
        -p) prefix=${2?}; shift 2 ;;
        -d) digits=${2:?}; shift 2 ;;
        -s) first=${2:?}; shift 2 ;;
        -o) out=${2:?}; shift 2 ;;
        --force) force=yes; shift ;;
        -h|--help) usage ;;
        *) echo "make-passwords.sh: unknown argument $1" >&2; usage ;;
    esac
done

for number in "$meters" "$digits" "$first"; do
    case $number in
        ''|*[!0-9]*) echo "make-passwords.sh: $number is not a whole number" >&2; exit 2 ;;
    esac
done
case $prefix in
    *[!A-Za-z0-9._-]*) echo "make-passwords.sh: a prefix may hold A-Z a-z 0-9 . _ -" >&2; exit 2 ;;
esac

if [ -e "$out/passwd" ] && [ "$force" != yes ]; then
    echo "make-passwords.sh: $out/passwd exists; --force makes new passwords for everyone" >&2
    exit 1
fi

# 18 random bytes are 24 base64 characters; URL-safe ones never contain ':' or '/'.
random_passwords() {
    head -c "$((18 * $1))" /dev/urandom | base64 -w 24 | tr '+/' '-_'
}

checked() {  # name value: a password must not break the user:password file format
    case $2 in
        *:*|*"
"*) echo "make-passwords.sh: $1 must not contain ':' or a line break" >&2; exit 2 ;;
    esac
    printf '%s' "$2"
}

gateway=$(checked GATEWAY_MQTT_PASSWORD "${GATEWAY_MQTT_PASSWORD:-$(random_passwords 1)}")
headend=$(checked HEADEND_MQTT_PASSWORD "${HEADEND_MQTT_PASSWORD:-$(random_passwords 1)}")
health=$(checked MQTT_HEALTH_PASSWORD "${MQTT_HEALTH_PASSWORD:-$(random_passwords 1)}")
shared=$(checked METER_MQTT_PASSWORD "${METER_MQTT_PASSWORD:-}")

umask 077
mkdir -p "$out"
chmod 700 "$out"
work=$(mktemp -d "$out/.make-passwords.XXXXXX")
trap 'rm -rf "$work"' EXIT

{
    printf 'gateway:%s\nheadend:%s\nhealth:%s\n' "$gateway" "$headend" "$health"
} >"$work/passwd"
printf 'username,password\n' >"$work/meters.csv"

random_passwords "$meters" | {
    number=$first
    last=$((first + meters))
    while [ "$number" -lt "$last" ]; do
        read -r password
        [ -n "$shared" ] && password=$shared
        user=$(printf 'C%s%0*d' "$prefix" "$digits" "$number")
        printf '%s:%s\n' "$user" "$password" >>"$work/passwd"
        printf '%s,%s\n' "$user" "$password" >>"$work/meters.csv"
        number=$((number + 1))
    done
}

# Replace each plain password by its hash, in place.
tool=${MOSQUITTO_PASSWD:-$(command -v mosquitto_passwd || true)}
if [ -n "$tool" ]; then
    "$tool" -U "$work/passwd"
elif command -v docker >/dev/null; then
    docker run --rm --user "$(id -u):$(id -g)" -v "$work:/secrets" eclipse-mosquitto:2 \
        mosquitto_passwd -U /secrets/passwd
else
    echo "make-passwords.sh: needs mosquitto_passwd (apt install mosquitto) or docker" >&2
    exit 1
fi

printf 'GRIDM2M_GATEWAY__CSE__MQTT__USERNAME=gateway\nGRIDM2M_GATEWAY__CSE__MQTT__PASSWORD=%s\n' \
    "$gateway" >"$work/gateway.env"
printf 'GRIDM2M_HEADEND__CSE__MQTT__USERNAME=headend\nGRIDM2M_HEADEND__CSE__MQTT__PASSWORD=%s\n' \
    "$headend" >"$work/headend.env"
printf 'MQTT_HEALTH_PASSWORD=%s\n' "$health" >"$work/mosquitto.env"

for file in passwd meters.csv gateway.env headend.env mosquitto.env; do
    mv -f "$work/$file" "$out/$file"
done
echo "wrote $out: passwd (gateway, headend, health and $meters meters), meters.csv, *.env"
