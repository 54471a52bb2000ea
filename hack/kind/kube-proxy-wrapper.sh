#!/bin/sh
# /usr/local/bin/kube-proxy in our kube-proxy image: use the iptables backend the node already uses
# (the rule count decides, as kind's node entrypoint does for the node), then run kube-proxy.
legacy=$( (iptables-legacy-save; ip6tables-legacy-save) 2>/dev/null | grep -c '^-')
nft=$( (iptables-nft-save; ip6tables-nft-save) 2>/dev/null | grep -c '^-')
mode=nft
[ "${legacy:-0}" -gt "${nft:-0}" ] && mode=legacy
update-alternatives --set iptables "/usr/sbin/iptables-$mode" >/dev/null
update-alternatives --set ip6tables "/usr/sbin/ip6tables-$mode" >/dev/null
exec /usr/local/bin/kube-proxy.bin "$@"
