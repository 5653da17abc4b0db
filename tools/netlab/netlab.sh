#!/usr/bin/env bash
# Hearth's network lab: Linux network namespaces joined by veth pairs through a
# router namespace, with NAT routers, packet loss and partitions. Needs root. Nothing
# it makes touches the host's own interfaces: every address lives inside namespaces
# named LAB-..., and `down LAB` removes them all (and every process left in them).
#
#   netlab.sh check                 exit 0 when the lab can run here, else why not
#   netlab.sh install               install what it needs (nftables) with apt-get
#   netlab.sh up LAB star N         N hosts h1..hN, each on its own link to router r
#   netlab.sh up LAB nat [N]        a public host "relay" and N hosts dev1..devN
#                                   (default 2), each behind its own NAT router natI
#   netlab.sh addr LAB HOST         the host's address as the others reach it
#   netlab.sh exec LAB HOST CMD...  run CMD inside the host's namespace
#   netlab.sh loss LAB PCT          drop PCT% of the packets router r forwards
#   netlab.sh delay LAB MS [HEARTH] hold each packet MS ms at router r (each way:
#                                   an RTT of 2 x MS between two hosts); 0 ends it.
#                                   HEARTH is the hearth binary (default: $HEARTH_BIN,
#                                   else hearth on PATH), whose lab-forward does it
#   netlab.sh partition LAB A B     cut hosts A from hosts B (comma lists: h1,h2 h3)
#   netlab.sh heal LAB              end every partition
#   netlab.sh bytes LAB             packets and bytes router r forwarded so far
#   netlab.sh down LAB              kill what runs in the lab and remove it
#
# Addresses: in a star, host hI is 10.9.I.2 and router r 10.9.I.1 on hI's link. In
# the NAT lab, relay is 100.64.1.2 and natI 100.64.(I+1).2 (public side, through
# router r); devI is 10.I.0.2 behind natI.
# A NAT router masquerades what leaves its public side and forwards nothing in that
# the inside did not start, and drops (never answers) what comes to itself
# unasked (a home router's behaviour): dev1 and dev2 cannot reach
# each other, both reach relay. The kernel has no netem here: loss uses nftables'
# `numgen random` on router r (../shared/STACK-NOTES.md, "Network lab"), and delay a
# TUN device there: what r forwards is routed into it (policy routing by the link
# it came in on), `hearth lab-forward` holds each packet and writes it back, and r
# forwards it on by its main table. Partitions match the hosts' subnets, so they
# hold with a delay too.
set -euo pipefail

die() { echo "netlab: $*" >&2; exit 1; }

ns() { echo "$1-$2"; }

in_ns() { local n=$1; shift; ip netns exec "$n" "$@"; }

check() {
  [ "$(id -u)" = 0 ] || { echo "needs root (euid is $(id -u))"; return 1; }
  command -v ip >/dev/null || { echo "ip (iproute2) is not installed"; return 1; }
  command -v nft >/dev/null || command -v apt-get >/dev/null ||
    { echo "nft is not installed and apt-get is not there to install it"; return 1; }
  ip netns add "netlab-probe-$$" 2>/dev/null || { echo "cannot create a network namespace"; return 1; }
  ip netns del "netlab-probe-$$"
}

install() {
  command -v nft >/dev/null && return 0
  # Tests start labs in parallel: one installs, the others wait for it
  # (two apt-gets at once fail on dpkg's lock).
  exec 9>/tmp/hearth-netlab-install.lock
  flock 9
  command -v nft >/dev/null && return 0
  apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 nftables >/dev/null 2>&1 ||
    die "apt-get install nftables failed"
  command -v nft >/dev/null || die "nft still missing after apt-get"
}

# A namespace with its loopback up.
mkns() {
  ip netns add "$1"
  ip -n "$1" link set lo up
}

# link A IFA ADDR_A B IFB ADDR_B: a veth pair between namespaces A and B.
link() {
  ip link add "$2" netns "$1" type veth peer name "$5" netns "$4"
  ip -n "$1" addr add "$3" dev "$2"
  ip -n "$4" addr add "$6" dev "$5"
  ip -n "$1" link set "$2" up
  ip -n "$4" link set "$5" up
}

