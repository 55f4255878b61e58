# Shared by scripts/cluster and scripts/bench (sourced).
# What an agent's bridge network leaves on the host once it is stopped:
# its tasks' namespaces, its iptables chains and their jumps, the bridge.
remove_bridge() {
  local br=$1 ns
  for ns in /run/netns/"$br"-*; do
    if [ -e "$ns" ]; then ip netns del "${ns##*/}" 2>/dev/null || true; fi
  done
  while iptables -w -t nat -D POSTROUTING -j "APY-POST-$br" 2>/dev/null; do :; done
  while iptables -w -t nat -D PREROUTING -m addrtype --dst-type LOCAL -j "APY-DNAT-$br" 2>/dev/null; do :; done
  while iptables -w -t nat -D OUTPUT -m addrtype --dst-type LOCAL -j "APY-DNAT-$br" 2>/dev/null; do :; done
  while iptables -w -t filter -D FORWARD -j "APY-FWD-$br" 2>/dev/null; do :; done
  for c in nat:APY-POST nat:APY-DNAT filter:APY-FWD; do
    iptables -w -t "${c%%:*}" -F "${c#*:}-$br" 2>/dev/null || true
    iptables -w -t "${c%%:*}" -X "${c#*:}-$br" 2>/dev/null || true
  done
  ip link del "$br" 2>/dev/null || true
}

