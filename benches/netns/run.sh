#!/usr/bin/env bash
# The multi-host harness: N hosts as network namespaces on one bridge, each link shaped with
# `tc tbf`, a registry (Debian docker-registry) and a supernode on a seed host, a dfdaemon on
# every other host; all hosts pull one image through their dfdaemon at once. Prints each
# host's completion time against the Kumar–Ross bound and the bytes the registry sent per
# image; optionally the same pull straight from the registry (the baseline, same links).
# Cleans up everything it started (processes, namespaces, files) on exit, failure or ctrl-c.
#
# Needs root, iproute2 (ip, tc), curl, sha256sum, docker-registry, and the supernode and
# dfdaemon binaries (cargo build --profile bench -p supernode -p dfdaemon --bins: target/release).
#
# Usage: benches/netns/run.sh [--hosts N] [--rate-mbit R] [--seed-rate-mbit S]
#            [--image-mib M] [--layers L] [--bin-dir DIR] [--baseline] [--keep] [--timeout S]
#            [--dfdaemon-arg ARG]... [--timeline]
# Defaults: 4 hosts, 200 Mbit/s links (seed: the same), a 64 MiB image in 4 layers,
# binaries from $CARGO_TARGET_DIR/release, 600 s per blob download. --dfdaemon-arg passes one
# more argument to every dfdaemon (e.g. `--dfdaemon-arg=--p2p-vouched-digests=false`).
# --timeline samples every link's byte counters (4 times a second) during the swarm pull and
# prints, per second, the seed's upload and the hosts' mean upload and download (Mbit/s).
set -euo pipefail

HOSTS=4
RATE_MBIT=200
SEED_RATE_MBIT=
IMAGE_MIB=64
LAYERS=4
BIN_DIR=${CARGO_TARGET_DIR:-/var/tmp/damselfly-target}/release
BASELINE=0
KEEP=0
TIMEOUT=600
DFDAEMON_ARGS=()
TIMELINE=0

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --hosts) HOSTS=$2; shift 2 ;;
        --rate-mbit) RATE_MBIT=$2; shift 2 ;;
        --seed-rate-mbit) SEED_RATE_MBIT=$2; shift 2 ;;
        --image-mib) IMAGE_MIB=$2; shift 2 ;;
        --layers) LAYERS=$2; shift 2 ;;
        --bin-dir) BIN_DIR=$2; shift 2 ;;
        --baseline) BASELINE=1; shift ;;
        --keep) KEEP=1; shift ;;
        --timeout) TIMEOUT=$2; shift 2 ;;
        --dfdaemon-arg) DFDAEMON_ARGS+=("$2"); shift 2 ;;
        --dfdaemon-arg=*) DFDAEMON_ARGS+=("${1#--dfdaemon-arg=}"); shift ;;
        --timeline) TIMELINE=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage 64 >&2 ;;
    esac
