# Shared set-up for scripts/test, scripts/demo and scripts/bench: sourced, never run.
#
# Each function is idempotent (a second call on a ready machine does nothing and prints
# nothing) and loud on failure: the captured output of the failing command is printed whole,
# because a CI log that only says "exit 100" is useless.

# The repository root, whatever the caller's working directory.
TT_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# What the project needs from Debian: FUSE 3 and its headers (pyfuse3 is built from source
# against them), and the real readers the mount tests and the demo drive: GNU tar, bsdtar,
# rsync, rclone, nginx (serving the mount over HTTP; the tests start their own on loopback),
# systemd-analyze to check the unit file and procps for the kill its ExecReload runs, and age
# (the stock age and age-keygen, which must decrypt what the encrypting reader writes). gcc, the
# C library's, Python's and SQLite's headers build pyfuse3 and tartapefs' own C extension
# (without them tartapefs installs and runs its pure-Python path).
TT_APT_PACKAGES=(fuse3 libfuse3-dev pkg-config libarchive-tools rsync rclone tar nginx systemd procps age
    gcc libc6-dev python3-dev libsqlite3-dev)

# Minimum Python for the virtualenv (pyproject.toml says requires-python >= 3.11).
TT_PYTHON_MIN=(3 11)

tt_die() {
    echo "error: $*" >&2
    exit 1
}

# Says what a set-up step is about to do, one line on stderr: the first run of a fresh machine
# spends minutes installing, and must not look hung.
tt_step() {
    echo "set-up: $*" >&2
}

# Runs a command with its output captured; prints that output only if the command fails.
tt_quiet() {
    local log rc=0
    log=$(mktemp)
    "$@" >"$log" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "error: '$*' failed with exit $rc; its output:" >&2
        cat "$log" >&2
        rm -f "$log"
        exit "$rc"
    fi
    rm -f "$log"
}

# Installs the Debian packages that are missing, and only those.
tt_apt_setup() {
    local missing=() pkg
    for pkg in "${TT_APT_PACKAGES[@]}"; do
        # dpkg-query is true for removed-but-configured packages too, so check the status.
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || tt_die "missing Debian packages (${missing[*]}); install them as root"
    # The package lists of a fresh machine may be empty or stale: update once, before installing.
    tt_step "updating the Debian package lists (apt-get update)"
    tt_quiet env DEBIAN_FRONTEND=noninteractive apt-get update -q
    tt_step "installing Debian packages: ${missing[*]}"
    tt_quiet env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}"
}

# Finds a python3 that is at least TT_PYTHON_MIN; prints its path.
tt_find_python() {
    local candidate
    for candidate in python3 python3.13 python3.12 python3.11; do
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] < tuple(map(int, sys.argv[1:])))' \
            "${TT_PYTHON_MIN[@]}" 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    tt_die "no python3 >= ${TT_PYTHON_MIN[0]}.${TT_PYTHON_MIN[1]} found on PATH"
}

# Creates REPO/.venv and installs the project editable with its fuse, age and test extras.
# The install is redone only when pyproject.toml, setup.py or the C sources (csrc/) change
# (the C extension is compiled by the install), or the package gains or loses its __init__.py
# (setuptools' editable finder records a package without one as a namespace, and the import
# then fails); Python source changes otherwise need no reinstall.
tt_venv_setup() {
    local venv="$TT_REPO/.venv" stamp want python
    stamp="$venv/.tartapefs-installed"
    want=$( { cat "$TT_REPO/pyproject.toml" "$TT_REPO/setup.py" "$TT_REPO"/csrc/*;
        ls "$TT_REPO"/*/__init__.py 2>/dev/null; } | sha256sum | cut -d' ' -f1)
    if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    if [ ! -x "$venv/bin/python" ]; then
        python=$(tt_find_python)
        tt_step "creating the virtualenv $venv"
        tt_quiet "$python" -m venv "$venv"
    fi
    tt_step "upgrading pip in $venv"
    tt_quiet "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    tt_step "installing tartapefs and its extras into $venv (pyfuse3 is built: a minute or two)"
    tt_quiet "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$TT_REPO[fuse,age,test]"
    # pip hides the build's own line when the C extension could not be built: say it here.
    env -u TARTAPEFS_PURE "$venv/bin/python" -c \
        'import sys, tartapefs.native as n; n.module or print("tartapefs:", n.ACTIVE, file=sys.stderr)'
    echo "$want" >"$stamp"
}

# Peer programs the tests drive that are Python packages but never our dependencies, each in a
# virtualenv of its own (REPO/.venv-NAME), redone only when its package list changes:
# - loaders: webdataset's loader and wids (random access over a shard list), which imports torch;
#   torch 2.13.0 is the CPU build this kind of machine keeps on disk (no large download).
# - ratarmount: mounts split volumes as one archive (its FUSE binding is its own: mfusepy).
TT_PEER_LOADERS=(torch==2.13.0 webdataset==1.0.2 wids==0.1.11)
TT_PEER_RATARMOUNT=(ratarmount==1.3.0)

tt_peer_venv() {
    local name=$1 venv stamp want python
    shift
    venv="$TT_REPO/.venv-$name"
    stamp="$venv/.tartapefs-peer"
    want=$(printf '%s\n' "$@" | sha256sum | cut -d' ' -f1)
    if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    echo "installing test peers into .venv-$name: $*" >&2
    if [ ! -x "$venv/bin/python" ]; then
        python=$(tt_find_python)
        tt_quiet "$python" -m venv "$venv"
    fi
    tt_quiet "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@"
    echo "$want" >"$stamp"
}

tt_peers_setup() {
    tt_peer_venv loaders "${TT_PEER_LOADERS[@]}"
    tt_peer_venv ratarmount "${TT_PEER_RATARMOUNT[@]}"
}
