#!/usr/bin/env bash
# Install (or upgrade, or remove) the alarmgw agent as a systemd service on
# Raspberry Pi OS (bookworm or later; Python >= 3.11). Run it from the repository:
#
#   sudo systemd/install.sh              install or upgrade, then (re)start the service
#   sudo systemd/install.sh --dry-run    print every step, change nothing
#   sudo systemd/install.sh --uninstall  remove the service and the venv; KEEPS
#                                        /etc/alarmgw (config) and /var/lib/alarmgw (buffer)
#
# Idempotent: running it again upgrades the package and keeps an existing
# /etc/alarmgw/alarmgw.toml untouched. Every change goes through `run`, so
# --dry-run shows exactly what a real run would do.
set -euo pipefail

readonly SERVICE=alarmgw
readonly SERVICE_USER=alarmgw
readonly PREFIX=/opt/alarmgw
readonly VENV="$PREFIX/venv"
readonly ETC_DIR=/etc/alarmgw
readonly CONFIG="$ETC_DIR/alarmgw.toml"
readonly STATE_DIR=/var/lib/alarmgw
readonly SHARE_DIR=/usr/share/alarmgw
readonly DOC_DIR=/usr/share/doc/alarmgw
readonly UNIT_PATH=/etc/systemd/system/alarmgw.service
# the technician's command on the PATH (also sudo's secure_path on Debian/Raspberry Pi OS)
readonly BIN_LINK=/usr/local/bin/alarmgw
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_DIR

DRY_RUN=0
ACTION=install

usage() {
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

say() { printf '==> %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

# Every command that changes the system goes through here.
run() {
    if ((DRY_RUN)); then
        printf '+ %s\n' "$*"
    else
        "$@"
    fi
}

parse_args() {
    while (($#)); do
        case "$1" in
            --dry-run) DRY_RUN=1 ;;
            --uninstall) ACTION=uninstall ;;
            -h | --help)
                usage
                exit 0
                ;;
            *)
                usage >&2
                exit 2
                ;;
        esac
        shift
    done
}

check_prerequisites() {
    if ((!DRY_RUN)) && [[ $EUID -ne 0 ]]; then
        die "run as root (sudo $0)"
    fi
    command -v systemctl >/dev/null || die "systemctl not found: this needs a systemd system"
    [[ -f "$REPO_DIR/pyproject.toml" ]] || die "$REPO_DIR does not look like the alarmgw repository"
    command -v python3 >/dev/null || die "python3 not found (apt-get install python3 python3-venv)"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "Python >= 3.11 is needed (Raspberry Pi OS bookworm or later)"
    python3 -c 'import venv, ensurepip' 2>/dev/null ||
        die "the venv module is missing: apt-get install python3-venv"
}

ensure_groups() {
    # dialout owns the serial ports; Raspberry Pi OS has gpio for /dev/gpiochip*.
    # Elsewhere (a test VM) gpio may be missing, and the unit's SupplementaryGroups
    # would then stop the service from starting, so create it.
    local group
    for group in dialout gpio; do
        if ! getent group "$group" >/dev/null; then
            say "creating system group $group"
            run groupadd --system "$group"
        fi
    done
}

ensure_user() {
    if id -u "$SERVICE_USER" >/dev/null 2>&1; then
        say "user $SERVICE_USER exists"
    else
        say "creating system user $SERVICE_USER"
        run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "alarmgw gateway agent" "$SERVICE_USER"
    fi
    run usermod --append --groups dialout,gpio "$SERVICE_USER"
}

install_package() {
    if [[ -x "$VENV/bin/python" ]]; then
        say "upgrading the package in $VENV"
    else
        say "creating the virtual environment $VENV"
        run install -d -m 0755 "$PREFIX"
        run python3 -m venv "$VENV"
    fi
    local extras=""
    case "$(uname -m)" in
        aarch64 | armv7l) extras="[pi]" ;; # lgpio, the GPIO backend on a Pi 5
    esac
    run "$VENV/bin/pip" install --quiet --upgrade pip
    # pip builds a local directory in place: run as root on the checkout, it would leave
    # root-owned build/ and *.egg-info there (and a stale build/lib in later wheels).
    # Build from a copy of the sources instead, removed afterwards.
    local staging="$PREFIX/src"
    run rm -rf "$staging"
    run install -d -m 0755 "$staging"
    run stage_sources "$staging"
    run "$VENV/bin/pip" install --quiet --upgrade "$staging$extras"
    run rm -rf "$staging"
}