done
SEED_RATE_MBIT=${SEED_RATE_MBIT:-$RATE_MBIT}
for n in "$HOSTS" "$RATE_MBIT" "$SEED_RATE_MBIT" "$IMAGE_MIB" "$LAYERS" "$TIMEOUT"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "not a positive integer: $n" >&2; exit 64; }
done
[ "$HOSTS" -le 200 ] || { echo "--hosts: at most 200" >&2; exit 64; }
[ "$(id -u)" -eq 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
for tool in ip tc curl sha256sum docker-registry; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done
for b in supernode dfdaemon; do
    [ -x "$BIN_DIR/$b" ] || { echo "missing $BIN_DIR/$b (cargo build --profile bench -p supernode -p dfdaemon --bins, or --bin-dir)" >&2; exit 1; }
done

# Background daemons are started with `ip netns exec` directly (not through a function), so
# that $! is the daemon's own pid: `ip netns exec` execs the command.
# Names and a /24 unlikely to collide with another run or the machine's own networks.
ID=$(printf '%04x' $((RANDOM % 65536)))
PREFIX="dfly$ID"
NET="10.$((200 + RANDOM % 50)).$((RANDOM % 256))"
SEED_IP="$NET.1"
HUB="$PREFIX-hub"
SEED="$PREFIX-seed"
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/damselfly-netns.XXXXXX")
PIDS=()
NAMESPACES=()

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    for ns in "${NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    if [ "$KEEP" -eq 1 ] || [ "$status" -ne 0 ]; then
        echo "logs and files kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { printf '[netns] %s\n' "$*" >&2; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# Bytes per second from Mbit/s; a tbf burst of 10 ms of traffic, at least 64 KiB.
bytes_per_sec() { echo $(( $1 * 1000000 / 8 )); }
burst() { local b=$(( $(bytes_per_sec "$1") / 100 )); [ "$b" -ge 65536 ] || b=65536; echo "$b"; }

add_ns() { ip netns add "$1"; NAMESPACES+=("$1"); ip -n "$1" link set lo up; }

# host namespace $1 with address $2, link shaped to $3 Mbit/s in each direction.
attach() {
    local ns=$1 addr=$2 mbit=$3 port="v${#NAMESPACES[@]}"
    add_ns "$ns"
    ip -n "$HUB" link add "$port" type veth peer name eth0 netns "$ns"
    ip -n "$HUB" link set "$port" master br0 up
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
    # Egress of eth0 is the host's upload; egress of the hub port is its download.
    tc -n "$ns" qdisc add dev eth0 root tbf rate "${mbit}mbit" burst "$(burst "$mbit")" latency 100ms
    tc -n "$HUB" qdisc add dev "$port" root tbf rate "${mbit}mbit" burst "$(burst "$mbit")" latency 100ms
}

wait_http() {
    local ns=$1 url=$2
    for _ in $(seq 150); do
        in_ns "$ns" curl -sf -o /dev/null "$url" && return 0
        sleep 0.2
    done
    log "no answer from $url"; return 1
}

log "work dir $WORK, namespaces $PREFIX-*, subnet $NET.0/24"
add_ns "$HUB"
ip -n "$HUB" link add br0 type bridge
ip -n "$HUB" link set br0 up
attach "$SEED" "$SEED_IP" "$SEED_RATE_MBIT"
HOST_NS=()
HOST_IP=()
for i in $(seq "$HOSTS"); do
    attach "$PREFIX-h$i" "$NET.$((10 + i))" "$RATE_MBIT"
    HOST_NS+=("$PREFIX-h$i")
    HOST_IP+=("$NET.$((10 + i))")
done

# The seed host: registry and supernode.
mkdir -p "$WORK/registry" "$WORK/supernode"
cat > "$WORK/registry.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $WORK/registry
  delete:
    enabled: true
http:
  addr: 0.0.0.0:5000
EOF
ip netns exec "$SEED" docker-registry serve "$WORK/registry.yml" >"$WORK/registry.access.log" 2>"$WORK/registry.err.log" &
PIDS+=($!)
ip netns exec "$SEED" env RUST_LOG=warn "$BIN_DIR/supernode" --listen 0.0.0.0:8002 --data-dir "$WORK/supernode" \
    >"$WORK/supernode.log" 2>&1 &
PIDS+=($!)
wait_http "$SEED" "http://127.0.0.1:5000/v2/"
wait_http "$SEED" "http://127.0.0.1:8002/healthy"

# The image: LAYERS random layers and a config, pushed from the seed host (not shaped: loopback).
REPO=bench/netns
mkdir -p "$WORK/image"
layer_bytes=$(( IMAGE_MIB * 1024 * 1024 / LAYERS ))
push_blob() { # file -> digest
    local file=$1 digest location
    digest="sha256:$(sha256sum "$file" | cut -d' ' -f1)"
    location=$(in_ns "$SEED" curl -sf -D - -o /dev/null -X POST "http://127.0.0.1:5000/v2/$REPO/blobs/uploads/" |
        tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
    case "$location" in http*) ;; *) location="http://127.0.0.1:5000$location" ;; esac
    case "$location" in *\?*) location="$location&digest=$digest" ;; *) location="$location?digest=$digest" ;; esac
    in_ns "$SEED" curl -sf -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' \
        --data-binary "@$file" "$location"
    echo "$digest"
}
LAYER_DIGESTS=()
layers_json=""
for l in $(seq "$LAYERS"); do
    head -c "$layer_bytes" /dev/urandom > "$WORK/image/layer$l"
    d=$(push_blob "$WORK/image/layer$l")
    LAYER_DIGESTS+=("$d")
    layers_json+="${layers_json:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"$d\",\"size\":$layer_bytes}"
