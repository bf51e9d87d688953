# Sourced by the scripts that need system programs: `need_programs redis-server openssl`
# installs, with apt-get (Debian/Ubuntu), those not on PATH.
need_programs() {
    local missing=()
    local program
    for program in "$@"; do
        command -v "$program" >/dev/null 2>&1 || missing+=("$program")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "${missing[*]} not found, and this is not a Debian/Ubuntu system: install ${missing[*]} and run again" >&2
        return 1
    fi
    echo "${missing[*]} not found; installing with apt-get" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}
