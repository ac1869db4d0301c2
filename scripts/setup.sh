# shellcheck shell=bash
# Sourced by scripts/test and scripts/demo: what both need on a fresh machine.
# setup_env EXTRA  -> a venv in .venv with the package (and pip extra EXTRA, may be empty),
#                     and mosquitto from the distribution's packages when it is missing.

_apt_install() {
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "$@"
    else sudo apt-get update -qq && sudo apt-get install -y -qq "$@"; fi
}

setup_env() {
    local extra="$1" py="${PYTHON:-python3}"
    if [ ! -x .venv/bin/python ]; then
        # Debian and Raspberry Pi OS ship venv separately (python3-venv)
        "$py" -m venv .venv 2>/dev/null || { rm -rf .venv; _apt_install python3-venv && "$py" -m venv .venv; }
    fi
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extra:+[$extra]}"
    if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
        _apt_install mosquitto
    fi
}