done
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' > "$WORK/image/config"
CONFIG_DIGEST=$(push_blob "$WORK/image/config")
CONFIG_SIZE=$(stat -c %s "$WORK/image/config")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[%s]}' \
    "$CONFIG_DIGEST" "$CONFIG_SIZE" "$layers_json" > "$WORK/image/manifest"
in_ns "$SEED" curl -sf -o /dev/null -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary "@$WORK/image/manifest" "http://127.0.0.1:5000/v2/$REPO/manifests/latest"
BLOBS=("$CONFIG_DIGEST" "${LAYER_DIGESTS[@]}")
IMAGE_BYTES=$(( CONFIG_SIZE + LAYERS * layer_bytes ))
log "pushed $REPO:latest: $LAYERS layers, $IMAGE_BYTES bytes"

# A dfdaemon on every host.
for i in "${!HOST_NS[@]}"; do
    ns=${HOST_NS[$i]} ip=${HOST_IP[$i]}
    mkdir -p "$WORK/node$i"
    ip netns exec "$ns" env RUST_LOG=warn "$BIN_DIR/dfdaemon" --listen "$ip:65001" --peer-listen "$ip:65000" \
        --data-dir "$WORK/node$i" --supernode "$SEED_IP:8002" --default-upstream "http://$SEED_IP:5000" \
        --hostname "node$i" ${DFDAEMON_ARGS[@]+"${DFDAEMON_ARGS[@]}"} >"$WORK/node$i.log" 2>&1 &
    PIDS+=($!)
done
for i in "${!HOST_NS[@]}"; do wait_http "${HOST_NS[$i]}" "http://${HOST_IP[$i]}:65001/healthy"; done

registry_blob_bytes() { # sum of body bytes of successful blob GETs in the access log
    awk '$6 == "\"GET" && $7 ~ /\/blobs\/sha256:/ && ($9 == 200 || $9 == 206) { s += $10 } END { print s + 0 }' \
        "$WORK/registry.access.log"
}

# Every host pulls the manifest and all blobs (3 at a time, like containerd) from $1 (a base
# URL per host: "mirror" = its dfdaemon, "registry" = the registry) at once. Each writes its
# end time (seconds since T0) to $WORK/<label>.<i>.done.
pull_all() {
    local label=$1 t0 pulls=()
    t0=$(date +%s.%N)
    for i in "${!HOST_NS[@]}"; do
        local base
        if [ "$label" = mirror ]; then base="http://${HOST_IP[$i]}:65001"; else base="http://$SEED_IP:5000"; fi
        (
            out="$WORK/$label.$i"
            mkdir -p "$out"
            in_ns "${HOST_NS[$i]}" curl -sf -o "$out/manifest" \
                -H 'Accept: application/vnd.oci.image.manifest.v1+json' "$base/v2/$REPO/manifests/latest"
            printf '%s\n' "${BLOBS[@]}" | xargs -P 3 -I{} \
                ip netns exec "${HOST_NS[$i]}" curl -sf --max-time "$TIMEOUT" -o "$out/{}" "$base/v2/$REPO/blobs/{}"
            awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.3f\n", a - b }' > "$WORK/$label.$i.done"
        ) &
        pulls+=($!)
    done
    # Only the pulls: a bare `wait` would also wait for the daemons.
    wait "${pulls[@]}"
    for i in "${!HOST_NS[@]}"; do
        [ -s "$WORK/$label.$i.done" ] || { log "$label: host $i did not finish"; return 1; }
        for d in "${BLOBS[@]}"; do
            [ "sha256:$(sha256sum "$WORK/$label.$i/$d" | cut -d' ' -f1)" = "$d" ] ||
                { log "$label: host $i got a wrong $d"; return 1; }
        done
    done
}

