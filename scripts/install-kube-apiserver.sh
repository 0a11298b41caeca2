#!/usr/bin/env bash
# Build the test kube-apiserver (v1.20.2) from Debian bookworm's `kubernetes` source
# package and unpack etcd from Debian's `etcd-server`, into a per-machine cache outside
# the checkout. Built once per machine (about 4-5 minutes on 2 cores), then reused.
#
# No system changes: a private apt configuration (deb-src entries derived from this
# machine's own apt sources) fetches the source with `apt-get source --download-only`
# and the build tools with `apt-get download`; `dpkg -x` unpacks them into the cache.
set -euo pipefail

cache=${JSS_CACHE:-$HOME/.cache/jhub-spark-scaler}
bin="$cache/bin"
if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/etcd" ]; then
    exit 0
fi
mkdir -p "$bin"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "install-kube-apiserver: building kube-apiserver v1.20.2 from Debian source into $bin" >&2

# A private apt: the machine's deb sources, each also as deb-src.
apt_dir="$work/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/sources.list.d" "$apt_dir/archives/partial"
found_sources=0
for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    sed 's/^Types: deb$/Types: deb deb-src/' "$f" > "$apt_dir/sources.list.d/$(basename "$f")"
    found_sources=1
done
if [ -f /etc/apt/sources.list ]; then
    grep -E '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' > "$apt_dir/sources.list.d/derived-src.list" || true
    grep -E '^deb ' /etc/apt/sources.list >> "$apt_dir/sources.list.d/derived-src.list" || true
    [ -s "$apt_dir/sources.list.d/derived-src.list" ] && found_sources=1
fi
if [ "$found_sources" = 0 ]; then
    echo "install-kube-apiserver: no apt sources found in /etc/apt to derive deb-src entries from" >&2
    exit 1
fi
apt_opts=(
    -o "Dir::Etc::SourceList=/dev/null"
    -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::Cache::Archives=$apt_dir/archives"
    -o "Dir::Cache::pkgcache="
    -o "Dir::Cache::srcpkgcache="
    -o "APT::Sandbox::User=root"
)
apt-get "${apt_opts[@]}" -qq update

cd "$work"
apt-get "${apt_opts[@]}" -qq source --download-only kubernetes
apt-get "${apt_opts[@]}" -qq download golang-1.19-go golang-1.19-src \
    golang-github-modern-go-reflect2-dev etcd-server rsync
mkdir tools
for deb in ./*.deb; do dpkg -x "$deb" tools; done
dpkg-source -x --skip-patches ./kubernetes_*.dsc src >/dev/null

# The vendored reflect2 1.0.1 panics under Go >= 1.18; Debian's 1.0.2 does not.
rm -rf src/vendor/github.com/modern-go/reflect2
cp -r tools/usr/share/gocode/src/github.com/modern-go/reflect2 src/vendor/github.com/modern-go/reflect2

export GOROOT="$work/tools/usr/lib/go-1.19"
export PATH="$GOROOT/bin:$work/tools/usr/bin:$PATH"  # go, and rsync for the upstream build scripts
export GOCACHE="$work/gocache" GOPROXY=off CGO_ENABLED=0
export KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean
(cd src && make WHAT=cmd/kube-apiserver >"$work/build.log" 2>&1) || {
    tail -n 30 "$work/build.log" >&2
    echo "install-kube-apiserver: the kube-apiserver build failed (log above)" >&2
    exit 1
}
install -m 0755 src/_output/local/bin/linux/*/kube-apiserver "$bin/kube-apiserver.tmp"
install -m 0755 tools/usr/bin/etcd "$bin/etcd"
mv "$bin/kube-apiserver.tmp" "$bin/kube-apiserver"
"$bin/kube-apiserver" --version >&2
