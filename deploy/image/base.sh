#!/usr/bin/env bash
# The local base image of servekit's images: Debian bookworm minbase with python3,
# ca-certificates and uv (the wheel from PyPI), made with debootstrap from the Debian mirror
# apt already uses and imported with podman. No container registry is contacted.
#
#   deploy/image/base.sh                 build localhost/servekit-base:bookworm unless a
#                                        base of the same recipe is already there
#   FORCE=1 deploy/image/base.sh         rebuild it anyway
#
# Environment: BASE_IMAGE (localhost/servekit-base:bookworm), SUITE (bookworm), MIRROR
# (default: read from /etc/apt/sources.list[.d]), UV_VERSION (default: constraints.txt),
# PYTHON (a Python with pip, to fetch the uv wheel), WORK (.servekit/image).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/deploy/image/containers.conf}"

BASE_IMAGE="${BASE_IMAGE:-localhost/servekit-base:bookworm}"
SUITE="${SUITE:-bookworm}"
PYTHON="${PYTHON:-python3}"
WORK="${WORK:-.servekit/image}"
UV_VERSION="${UV_VERSION:-$(sed -n 's/^uv==//p' constraints.txt)}"

stage() { printf '[base %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# The first mirror serving SUITE itself (not -security/-updates) in apt's sources, in
# either format (one-line sources.list or deb822 .sources).
apt_mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -E 's/\[[^]]*\]//' "$f" | awk -v s="$SUITE" '$1 == "deb" && $3 == s { print $2 }'
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v s="$SUITE" 'BEGIN { RS = ""; FS = "\n" }
      { uri = ""; ok = 0; deb = 0
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^Types:/ && $i ~ /[ \t]deb([ \t]|$)/) deb = 1
          if ($i ~ /^URIs:/) { split($i, a, /[ \t]+/); uri = a[2] }
          if ($i ~ /^Suites:/) { n = split($i, a, /[ \t]+/); for (j = 2; j <= n; j++) if (a[j] == s) ok = 1 }
        }
        if (deb && ok && uri != "") print uri }' "$f"
  done
}

MIRROR="${MIRROR:-$(apt_mirror | head -n 1)}"
[ -n "$MIRROR" ] || { echo "no Debian mirror for $SUITE in apt's sources; set MIRROR" >&2; exit 1; }
[ -n "$UV_VERSION" ] || { echo "no uv pin in constraints.txt; set UV_VERSION" >&2; exit 1; }

# The recipe's identity: this script, the suite, the mirror and uv's version. A base made
# by the same recipe is reused (debootstrap takes about a minute).
RECIPE="$( { cat "$0"; echo "$SUITE $MIRROR $UV_VERSION"; } | sha256sum | cut -c1-16)"
if [ -z "${FORCE:-}" ] && podman image exists "$BASE_IMAGE" \
   && [ "$(podman image inspect -f '{{index .Labels "servekit.base.recipe"}}' "$BASE_IMAGE")" = "$RECIPE" ]; then
  stage "$BASE_IMAGE (recipe $RECIPE) is already built"
  exit 0
fi

for tool in debootstrap podman; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install $tool)" >&2; exit 1; }
done
mkdir -p "$WORK"
ROOTFS="$(mktemp -d "$WORK/base-rootfs.XXXXXX")"
trap 'rm -rf "$ROOTFS" "$ROOTFS.uv"' EXIT

stage "debootstrap $SUITE minbase from $MIRROR (about a minute)"
# Progress without the per-package lines (about 500 of them).
debootstrap --variant=minbase --include=python3,ca-certificates "$SUITE" "$ROOTFS" "$MIRROR" \
  | grep --line-buffered -vE '^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) ([^ ]+ [^ ]+|[^ ]+[.][.][.])$'

stage "uv $UV_VERSION from PyPI"
mkdir -p "$ROOTFS.uv"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$ROOTFS.uv" "uv==$UV_VERSION" \
  2> >(grep -v "^WARNING: Location" >&2)
"$PYTHON" - "$ROOTFS.uv" "$ROOTFS/usr/local/bin" <<'PY'
import pathlib, sys, zipfile

wheel = next(pathlib.Path(sys.argv[1]).glob("uv-*.whl"))
dest = pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        if "/scripts/" in name and name.rsplit("/", 1)[1] in ("uv", "uvx"):
            target = dest / name.rsplit("/", 1)[1]
            target.write_bytes(zf.read(name))
            target.chmod(0o755)
PY
chroot "$ROOTFS" /usr/local/bin/uv --version

stage "trim apt caches, package lists, manuals and translations"
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin \
  "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
  "$ROOTFS"/usr/share/locale/* "$ROOTFS"/var/log/*.log "$ROOTFS"/var/log/apt/*
find "$ROOTFS/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
mkdir -p "$ROOTFS/var/lib/apt/lists/partial"
echo "$SUITE minbase + python3, ca-certificates, uv $UV_VERSION; recipe $RECIPE" >"$ROOTFS/etc/servekit-base"

stage "import as $BASE_IMAGE ($(du -sh "$ROOTFS" | cut -f1))"
tar --numeric-owner --xattrs -C "$ROOTFS" -c . | podman import \
  --change "LABEL servekit.base.recipe=$RECIPE" \
  --change "LABEL org.opencontainers.image.description=Debian $SUITE minbase with python3 and uv" \
  --change "ENV LANG=C.UTF-8" \
  --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
stage "$BASE_IMAGE: $(podman image inspect -f '{{.Size}}' "$BASE_IMAGE" | numfmt --to=si)B"
