#!/usr/bin/env bash
# Build the test Kubernetes binaries (v1.20.2) from Debian bookworm's `kubernetes` source
# package and unpack etcd from Debian's `etcd-server`, into a per-machine cache outside the
# checkout: kube-apiserver for every Kubernetes test, and kubelet, kube-scheduler,
# kube-controller-manager and kube-proxy for the real node (tests/kube_node.py). One
# `make` builds whichever are missing: all five on a fresh machine (estimated 10 minutes on 2
# idle cores), the four node ones where only the apiserver was cached (746 s measured
# under nice -n 19 on 2 cores busy with other work). Then reused.
#
# No system changes: a private apt configuration (scripts/lib/private-apt.sh) fetches the
# source with `apt-get source --download-only` and the build tools with `apt-get download`;
# `dpkg -x` unpacks them into the cache.
set -euo pipefail

cache=${JSS_CACHE:-$HOME/.cache/jhub-spark-scaler}
bin="$cache/bin"
commands=(kube-apiserver kubelet kube-scheduler kube-controller-manager kube-proxy)
missing=()
for c in "${commands[@]}"; do
    [ -x "$bin/$c" ] || missing+=("$c")
done
if [ "${#missing[@]}" = 0 ] && [ -x "$bin/etcd" ]; then
    exit 0
fi
mkdir -p "$bin"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
if [ "${#missing[@]}" != 0 ]; then
    echo "install-kube-apiserver: building ${missing[*]} (v1.20.2) from Debian source into $bin" >&2
else
    echo "install-kube-apiserver: unpacking etcd from Debian's etcd-server into $bin" >&2
fi
started=$SECONDS

. "$(dirname "$0")/lib/private-apt.sh"
private_apt "$work"

cd "$work"
apt-get "${apt_opts[@]}" -qq download etcd-server
if [ "${#missing[@]}" != 0 ]; then
    apt-get "${apt_opts[@]}" -qq source --download-only kubernetes
    apt-get "${apt_opts[@]}" -qq download golang-1.19-go golang-1.19-src \
        golang-github-modern-go-reflect2-dev rsync
fi
mkdir tools
for deb in ./*.deb; do dpkg -x "$deb" tools; done

if [ "${#missing[@]}" != 0 ]; then
    dpkg-source -x --skip-patches ./kubernetes_*.dsc src >/dev/null
    # The vendored reflect2 1.0.1 panics under Go >= 1.18; Debian's 1.0.2 does not.
    rm -rf src/vendor/github.com/modern-go/reflect2
    cp -r tools/usr/share/gocode/src/github.com/modern-go/reflect2 src/vendor/github.com/modern-go/reflect2

    export GOROOT="$work/tools/usr/lib/go-1.19"
    export PATH="$GOROOT/bin:$work/tools/usr/bin:$PATH"  # go, and rsync for the upstream build scripts
    export GOCACHE="$work/gocache" GOPROXY=off CGO_ENABLED=0
    export KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean
    what=$(printf 'cmd/%s ' "${missing[@]}")
    (cd src && make WHAT="${what% }" >"$work/build.log" 2>&1) || {
        tail -n 30 "$work/build.log" >&2
        echo "install-kube-apiserver: the build of ${missing[*]} failed (log above)" >&2
        exit 1
    }
    for c in "${missing[@]}"; do
        install -m 0755 src/_output/local/bin/linux/*/"$c" "$bin/$c.tmp"
    done
    # the cache is complete only when every binary is in place: each appears at once
    for c in "${missing[@]}"; do
        mv "$bin/$c.tmp" "$bin/$c"
    done
fi
[ -x "$bin/etcd" ] || { install -m 0755 tools/usr/bin/etcd "$bin/etcd.tmp" && mv "$bin/etcd.tmp" "$bin/etcd"; }
echo "install-kube-apiserver: done in $((SECONDS - started)) s" >&2
