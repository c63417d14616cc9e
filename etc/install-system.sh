#!/bin/sh
# Production install of mailhouse; `make install-system` runs it (README.md, "Production").
#
#   sh etc/install-system.sh [all | venv | config | unit | init]      (default: all)
#
# venv    a virtualenv on SYSTEM_PYTHON in PREFIX with mailhouse pip-installed into it
#         (not editable, compiled index required). The workers run as mail_owner and start
#         this interpreter, so it must stay in world-readable folders: never under /root.
# config  main.cf and master.cf from etc/ into SYSCONFDIR. A file that exists there is kept
#         as it is: an administrator's configuration is never replaced. A new main.cf gets
#         data_directory = LOCALSTATEDIR and log_directory = LOGDIR.
# unit    mailhouse.service into UNITDIR with these paths, README.md and SECURITY.md into
#         PREFIX/share/doc/mailhouse.
# init    `mailctl -c SYSCONFDIR init`: data directories, a self-signed certificate, owners.
#
# The settings come from the environment (the Makefile passes its variables of the same
# names). DESTDIR stages everything below another root for a package: the venv's scripts
# are rewritten to run from PREFIX, and init is left to the target machine.
set -eu
umask 022

PREFIX=${PREFIX:-/opt/mailhouse}
SYSCONFDIR=${SYSCONFDIR:-/etc/mailhouse}
LOCALSTATEDIR=${LOCALSTATEDIR:-/var/lib/mailhouse}
LOGDIR=${LOGDIR:-/var/log/mailhouse}
UNITDIR=${UNITDIR:-/etc/systemd/system}
SYSTEM_PYTHON=${SYSTEM_PYTHON:-/usr/bin/python3}
DESTDIR=${DESTDIR:-}
SRC=$(cd "$(dirname "$0")/.." && pwd)

say() { printf 'install-system: %s\n' "$*"; }
die() { printf 'install-system: %s\n' "$*" >&2; exit 1; }
# A value for the right-hand side of sed's s|||: escape \, | and &.
sed_escape() { printf '%s' "$1" | sed 's/[\\|&]/\\&/g'; }

for path in "$PREFIX" "$SYSCONFDIR" "$LOCALSTATEDIR" "$LOGDIR" "$UNITDIR"; do
    case $path in /*) ;; *) die "$path: every directory must be an absolute path" ;; esac
done

step_venv() {
    target=$DESTDIR$PREFIX
    [ -x "$SYSTEM_PYTHON" ] || die "$SYSTEM_PYTHON not found: apt-get install python3 python3-venv"
    "$SYSTEM_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$SYSTEM_PYTHON is older than Python 3.11"
    "$SYSTEM_PYTHON" -m venv "$target" || die "cannot make a venv with $SYSTEM_PYTHON: apt-get install python3-venv"
    # Build from a copy of the sources: pip writes build/ and *.egg-info where it builds,
    # and the checkout may belong to another user. Dev builds (*.so, _index.c) stay behind.
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    tar -C "$SRC" --exclude=__pycache__ --exclude='*.so' --exclude=_index.c \
        -cf - pyproject.toml setup.py README.md master workers store | tar -C "$build" -xf -
    say "pip install mailhouse into $target (builds the compiled index; needs gcc and python3-dev)"
    # The compiled index is required here, whatever the caller's environment says.
    env -u MAILHOUSE_PURE_PYTHON -u PYTHONPATH PIP_ROOT_USER_ACTION=ignore MAILHOUSE_REQUIRE_EXT=1 \
        "$target/bin/pip" install --quiet --upgrade "$build" \
        || die "pip install failed (the compiled index needs: apt-get install gcc python3-dev)"
    rm -rf "$build"
    trap - EXIT
    if [ -n "$DESTDIR" ]; then
        # A venv is not relocatable: its scripts name the folder it was made in.
        from=$(sed_escape "$target")
        to=$(sed_escape "$PREFIX")
        grep -lIF "$target" "$target"/bin/* "$target/pyvenv.cfg" | while IFS= read -r file; do
            sed "s|$from|$to|g" "$file" > "$file.new" && chmod --reference="$file" "$file.new" && mv "$file.new" "$file"
        done
        "$target/bin/python" -m compileall -q -f -s "$DESTDIR" -p / "$target/lib" >/dev/null
    fi
    chmod 755 "$target"
}

step_config() {
    dir=$DESTDIR$SYSCONFDIR
    mkdir -p "$dir"
    for name in main.cf master.cf aliases; do
        [ -f "$SRC/etc/$name" ] || continue
        if [ -e "$dir/$name" ]; then
            say "kept $dir/$name (the shipped version is $SRC/etc/$name)"
            continue
        fi
        if [ "$name" = main.cf ]; then
            data=$(sed_escape "$LOCALSTATEDIR")
            logs=$(sed_escape "$LOGDIR")
            sed -e "s|^data_directory[[:space:]]*=.*|data_directory = $data|" \
                -e "s|^log_directory[[:space:]]*=.*|log_directory = $logs|" \
                "$SRC/etc/main.cf" > "$dir/main.cf.new"
            grep -q '^data_directory[[:space:]]*=' "$dir/main.cf.new" \
                || printf 'data_directory = %s\n' "$LOCALSTATEDIR" >> "$dir/main.cf.new"
            grep -q '^log_directory[[:space:]]*=' "$dir/main.cf.new" \
                || printf 'log_directory = %s\n' "$LOGDIR" >> "$dir/main.cf.new"
        else
            cp "$SRC/etc/$name" "$dir/$name.new"
        fi
        chmod 644 "$dir/$name.new"
        mv "$dir/$name.new" "$dir/$name"
        say "installed $dir/$name"
    done
}

step_unit() {
    dir=$DESTDIR$UNITDIR
    mkdir -p "$dir"
    sed -e "/^#/!s|/opt/mailhouse|$(sed_escape "$PREFIX")|g" \
        -e "/^#/!s|/etc/mailhouse|$(sed_escape "$SYSCONFDIR")|g" \
        -e "/^#/!s|/var/lib/mailhouse|$(sed_escape "$LOCALSTATEDIR")|g" \
        -e "/^#/!s|/var/log/mailhouse|$(sed_escape "$LOGDIR")|g" \
        "$SRC/etc/systemd/mailhouse.service" > "$dir/mailhouse.service.new"
    chmod 644 "$dir/mailhouse.service.new"
    mv "$dir/mailhouse.service.new" "$dir/mailhouse.service"
    say "installed $dir/mailhouse.service"
    docs=$DESTDIR$PREFIX/share/doc/mailhouse
    mkdir -p "$docs"
    cp "$SRC/README.md" "$SRC/SECURITY.md" "$docs/"
    chmod 644 "$docs/README.md" "$docs/SECURITY.md"
    case $UNITDIR in
        /etc/systemd/system | /lib/systemd/system | /usr/lib/systemd/system)
            if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi ;;
    esac
}

step_init() {
    if [ -n "$DESTDIR" ]; then
        say "staged in $DESTDIR; on the target machine run as root: $PREFIX/bin/mailctl -c $SYSCONFDIR init"
        return
    fi
    [ "$(id -u)" = 0 ] || say "not root: the workers will run as $(id -un), not as mail_owner"
    "$PREFIX/bin/mailctl" -c "$SYSCONFDIR" init
}

case ${1:-all} in
    all) step_venv; step_config; step_unit; step_init
         say "done. Start it: systemctl enable --now mailhouse   (README.md, \"Production\")" ;;
    venv | config | unit | init) "step_$1" ;;
    *) die "unknown step $1 (all, venv, config, unit, init)" ;;
esac