# The package's sources, without the checkout's own venv, caches and git history.
stage_sources() {
    tar -C "$REPO_DIR" --exclude=.git --exclude=.venv --exclude=__pycache__ \
        --exclude='.*_cache' --exclude=.hypothesis --exclude=build --exclude='*.egg-info' \
        -cf - . | tar -C "$1" -xf -
}

install_config() {
    run install -d -m 0750 -o root -g "$SERVICE_USER" "$ETC_DIR"
    if [[ -e "$CONFIG" ]]; then
        say "keeping the existing $CONFIG"
    else
        say "installing the example config as $CONFIG: edit it, then run: alarmgw check-config $CONFIG"
        run install -m 0640 -o root -g "$SERVICE_USER" "$REPO_DIR/config/example.toml" "$CONFIG"
    fi
    run install -d -m 0755 "$SHARE_DIR/profiles"
    local profile
    for profile in "$REPO_DIR"/config/profiles/*.toml; do
        [[ -e "$profile" ]] || continue
        run install -m 0644 "$profile" "$SHARE_DIR/profiles/"
    done
    run install -d -m 0755 "$DOC_DIR"
    run install -m 0644 "$REPO_DIR/docs/operations.md" "$DOC_DIR/operations.md"
}

install_command() {
    say "linking $BIN_LINK -> $VENV/bin/alarmgw"
    run ln -sfn "$VENV/bin/alarmgw" "$BIN_LINK"
}

install_unit() {
    say "installing $UNIT_PATH"
    run install -m 0644 "$REPO_DIR/systemd/alarmgw.service" "$UNIT_PATH"
    run systemctl daemon-reload
    run systemctl enable "$SERVICE"
}

start_service() {
    # Start only a config that checks out; a bad one would stop at once (exit 78).
    if ((!DRY_RUN)) && ! "$VENV/bin/alarmgw" check-config "$CONFIG"; then
        warn "$CONFIG has problems (listed above); the service is enabled but not started."
        warn "Fix it, then: systemctl restart $SERVICE"
        return 0
    fi
    say "(re)starting $SERVICE"
    run systemctl restart "$SERVICE"
    say "done: systemctl status $SERVICE; journalctl -u $SERVICE -f; alarmgw status"
}

uninstall() {
    say "removing the service and $PREFIX"
    if systemctl list-unit-files "$SERVICE.service" >/dev/null 2>&1; then
        run systemctl disable --now "$SERVICE" || true
    fi
    run rm -f "$UNIT_PATH"
    # a failed unit stays listed (not-found, failed) until reset: leave nothing behind
    run systemctl reset-failed "$SERVICE" 2>/dev/null || true
    # only our own link: a file of that name put there by someone else stays
    if [[ -L $BIN_LINK && $(readlink "$BIN_LINK") == "$VENV/bin/alarmgw" ]]; then
        run rm -f "$BIN_LINK"
    fi
    run systemctl daemon-reload
    run rm -rf "$PREFIX" "$SHARE_DIR" "$DOC_DIR"
    say "kept: $ETC_DIR (config), $STATE_DIR (event buffer) and the user $SERVICE_USER."
    say "remove them by hand if the gateway is decommissioned; back up $STATE_DIR/buffer.db first."
}

main() {
    parse_args "$@"
    ((DRY_RUN)) && say "dry run: nothing will be changed"
    check_prerequisites
    if [[ $ACTION == uninstall ]]; then
        uninstall
        return
    fi
    ensure_groups
    ensure_user
    install_package
    install_config
    install_command
    install_unit
    start_service
}

main "$@"