# T_min = max(F/u_s, F/d, N·F/(u_s + N·u)) with u = d = RATE, u_s = SEED_RATE (bytes/s).
bound() {
    awk -v f="$IMAGE_BYTES" -v n="$HOSTS" -v us="$(bytes_per_sec "$SEED_RATE_MBIT")" \
        -v u="$(bytes_per_sec "$RATE_MBIT")" 'BEGIN {
        t = f / us; if (f / u > t) t = f / u; if (n * f / (us + n * u) > t) t = n * f / (us + n * u)
        printf "%.3f", t }'
}
T_MIN=$(bound)

# p50 / p99 / max of the completion times, each also over T_min.
summarize() { # files-prefix row-label registry-bytes-before
    local prefix=$1 label=$2 before=$3 after
    after=$(registry_blob_bytes)
    cat "$WORK/$prefix".*.done | sort -n | awk -v t="$T_MIN" -v label="$label" \
        -v reg="$(( after - before ))" -v img="$IMAGE_BYTES" '
        { v[NR] = $1 }
        END {
            p50 = v[int((NR * 50 + 99) / 100)]; p99 = v[int((NR * 99 + 99) / 100)]; max = v[NR]
            printf "| %-26s | %7.2f s | %5.2f | %5.2f | %5.2f | %6.2f |\n", label, p50, p50 / t, p99 / t, max / t, reg / img
        }'
}

metric_sum() { # ns url metric [label filter] -> sum of the samples
    in_ns "$1" curl -sf "$2" | awk -v m="$3" -v f="${4:-}" '
        $1 !~ /^#/ { split($1, k, "{"); if (k[1] == m && index($1, f) > 0) s += $2 }
        END { printf "%.0f", s }'
}
supernode_sent() { metric_sum "$SEED" "http://127.0.0.1:8002/metrics" damselfly_supernode_served_bytes_total; }
peer_bytes() { # bytes all dfdaemons received from other peers
    local sum=0 i
    for i in "${!HOST_NS[@]}"; do
        sum=$(( sum + $(metric_sum "${HOST_NS[$i]}" "http://${HOST_IP[$i]}:65001/metrics" \
            damselfly_dfdaemon_blob_bytes_total 'source="peer"') ))
    done
    echo "$sum"
}
relayed_pieces() { # piece answers the dfdaemons began while the piece was still arriving
    local sum=0 i
    for i in "${!HOST_NS[@]}"; do
        sum=$(( sum + $(metric_sum "${HOST_NS[$i]}" "http://${HOST_IP[$i]}:65001/metrics" \
            damselfly_dfdaemon_peer_relayed_pieces_total) ))
    done
    echo "$sum"
}

# Every hub port's counters (rx = that host's upload, tx = its download; v1 is the seed),
# appended to $WORK/timeline with a timestamp, 4 times a second until killed.
sample_links() {
    while true; do
        in_ns "$HUB" sh -c 't=$(date +%s.%N); for p in /sys/class/net/v*; do
            echo "$t ${p##*/} $(cat "$p/statistics/rx_bytes") $(cat "$p/statistics/tx_bytes")"; done' \
            >> "$WORK/timeline"
        sleep 0.25
    done
}