router() {
  mkns "$1"
  in_ns "$1" sysctl -qw net.ipv4.ip_forward=1
  # Loss and partitions live in their own chains, flushed on each change.
  in_ns "$1" nft -f - <<'NFT'
table inet lab {
  chain part { }
  chain loss { }
  chain forward {
    type filter hook forward priority 0; policy accept;
    iifname != "dly0" counter
    jump part
    jump loss
  }
}
NFT
}

up_star() {
  local lab=$1 n=$2 r
  [ "$n" -ge 1 ] && [ "$n" -le 200 ] || die "a star has 1 to 200 hosts"
  r=$(ns "$lab" r)
  router "$r"
  for i in $(seq 1 "$n"); do
    local h
    h=$(ns "$lab" "h$i")
    mkns "$h"
    link "$h" eth0 "10.9.$i.2/24" "$r" "h$i" "10.9.$i.1/24"
    ip -n "$h" route add default via "10.9.$i.1"
  done
}

up_nat() {
  local lab=$1 n=$2 r relay
  [ "$n" -ge 1 ] && [ "$n" -le 50 ] || die "a NAT lab has 1 to 50 devices"
  r=$(ns "$lab" r)
  router "$r"
  relay=$(ns "$lab" relay)
  mkns "$relay"
  link "$relay" eth0 100.64.1.2/24 "$r" relay 100.64.1.1/24
  ip -n "$relay" route add default via 100.64.1.1
  for i in $(seq 1 "$n"); do
    local nat dev
    nat=$(ns "$lab" "nat$i")
    dev=$(ns "$lab" "dev$i")
    mkns "$nat"
    mkns "$dev"
    in_ns "$nat" sysctl -qw net.ipv4.ip_forward=1
    link "$nat" wan0 "100.64.$((i + 1)).2/24" "$r" "nat$i" "100.64.$((i + 1)).1/24"
    link "$dev" eth0 "10.$i.0.2/24" "$nat" lan0 "10.$i.0.1/24"
    ip -n "$nat" route add default via "100.64.$((i + 1)).1"
    ip -n "$dev" route add default via "10.$i.0.1"
    in_ns "$nat" nft -f - <<'NFT'
table ip nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan0" masquerade
  }
}
table inet filter {
  chain forward {
    type filter hook forward priority 0; policy drop;
    iifname "lan0" accept
    ct state established,related accept
  }
  # As a home router: what comes in unasked to the router itself is dropped,
  # not answered (a reset would kill the other side of a hole punch, and the
  # connection it leaves would take the mapped port from the next punch).
  chain input {
    type filter hook input priority 0; policy accept;
    iifname "wan0" ct state established,related accept
    iifname "wan0" drop
  }
}
NFT
  done
}

hosts_of() { # lab: every host namespace of the lab
  ip netns list | awk '{print $1}' | grep "^$1-" || true
}

addr() {
  local n
  n=$(ns "$1" "$2")
  ip -n "$n" -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}' | cut -d/ -f1 | head -n1 |
    grep . || die "no host $2 in lab $1"
}

# The subnets router r reaches a comma list of hosts by (star labs: hI; NAT labs:
# relay, nat1, nat2, and dev1 and dev2 by their NAT router's).
subnets() {
  local lab=$1 IFS=, link
  for h in $2; do
    case "$h" in
      dev*) link="nat${h#dev}" ;;
      *) link="$h" ;;
    esac
    ip -n "$(ns "$lab" r)" -4 -o addr show dev "$link" 2>/dev/null | awk '{print $4}' |
      sed -E 's#\.[0-9]+/24$#.0/24#' | grep . || die "no host $h in lab $lab"
  done
}

# Router r's links to the hosts.
router_links() {
  ip -n "$(ns "$1" r)" -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -v -e '^lo$' -e '^dly0$'
}

loss() {
  local r pct=$2
  r=$(ns "$1" r)
  [[ "$pct" =~ ^[0-9]+$ ]] && [ "$pct" -le 100 ] || die "loss is a whole percentage, 0 to 100"
  in_ns "$r" nft flush chain inet lab loss
  case "$pct" in
    0) ;;
    100) in_ns "$r" nft add rule inet lab loss iifname != "dly0" drop ;;
    *) in_ns "$r" nft add rule inet lab loss iifname != "dly0" numgen random mod 100 '<' "$pct" drop ;;
  esac
}

