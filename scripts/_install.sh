# Sourced by scripts/test, scripts/test-prefect and scripts/test-deps: create a virtual
# environment and install txlock into it from a committed constraints file, so that a run
# today and a run in a month get the same versions.
#
#     txlock_env VENV EXTRAS CONSTRAINTS [UV-ARGS...]
#
# CONSTRAINTS is a file under requirements/ ("" resolves fresh). The install uses uv
# (installed into VENV with pip first, when it is not on PATH): about twice as fast as pip
# on a first run. The environment is reinstalled when pyproject.toml or CONSTRAINTS change.
txlock_env() {
    local venv=$1 extras=$2 constraints=$3
    shift 3
    local python=${PYTHON:-python3}
    local stamp="$venv/.txlock-install-stamp"
    local want
    want=$({ cat pyproject.toml ${constraints:+"$constraints"}; echo "$extras $*"; } | cksum)
    if [[ ! -x "$venv/bin/python" ]]; then
        "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || { echo "txlock needs Python 3.11 or newer; $python is $("$python" -V 2>&1)" >&2; exit 1; }
        echo "# creating $venv ..."
        "$python" -m venv "$venv"
    fi
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    echo "# installing txlock[$extras] into $venv${constraints:+ (versions from $constraints)} ..."
    local uv
    uv=$(command -v uv || true)
    if [[ -z "$uv" ]]; then
        "$venv/bin/python" -m pip install -q uv && uv="$venv/bin/uv"
    fi
    "$uv" pip install -q --python "$venv/bin/python" ${constraints:+-c "$constraints"} "$@" -e ".[$extras]"
    echo "$want" >"$stamp"
}