# Per second from the first sample: seed upload, hosts' mean upload and download (Mbit/s),
# each from the counters' change between the samples nearest the second's ends.
print_timeline() {
    echo
    echo "| s | seed up | hosts up (mean) | hosts down (mean) |"
    echo "|---:|---:|---:|---:|"
    awk -v hosts="$HOSTS" '
        { t[NR] = $1; port[NR] = $2; rx[NR] = $3; tx[NR] = $4; if (NR == 1) first = $1 }
        END {
            # last sample at or before each whole second, per port
            for (i = 1; i <= NR; i++) {
                s = int(t[i] - first); key = s SUBSEP port[i]
                lrx[key] = rx[i]; ltx[key] = tx[i]; if (s > last) last = s
            }
            for (s = 1; s <= last; s++) {
                su = 0; hu = 0; hd = 0
                for (k in lrx) {
                    split(k, kk, SUBSEP); if (kk[1] != s) continue
                    p = kk[2]; prev = (s - 1) SUBSEP p
                    if (!(prev in lrx)) continue
                    up = (lrx[k] - lrx[prev]) * 8 / 1e6; down = (ltx[k] - ltx[prev]) * 8 / 1e6
                    if (p == "v1") su = up; else { hu += up; hd += down }
                }
                row[s] = sprintf("| %d | %.0f | %.0f | %.0f |", s, su, hu / hosts, hd / hosts)
                if (su + hu + hd >= 1) end = s
            }
            # up to the last second anything moved (the digests are checked after the pull)
            for (s = 1; s <= end; s++) print row[s]
        }' "$WORK/timeline"
}

log "bound T_min = $T_MIN s ($HOSTS hosts, image $IMAGE_BYTES bytes, hosts ${RATE_MBIT} Mbit/s, seed ${SEED_RATE_MBIT} Mbit/s up/down)"
before=$(registry_blob_bytes)
if [ "$TIMELINE" -eq 1 ]; then
    sample_links &
    SAMPLER=$!
    PIDS+=("$SAMPLER")
fi
pull_all mirror
if [ "$TIMELINE" -eq 1 ]; then
    kill "$SAMPLER" 2>/dev/null || true
    wait "$SAMPLER" 2>/dev/null || true
fi
ROWS=$(summarize mirror "through dfdaemon (swarm)" "$before")
SWARM_NOTE=$(awk -v sn="$(supernode_sent)" -v peers="$(peer_bytes)" -v img="$IMAGE_BYTES" -v n="$HOSTS" \
    -v busy="$(metric_sum "$SEED" "http://127.0.0.1:8002/metrics" damselfly_supernode_busy_refusals_total)" \
    -v syncd="$(metric_sum "$SEED" "http://127.0.0.1:8002/metrics" damselfly_supernode_sync_digests_total)" \
    -v vouched="$(metric_sum "$SEED" "http://127.0.0.1:8002/metrics" damselfly_supernode_vouched_digests_total)" \
    -v relayed="$(relayed_pieces)" \
    'BEGIN { printf "supernode sent %.2f × the image (%d piece requests refused busy, %d piece digests in sync answers, %d signed with pieces); %.1f %% of the bytes the hosts received came from other hosts; %d piece answers relayed while arriving", sn / img, busy, syncd, vouched, peers / (n * img) * 100, relayed }')
if [ "$BASELINE" -eq 1 ]; then
    before=$(registry_blob_bytes)
    pull_all registry
    ROWS+=$'\n'$(summarize registry "straight from the registry" "$before")
fi

echo
echo "netns: $HOSTS hosts + seed host, links ${RATE_MBIT} Mbit/s (seed ${SEED_RATE_MBIT} Mbit/s) each way (tc tbf),"
echo "image $IMAGE_BYTES bytes in $((LAYERS + 1)) blobs; T_min = $T_MIN s (Kumar–Ross)"
echo
echo "| pull                       |     p50   | p50 / T_min | p99 / T_min | max / T_min | registry bytes / image |"
echo "|----------------------------|----------:|------:|------:|------:|-------:|"
echo "$ROWS"
echo
echo "swarm: $SWARM_NOTE"
[ "$TIMELINE" -eq 0 ] || print_timeline
echo "per host (s): $(for i in "${!HOST_NS[@]}"; do printf '%s ' "$(cat "$WORK/mirror.$i.done")"; done)"
