# shellcheck shell=bash
# Sourced by e2e/test.sh and samples/traffic-shifting/demo.sh: makes sure
# the tools the local mesh and the network tests use are installed
# (iproute2 for namespaces and links, iptables for capture, curl for
# requests from inside pods, util-linux's setpriv to run the proxy as UID
# 1337), installing missing ones with apt when running as root.
ensure_network_tools() {
    local missing=() tool
    for tool in iptables:iptables ip:iproute2 curl:curl setpriv:util-linux; do
        command -v "${tool%%:*}" >/dev/null || missing+=("${tool##*:}")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "== installing ${missing[*]}"
            apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
        else
            echo "needed: ${missing[*]} (Debian packages); install them and rerun as root" >&2
            return 1
        fi
    fi
}
