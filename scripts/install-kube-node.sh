#!/usr/bin/env bash
# The container runtime and pod network of the real test node (tests/kube_node.py), from
# Debian bookworm's packages, into a per-machine cache outside the checkout:
# containerd 1.6 (with ctr and the runc v2 shim), runc, the CNI plugins (bridge,
# host-local, loopback) and umoci, unpacked with `dpkg -x`; and two OCI image archives
# built here with umoci: the pod sandbox image (scripts/lib/pause.c compiled statically
# with this machine's gcc) and a test image with busybox-static (sh, sleep, head, dd, nc,
# httpd). Once per machine (about 10 s), then reused; a second run does nothing.
#
# Beside it, in a directory of its own ($cache/node-dns): dnsmasq from dnsmasq-base and
# the libraries it needs that a minimal Debian 12 lacks (netfilter-conntrack, nftables and
# theirs, in lib/), the node's stand-in for cluster DNS (tests/node_dns.py); about 2 s.
#
# No system changes: a private apt configuration (scripts/lib/private-apt.sh).
set -euo pipefail

cache=${JSS_CACHE:-$HOME/.cache/jhub-spark-scaler}
node="$cache/node"
stamp="$node/.complete-1"  # bump the number when what is built here changes
dns="$cache/node-dns"
dns_stamp="$dns/.complete-1"
if [ -e "$stamp" ] && [ -e "$dns_stamp" ]; then
    exit 0
fi
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$cache"
work=$(mktemp -d "$cache/node-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
started=$SECONDS

. "$here/lib/private-apt.sh"
private_apt "$work"
cd "$work"

# dnsmasq into $dns/bin, the shared libraries it needs that this machine lacks into $dns/lib
install_dns() {
    echo "install-kube-node: dnsmasq into $dns" >&2
    mkdir dns-debs dns-root
    (cd dns-debs && apt-get "${apt_opts[@]}" -qq download dnsmasq-base libnetfilter-conntrack3 \
        libnfnetlink0 libnftables1 libnftnl11 libmnl0 libjansson4 libxtables12)
    for deb in dns-debs/*.deb; do dpkg -x "$deb" dns-root; done
    mkdir -p dns-out/bin dns-out/lib
    cp dns-root/usr/sbin/dnsmasq dns-out/bin/
    cp -a dns-root/usr/lib/*-linux-gnu/*.so* dns-out/lib/
    if LD_LIBRARY_PATH="$work/dns-out/lib" ldd dns-out/bin/dnsmasq | grep -q "not found"; then
        LD_LIBRARY_PATH="$work/dns-out/lib" ldd dns-out/bin/dnsmasq >&2
        echo "install-kube-node: dnsmasq's shared libraries are missing (above)" >&2
        exit 1
    fi
    LD_LIBRARY_PATH="$work/dns-out/lib" dns-out/bin/dnsmasq --version >/dev/null
    rm -rf "$dns"
    mv dns-out "$dns"
    touch "$dns_stamp"
}
if [ ! -e "$dns_stamp" ]; then
    install_dns
fi
if [ -e "$stamp" ]; then
    echo "install-kube-node: done in $((SECONDS - started)) s" >&2
    exit 0
fi
echo "install-kube-node: containerd, runc, CNI plugins and test images into $node" >&2
apt-get "${apt_opts[@]}" -qq download containerd runc containernetworking-plugins umoci busybox-static
mkdir root
for deb in ./*.deb; do dpkg -x "$deb" root; done
# runc links libseccomp.so.2, which every Debian 12 has (apt depends on it)
if ldd root/usr/sbin/runc | grep -q "not found"; then
    ldd root/usr/sbin/runc >&2
    echo "install-kube-node: runc's shared libraries are missing (above): install libseccomp2" >&2
    exit 1
fi

# The node's binaries, in one directory for the kubelet's and containerd's PATH.
mkdir -p out/bin out/cni out/images
cp root/usr/bin/containerd root/usr/bin/containerd-shim-runc-v2 root/usr/bin/ctr \
   root/usr/sbin/runc root/usr/bin/umoci out/bin/
cp root/usr/lib/cni/bridge root/usr/lib/cni/host-local root/usr/lib/cni/loopback out/cni/

# image NAME FILE...: an OCI archive out/images/NAME.tar (tag "test") whose rootfs holds
# FILE... in /bin, and whose entrypoint is the first FILE.
image() {
    local name=$1 layout="$work/oci-$1" bundle="$work/bundle-$1" entry
    shift
    out/bin/umoci init --layout "$layout"
    out/bin/umoci new --image "$layout:test"
    out/bin/umoci unpack --image "$layout:test" "$bundle"
    mkdir -p "$bundle/rootfs/bin" "$bundle/rootfs/tmp"
    for f in "$@"; do cp "$f" "$bundle/rootfs/bin/"; done
    entry="/bin/$(basename "$1")"
    if [ "$name" = busybox ]; then
        for applet in sh sleep head dd nc httpd cat echo kill ps ls mkdir wc; do
            ln -s busybox "$bundle/rootfs/bin/$applet"
        done
        entry=/bin/sh
    fi
    out/bin/umoci repack --image "$layout:test" "$bundle"
    out/bin/umoci config --image "$layout:test" --config.entrypoint "$entry" \
        --config.env PATH=/bin
    tar -C "$layout" -cf "out/images/$name.tar" .
}
gcc -static -Os -s -o pause "$here/lib/pause.c"
image pause "$work/pause"
image busybox root/bin/busybox

rm -rf "$node.tmp"
mv out "$node.tmp"
rm -rf "$node"
mv "$node.tmp" "$node"
touch "$stamp"
echo "install-kube-node: done in $((SECONDS - started)) s" >&2
