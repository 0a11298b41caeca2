# Sourced by the install scripts: a private apt configuration in "$1" (a work directory),
# its sources derived from this machine's own /etc/apt (each deb source also as deb-src),
# so `apt-get "${apt_opts[@]}" download|source --download-only` changes nothing on the system.
# Sets the array `apt_opts` and runs `apt-get update` into that directory.
private_apt() {
    local apt_dir="$1/apt" found_sources=0 f
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/sources.list.d" "$apt_dir/archives/partial"
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
        echo "private-apt: no apt sources found in /etc/apt to derive the private ones from" >&2
        return 1
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
}
