# Installing what a bench script needs (sourced, not run). The sourcing script sets PY and
# INSTALL (0 with --no-install), defines die, and has /usr/sbin on its PATH.
#
# install_tools [COMMAND:PACKAGE ...]: wrk, haproxy and nginx (the proxies and the origin),
# and each further COMMAND that is missing, from its Debian PACKAGE. nginx comes from
# nginx-light where Debian still has it (in Debian 12 a transitional package for nginx,
# whose binary has the mirror module the origin's /post needs), else from nginx.
install_tools() {
    command -v "$PY" >/dev/null || die "python3 is required"
    local need=() want_nginx=0 pair missing
    for pair in wrk:wrk haproxy:haproxy "$@"; do
        command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
    done
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || want_nginx=1
    ((${#need[@]} || want_nginx)) || return 0
    missing="${need[*]}"
    ((want_nginx)) && missing+="${missing:+ }nginx"
    ((INSTALL)) || die "missing tools ($missing); rerun without --no-install"
    [[ $(id -u) == 0 ]] || die "missing tools ($missing); run as root or install them"
    echo "== installing $missing" >&2
    apt-get update -qq
    if ((want_nginx)); then
        if [[ $(apt-cache policy nginx-light 2>/dev/null) == *"Candidate: "[0-9]* ]]; then
            need+=(nginx-light)
        else
            need+=(nginx)
        fi
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
}
