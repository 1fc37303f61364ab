#!/usr/bin/env bash
# A real cluster on one machine: network namespaces joined by bridges, one `musig2-node run` per
# namespace with its own directory and key, driven through the CLI only.
#
#   scripts/cluster.sh [--bin PATH] [--nodes N] [--keep]
#
# What it does, all inside 198.51.100.0/24 (TEST-NET-2), split into /26s:
#   LAN  198.51.100.0/26    N >= 5 nodes n0..n(N-1) on one bridge; everyone bootstraps off n0
#                            using only what `musig2-node info` prints there.
#        - a mesh session and a star session of all N signers, signed, every signature the same
#          and the creator's transcript verified offline (`verify-transcript`);
#        - the same with the last node's link throttled both ways by `tc ... tbf`;
#        - a session where one signer is SIGKILLed after joining and started again on its
#          directory mid-session: it resumes from DIR/sessions.redb and everyone signs.
#   X    198.51.100.64/26   relay r (.65) and node p (.66)
#   Y    198.51.100.128/26  relay r (.129) and node q (.130)
#        p and q have no route to each other (checked) and accept no connection from the
#        network (they listen on loopback only); r runs `--relay-server`, p and q `--relay`
#        through it; a session between p and q signs through the relay, the relay holds no
#        session, and AutoNAT tells p and q they are private and r that it is public.
#
# Everything it makes (namespaces; the bridges and veth pairs live inside them; processes;
# a temporary directory) is removed on exit, failure or interrupt. Names carry the prefix
# m2c-<pid>; leftovers of runs whose process is gone are removed first.
#
# Exit status: 0 passed, 77 skipped (one line says why: not root, no `ip netns`, ...), other
# failed (the nodes' logs are printed).
set -euo pipefail

BIN=""
NODES=5
KEEP=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin) BIN="$2"; shift 2 ;;
        --nodes) NODES="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        *) echo "usage: $0 [--bin PATH] [--nodes N] [--keep]" >&2; exit 2 ;;
    esac
done
if [[ -z "$BIN" ]]; then
    BIN="$(cd "$(dirname "$0")/.." && pwd)/target/debug/musig2-node"
fi
if (( NODES < 5 || NODES > 60 )); then
    echo "cluster: --nodes must be between 5 and 60" >&2
    exit 2
fi

PREFIX="m2c"
RUN="$PREFIX-$$"
NET="198.51.100"
STARTED_AT=$SECONDS

skip() {
    echo "cluster test skipped: $*"
    exit 77
}

# ---------------------------------------------------------------- can this machine do it?
[[ -x "$BIN" ]] || { echo "cluster: no binary at $BIN (build musig2-node first)" >&2; exit 2; }
for tool in ip tc jq timeout; do
    command -v "$tool" >/dev/null 2>&1 || skip "$tool not found"
done
[[ "$(id -u)" == 0 ]] || skip "ip netns unavailable (need root + CAP_NET_ADMIN)"
probe="$RUN-probe"
if ! ip netns add "$probe" 2>/dev/null; then
    skip "ip netns unavailable (need root + CAP_NET_ADMIN)"
fi
probe_ok=1
ip -n "$probe" link add b0 type bridge 2>/dev/null || probe_ok=0
if (( probe_ok )); then
    ip -n "$probe" link add v0 type veth peer name v1 2>/dev/null || probe_ok=0
fi
if (( probe_ok )); then
    ip -n "$probe" link set v1 up 2>/dev/null &&
        tc -n "$probe" qdisc add dev v1 root tbf rate 1mbit burst 32kbit latency 400ms \
            2>/dev/null || probe_ok=2
fi
ip netns del "$probe" 2>/dev/null || true
case $probe_ok in
    0) skip "ip link cannot make veth pairs or bridges here (need CAP_NET_ADMIN)" ;;
    2) skip "tc cannot add a tbf qdisc here" ;;
esac

# ---------------------------------------------------------------- cleanup
# Leftovers of earlier runs whose process is gone (never another live run's).
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PREFIX-" || true); do
    owner="${ns#"$PREFIX"-}"
    owner="${owner%%-*}"
    if [[ "$owner" =~ ^[0-9]+$ ]] && ! kill -0 "$owner" 2>/dev/null; then
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
        echo "cluster: removed stale namespace $ns"
    fi
done