partition() {
  local r a b sa sb
  r=$(ns "$1" r)
  sa=$(subnets "$1" "$2")
  sb=$(subnets "$1" "$3")
  for a in $sa; do
    for b in $sb; do
      in_ns "$r" nft add rule inet lab part ip saddr "$a" ip daddr "$b" drop
      in_ns "$r" nft add rule inet lab part ip saddr "$b" ip daddr "$a" drop
    done
  done
}

delay() {
  local lab=$1 ms=$2 bin=${3:-${HEARTH_BIN:-hearth}} r pidf link
  r=$(ns "$lab" r)
  [[ "$ms" =~ ^[0-9]+$ ]] && [ "$ms" -le 10000 ] || die "a delay is whole milliseconds, 0 to 10000"
  ip netns pids "$r" >/dev/null 2>&1 || die "no lab $lab"
  pidf="/run/netlab-$lab-delay.pid"
  if [ -f "$pidf" ]; then
    kill "$(cat "$pidf")" 2>/dev/null || true
    rm -f "$pidf"
  fi
  for link in $(router_links "$lab"); do
    ip -n "$r" rule del iif "$link" lookup 100 2>/dev/null || true
  done
  ip -n "$r" link del dly0 2>/dev/null || true
  [ "$ms" = 0 ] && return 0
  in_ns "$r" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
  ip -n "$r" tuntap add dev dly0 mode tun
  in_ns "$r" sysctl -qw net.ipv4.conf.dly0.rp_filter=0
  ip -n "$r" link set dly0 up
  ip -n "$r" route add default dev dly0 table 100
  in_ns "$r" "$bin" lab-forward --tun dly0 --delay-ms "$ms" </dev/null >/dev/null 2>&1 &
  echo $! >"$pidf"
  # Attached once the device has a carrier.
  for _ in $(seq 1 100); do
    ip -n "$r" link show dly0 | grep -q NO-CARRIER || break
    kill -0 "$(cat "$pidf")" 2>/dev/null || die "$bin lab-forward did not start"
    sleep 0.05
  done
  ip -n "$r" link show dly0 | grep -q NO-CARRIER && die "$bin lab-forward did not attach to dly0"
  for link in $(router_links "$lab"); do
    ip -n "$r" rule add iif "$link" lookup 100
  done
}

# Packets and bytes router r forwarded so far (a delayed packet counted once).
bytes() {
  in_ns "$(ns "$1" r)" nft list chain inet lab forward |
    awk '/counter packets/ { for (i = 1; i < NF; i++) { if ($i == "packets") p = $(i + 1); if ($i == "bytes") b = $(i + 1) } }
         END { if (p == "") exit 1; print p, b }' || die "no lab $1"
}

heal() {
  in_ns "$(ns "$1" r)" nft flush chain inet lab part
}

down() {
  local n
  for n in $(hosts_of "$1"); do
    for pid in $(ip netns pids "$n" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  done
  for n in $(hosts_of "$1"); do ip netns del "$n" 2>/dev/null || true; done
  rm -f "/run/netlab-$1-delay.pid"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  check) check ;;
  install) install ;;
  up)
    [ $# -ge 2 ] || die "up LAB star N | up LAB nat [N]"
    [[ "$1" =~ ^[a-z0-9]{1,8}$ ]] || die "a lab's name is 1 to 8 lowercase letters and digits"
    [ -z "$(hosts_of "$1")" ] || die "lab $1 exists: netlab.sh down $1 first"
    case "$2" in
      star) up_star "$1" "${3:-2}" ;;
      nat) up_nat "$1" "${3:-2}" ;;
      *) die "no topology $2 (star, nat)" ;;
    esac
    ;;
  addr) addr "$1" "$2" ;;
  exec) lab=$1 host=$2; shift 2; exec ip netns exec "$(ns "$lab" "$host")" "$@" ;;
  loss) loss "$1" "$2" ;;
  delay) delay "$@" ;;
  partition) partition "$1" "$2" "$3" ;;
  heal) heal "$1" ;;
  bytes) bytes "$1" ;;
  down) down "$1" ;;
  *) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
