# Sourced by the build scripts here. need_packages WHO PACKAGE…: installs the packages that
# are missing through apt (as root), or says what to run and exits.
need_packages() {
  local who=$1 p
  shift
  local need=()
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  [ ${#need[@]} -gt 0 ] || return 0
  if [ "$(id -u)" != 0 ]; then
    echo "$who: run: sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
  apt-get install -y -q --no-install-recommends "${need[@]}" >&2
}