for dir in "${TMPDIR:-/tmp}/$PREFIX"-*; do
    [[ -d "$dir" ]] || continue
    owner="${dir##*/"$PREFIX"-}"
    owner="${owner%%.*}"
    if [[ "$owner" =~ ^[0-9]+$ ]] && ! kill -0 "$owner" 2>/dev/null; then
        rm -rf "$dir"
    fi
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/$RUN.XXXXXX")"
declare -A PID=()
NAMESPACES=()
FAILED=1

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for name in "${!PID[@]}"; do
        kill -9 "${PID[$name]}" 2>/dev/null || true
    done
    for name in "${!PID[@]}"; do
        wait "${PID[$name]}" 2>/dev/null || true
    done
    for ns in "${NAMESPACES[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    if (( FAILED )); then
        for log in "$WORK"/*.log; do
            [[ -f "$log" ]] || continue
            echo "----- $(basename "$log") (last 40 lines)"
            tail -n 40 "$log"
        done
    fi
    if (( KEEP )); then
        echo "cluster: kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'echo "cluster: interrupted" >&2; exit 130' INT TERM

fail() {
    echo "cluster: FAILED: $*" >&2
    exit 1
}

step() {
    printf 'cluster [%3ds] %s\n' $((SECONDS - STARTED_AT)) "$*"
}

# Polls `cmd...` every 100 ms until it succeeds; fails after `limit` seconds.
wait_until() {
    local what="$1" limit="$2"
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        (( SECONDS < deadline )) || fail "$what: not within ${limit}s"
        sleep 0.1
    done
}

# ---------------------------------------------------------------- the network
SW="$RUN-sw"
new_ns() {
    ip netns add "$1"
    NAMESPACES+=("$1")
    ip -n "$1" link set lo up
}

# bridge NAME: a bridge in the switch namespace.
bridge() {
    ip -n "$SW" link add "$1" type bridge
    ip -n "$SW" link set "$1" up
}

# attach NODE IFACE BRIDGE ADDR/PREFIX: a veth pair from the node namespace to the bridge.
attach() {
    local node="$1" iface="$2" br="$3" addr="$4"
    local port="p${#PORTS[@]}"
    PORTS+=("$port")
    ip -n "$SW" link add "$port" type veth peer name "$iface" netns "$RUN-$node"
    ip -n "$SW" link set "$port" master "$br" up
    ip -n "$RUN-$node" addr add "$addr" dev "$iface"
    ip -n "$RUN-$node" link set "$iface" up
    SWITCH_PORT["$node/$iface"]="$port"
}
PORTS=()
declare -A SWITCH_PORT=()

step "network: $NODES nodes on $NET.0/26, relay r between $NET.64/26 and $NET.128/26"
new_ns "$SW"
bridge lan
bridge bx
bridge by
for ((i = 0; i < NODES; i++)); do
    new_ns "$RUN-n$i"
    attach "n$i" eth0 lan "$NET.$((i + 1))/26"
done
for node in r p q; do new_ns "$RUN-$node"; done
attach r ethx bx "$NET.65/26"
attach r ethy by "$NET.129/26"
attach p eth0 bx "$NET.66/26"
attach q eth0 by "$NET.130/26"
# The relay forwards no IP packets: p and q reach each other only through the relay's libp2p.
ip netns exec "$RUN-r" sysctl -qw net.ipv4.ip_forward=0

# ---------------------------------------------------------------- nodes and the CLI
# cli NODE ARGS...: the CLI inside the node's namespace, on its directory, JSON out.
cli() {
    local node="$1"
    shift
    ip netns exec "$RUN-$node" env -u MUSIG2_DIR "$BIN" --dir "$WORK/$node" --json "$@"
}

RUNS=0
# start NODE ARGS...: `musig2-node run` in the node's namespace; waits for its start line.
start() {
    local node="$1"
    shift
    RUNS=$((RUNS + 1))
    local out="$WORK/$node.out.$RUNS"
    ip netns exec "$RUN-$node" env -u MUSIG2_DIR RUST_LOG="${CLUSTER_LOG:-info}" "$BIN" --dir "$WORK/$node" \
        --json run --listen "${LISTEN_ON:-/ip4/0.0.0.0/tcp/4001}" "$@" >"$out" \
        2>>"$WORK/$node.log" &
    PID[$node]=$!
    wait_until "$node starts" 30 grep -q '"event":"started"' "$out"
    LAST_START="$(grep -m1 '"event":"started"' "$out")"
}

# kill9 NODE: SIGKILL, no shutdown.
kill9() {
    kill -9 "${PID[$1]}"
    wait "${PID[$1]}" 2>/dev/null || true
    unset "PID[$1]"
}

keygen() {
    local json
    json="$(cli "$1" keygen)"
    KEY[$1]="$(jq -r .public_key <<<"$json")"
    PEER[$1]="$(jq -r .peer_id <<<"$json")"
}
declare -A KEY=() PEER=()

connected_at_least() {
    cli "$1" info | jq -e ".connected_peers.count >= $2"
}

# The address `info` on NODE prints first whose IP starts with PREFIX.
info_address() {
    cli "$1" info | jq -r --arg p "/ip4/$2" '[.addresses[] | select(startswith($p))][0] // empty'
}

# create NODE TOPOLOGY TEXT SIGNERS...: prints "<session> <output key>".
create() {
    local node="$1" topology="$2" text="$3"
    shift 3
    local args=()
    for s in "$@"; do args+=(--signer "${KEY[$s]}"); done
    for s in "$@"; do args+=(--peer "${PEER[$s]}"); done
    cli "$node" session create "${args[@]}" --message-text "$text" --topology "$topology" \
        --join-timeout 2m | jq -r '"\(.session) \(.output_key)"'
}

# new_session NODE TOPOLOGY TEXT SIGNERS...: sets S (session id) and K (output key).
new_session() {
    local out
    out="$(create "$@")" || fail "session create on $1 failed"
    read -r S K <<<"$out"
    [[ "$S" =~ ^[0-9a-f]{64}$ ]] || fail "session create on $1 printed $out"
}

# sign_all SESSION CREATOR SIGNERS...: the creator waits, every other signer signs, all in
# parallel; then every node's signature must be the same, and the creator's transcript must
# verify offline.
sign_all() {
    local session="$1" creator="$2"
    shift 2
    local pids=() node
    for node in "$@"; do
        if [[ "$node" == "$creator" ]]; then
            cli "$node" session wait "$session" --timeout 90 >"$WORK/sig.$node" 2>&1 &
        else
            cli "$node" session sign "$session" --timeout 90 >"$WORK/sig.$node" 2>&1 &
        fi
        pids+=($!)
    done
    local failed=0
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    if (( failed )); then
        for node in "$@"; do echo "$node: $(cat "$WORK/sig.$node")" >&2; done
        fail "session $session did not sign on every node"
    fi
    verify "$session" "$creator" "$@"
}

# verify SESSION CREATOR SIGNERS...: the same signature everywhere; the transcript verifies.
verify() {
    local session="$1" creator="$2"
    shift 2
    local first="" node sig
    for node in "$@"; do
        sig="$(jq -r .signature "$WORK/sig.$node")"
        [[ "$sig" =~ ^[0-9a-f]{128}$ ]] || fail "$node: no signature: $(cat "$WORK/sig.$node")"
        [[ -z "$first" || "$sig" == "$first" ]] || fail "$node signed $sig, others $first"
        first="$sig"
    done
    local file="$WORK/$session.transcript"
    cli "$creator" session export "$session" --out "$file" >/dev/null
    "$BIN" --json verify-transcript "$file" >"$WORK/verify.json" ||
        fail "transcript of $session does not verify: $(cat "$WORK/verify.json")"
    jq -e --arg s "$first" \
        '.valid and .signature.valid and .signature.hex == $s and .proofs == []' \
        "$WORK/verify.json" >/dev/null || fail "transcript of $session: $(cat "$WORK/verify.json")"
}

ALL=()
for ((i = 0; i < NODES; i++)); do ALL+=("n$i"); done
for node in "${ALL[@]}" r p q; do keygen "$node"; done

# ---------------------------------------------------------------- the LAN
step "starting n0; the others bootstrap off the address its \`info\` prints"
start n0
BOOT="$(info_address n0 "$NET.")"
[[ "$BOOT" == "/ip4/$NET.1/tcp/4001/p2p/${PEER[n0]}" ]] || fail "n0's info printed $BOOT"
for node in "${ALL[@]:1}"; do start "$node" --bootstrap "$BOOT"; done
for node in "${ALL[@]}"; do
    wait_until "$node connected" 30 connected_at_least "$node" 1
done

step "mesh session of $NODES signers"
new_session n0 mesh "cluster mesh" "${ALL[@]}"
sign_all "$S" n0 "${ALL[@]}"
step "star session of $NODES signers (coordinator n1)"
new_session n1 star "cluster star" "${ALL[@]}"
sign_all "$S" n1 "${ALL[@]}"

LAST="${ALL[$((NODES - 1))]}"
step "throttling $LAST's link both ways with tc tbf (256 kbit/s)"
for dev_ns in "$RUN-$LAST eth0" "$SW ${SWITCH_PORT[$LAST/eth0]}"; do
    read -r ns dev <<<"$dev_ns"
    tc -n "$ns" qdisc add dev "$dev" root tbf rate 256kbit burst 16kb latency 500ms
done
tc -n "$RUN-$LAST" qdisc show dev eth0 | grep -q tbf || fail "no tbf qdisc on $LAST"
new_session "$LAST" mesh "cluster throttled mesh" "${ALL[@]}"
sign_all "$S" "$LAST" "${ALL[@]}"
new_session n0 star "cluster throttled star" "${ALL[@]}"
sign_all "$S" n0 "${ALL[@]}"

VICTIM=n2
step "SIGKILL $VICTIM mid-session, the others join, $VICTIM restarts on its directory"
new_session n0 mesh "cluster restart" "${ALL[@]}"
cli "$VICTIM" session join "$S" >/dev/null
joined_at_least() {
    cli "$1" session status "$2" | jq -e ".joined >= $3"
}
wait_until "n0 sees $VICTIM's join" 30 joined_at_least n0 "$S" 2
kill9 "$VICTIM"
for node in "${ALL[@]}"; do
    [[ "$node" == n0 || "$node" == "$VICTIM" ]] && continue
    cli "$node" session join "$S" >/dev/null
done
start "$VICTIM" --bootstrap "$BOOT"
jq -e '.resumed_sessions.unfinished >= 1' <<<"$LAST_START" >/dev/null ||
    fail "$VICTIM resumed nothing: $LAST_START"
for node in "${ALL[@]}"; do
    cli "$node" session wait "$S" --timeout 90 >"$WORK/sig.$node" 2>&1 ||
        fail "$node did not sign after the restart: $(cat "$WORK/sig.$node")"
done
verify "$S" n0 "${ALL[@]}"
cli "$VICTIM" session status "$S" | jq -e '.attempt >= 1 and .phase == "done"' >/dev/null ||
    fail "$VICTIM's session did not go on at a new attempt"

# ---------------------------------------------------------------- through a relay
step "relay: p ($NET.66) and q ($NET.130) have no route to each other"
no_route() {
    ! ip netns exec "$RUN-$1" timeout 3 bash -c "exec 3<>/dev/tcp/$2/4001" 2>/dev/null
}
start r --relay-server --external-addr "/ip4/$NET.65/tcp/4001" \
    --external-addr "/ip4/$NET.129/tcp/4001" --autonat-private-ips
RX="$(info_address r "$NET.65/")"
RY="$(info_address r "$NET.129/")"
[[ -n "$RX" && -n "$RY" ]] || fail "r's info printed no address per side"
# p and q are behind a firewall as well: they listen on loopback only, so nobody can dial them
# (their connections out work); AutoNAT's dial-backs fail and they learn they are private.
LISTEN_ON=/ip4/127.0.0.1/tcp/4001 start p --bootstrap "$RX" --relay "$RX" --autonat-private-ips
LISTEN_ON=/ip4/127.0.0.1/tcp/4001 start q --bootstrap "$RY" --relay "$RY" --autonat-private-ips
no_route p "$NET.130" || fail "p reaches q directly"
no_route q "$NET.66" || fail "q reaches p directly"
relayed() {
    cli "$1" info | jq -e --arg r "${PEER[r]}" \
        '(.relay_reservations | index($r)) != null and
         ([.listen_addresses[] | select(contains("/p2p-circuit/"))] | length) > 0'
}
wait_until "p holds a relay reservation" 30 relayed p
wait_until "q holds a relay reservation" 30 relayed q
step "session between p and q through the relay"
new_session p mesh "through the relay" p q
sign_all "$S" p p q
cli p info | jq -e --arg q "${PEER[q]}" '.connected_peers.peers | index($q) != null' >/dev/null ||
    fail "p is not connected to q"
cli r session list | jq -e '.sessions == []' >/dev/null || fail "the relay holds a session"
reachability() {
    cli "$1" info | jq -e --arg s "$2" '.reachability.status == $s'
}
wait_until "AutoNAT: p finds it is private" 60 reachability p private
wait_until "AutoNAT: q finds it is private" 60 reachability q private
wait_until "AutoNAT: the relay finds it is public" 60 reachability r public

FAILED=0
step "passed: mesh, star, throttled, SIGKILL + resume, relayed ($NODES + 3 nodes)"
