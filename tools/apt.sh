# Sourced by tools/setup.sh and tools/real-pool.sh: install the Debian packages of a list
# that are not installed yet (nothing when all are), through sudo when not root.
#   apt_install_missing LABEL PACKAGE...
apt_install_missing() {
    local label=$1 p sudo=
    shift
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    [[ $(id -u) -eq 0 ]] || sudo=sudo
    echo "$label: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}
