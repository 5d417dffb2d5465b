#!/usr/bin/env bash
# Build servekit's OCI images with buildah from the local base (no registry is contacted),
# export each as an OCI archive, and print its size, digest and layers.
#
#   deploy/image/build.sh gateway multimodel flows    what `make image` runs
#   deploy/image/build.sh gpu                         the GPU variant (needs a CUDA base
#                                                     image in local storage; unverified)
#
# gateway and multimodel are built from the built bentos (servekit:latest and
# servekit-multimodel:latest: `make bentos`); flows from the checkout's services/, flows/,
# monitoring/ and prefect.yaml. Environment: PYTHON (the project's venv Python, which has
# bentoml), CA_BUNDLE (a CA bundle mounted into the build steps only, for a TLS-intercepting
# proxy; default: the system bundle when present; empty: none), IMAGE_DIR (.servekit/images,
# where the archives go), WORK (.servekit/image), BASE_IMAGE, CUDA_BASE_IMAGE, EXPORT (0: skip
# the archives), LATEST (0: do not move the :latest tags), GATEWAY_BENTO and MULTIMODEL_BENTO
# (the bentos' tags).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/deploy/image/containers.conf}"

PYTHON="${PYTHON:-.venv/bin/python}"
BASE_IMAGE="${BASE_IMAGE:-localhost/servekit-base:bookworm}"
CUDA_BASE_IMAGE="${CUDA_BASE_IMAGE:-docker.io/nvidia/cuda:12.9.1-cudnn-runtime-ubuntu24.04}"
WORK="${WORK:-.servekit/image}"
IMAGE_DIR="${IMAGE_DIR:-.servekit/images}"
SYSTEM_CA=/etc/ssl/certs/ca-certificates.crt
CA_BUNDLE="${CA_BUNDLE-$([ -r "$SYSTEM_CA" ] && echo "$SYSTEM_CA")}"
GATEWAY_BENTO="${GATEWAY_BENTO:-servekit:latest}"
MULTIMODEL_BENTO="${MULTIMODEL_BENTO:-servekit-multimodel:latest}"
EXPORT="${EXPORT:-1}"
LATEST="${LATEST:-1}"
HERE=deploy/image

stage() { printf '[image %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# The bento's path, version and declared envs (one NAME=VALUE a line after two lines).
bento_info() {
  "$PYTHON" - "$1" <<'PY'
import sys

import bentoml
import yaml

bento = bentoml.get(sys.argv[1])
print(bento.path)
print(bento.tag.version)
with open(bento.path_of("bento.yaml")) as f:
    for env in yaml.safe_load(f).get("envs") or []:
        print(f"{env['name']}={env.get('value', '')}")
PY
}

# Context of a serving image: the bento exported with its models (as `bentoml
# containerize` would see it), its models in a layer of their own.
stage_bento() {
  local tag="$1" ctx="$2"
  rm -rf "$ctx" && mkdir -p "$ctx/bento"
  "$PYTHON" -m bentoml export -q "$tag" "$(realpath "$ctx")/bento.tar" >/dev/null
  tar -xf "$ctx/bento.tar" -C "$ctx/bento" && rm "$ctx/bento.tar"
  mkdir -p "$ctx/bento/models"
  mv "$ctx/bento/models" "$ctx/models"
  cp "$ctx/bento/env/python/requirements.txt" "$ctx/requirements.txt"
  cp constraints.txt requirements/gpu.txt "$HERE/entrypoint.sh" "$ctx/"
  # BentoML writes some files owner-only; the image's user must read them all.
  chmod -R a+rX,go-w "$ctx"
}

# Context of the flows image: the sources the flows import, their requirements and pins.
stage_flows() {
  local ctx="$1"
  rm -rf "$ctx" && mkdir -p "$ctx/app" "$ctx/requirements"
  git ls-files -co --exclude-standard -- services flows monitoring prefect.yaml \
    | grep -v -e '__pycache__' -e '\.pyc$' | tar -cf - -T - | tar -xf - -C "$ctx/app"
  cp requirements/bento.txt requirements/flows.txt "$ctx/requirements/"
  cp constraints.txt "$HERE/entrypoint.sh" "$ctx/"
  chmod -R a+rX,go-w "$ctx"
}

build() { # IMAGE CONTAINERFILE CONTEXT [buildah args...]
  local image="$1" file="$2" ctx="$3"
  shift 3
  local ca=()
  if [ -n "$CA_BUNDLE" ]; then
    [ -r "$CA_BUNDLE" ] || { echo "CA_BUNDLE=$CA_BUNDLE cannot be read" >&2; exit 1; }
    ca=(--volume "$(realpath "$CA_BUNDLE"):/etc/ssl/certs/ca-certificates.crt:ro")
  fi
  # docker format: the OCI image config has no HEALTHCHECK field, buildah drops it there.
  buildah build --layers --pull=never --format docker "${ca[@]}" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --label "org.opencontainers.image.revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    -f "$file" -t "$image" "$@" "$ctx"
}

report() { # IMAGE ARCHIVE
  local image="$1" archive="$2" size
  size="$(podman image inspect -f '{{.Size}}' "$image")"
  stage "$image: $(numfmt --to=si --suffix=B "$size") uncompressed; layers (oldest first):"
  podman history --format json "$image" | "$PYTHON" -c '
import json, re, sys

for layer in reversed(json.load(sys.stdin)):
    if layer["size"]:
        step = re.sub(r"^(\|\d+ [^/]*)?/bin/sh -c (#\(nop\) )?", "", layer["CreatedBy"])
        step = re.sub(r"\s+", " ", step.replace("--mount=type=cache,target=/root/.cache/uv", ""))
        print("  %10.3f MB  %s" % (layer["size"] / 1e6, step.strip()[:86]))
'
  if [ "$EXPORT" = 1 ]; then
    stage "  archive $archive: $(numfmt --to=si --suffix=B "$(stat -c %s "$archive")"),\
 digest $(skopeo inspect --format '{{.Digest}}' "oci-archive:$archive")"
  fi
}

export_archive() { # IMAGE NAME TAG
  local image="$1" name="$2" tag="$3"
  [ "$EXPORT" = 1 ] || return 0
  mkdir -p "$IMAGE_DIR"
  stage "export $image -> $IMAGE_DIR/$name.oci.tar"
  rm -f "$IMAGE_DIR/$name.oci.tar"
  buildah push --quiet "$image" "oci-archive:$IMAGE_DIR/$name.oci.tar:$name:$tag" >/dev/null
}

serving_image() { # NAME BENTO CONTAINERFILE [buildah args...]
  local name="$1" bento="$2" file="$3" info path version
  local ctx="$WORK/ctx-$name" envs=()
  shift 3
  info="$(bento_info "$bento")" || { echo "no bento $bento: run make bentos" >&2; exit 1; }
  path="$(sed -n 1p <<<"$info")"
  version="$(sed -n 2p <<<"$info")"
  while IFS= read -r env; do [ -n "$env" ] && envs+=(--env "$env"); done < <(sed -n '3,$p' <<<"$info")
  stage "$name: stage ${bento%%:*}:$version from $path"
  stage_bento "$bento" "$ctx"
  stage "$name: buildah build ($file)"
  build "localhost/servekit-$name:$version" "$file" "$ctx" "${envs[@]}" "$@" \
    --label "servekit.bento=${bento%%:*}:$version"
  if [ "$LATEST" = 1 ]; then podman tag "localhost/servekit-$name:$version" "localhost/servekit-$name:latest"; fi
  export_archive "localhost/servekit-$name:$version" "servekit-$name" "$version"
  report "localhost/servekit-$name:$version" "$IMAGE_DIR/servekit-$name.oci.tar"
}

flows_image() {
  local ctx="$WORK/ctx-flows" version
  version="$(git describe --always --dirty 2>/dev/null || echo dev)"
  stage "flows: stage services/, flows/, monitoring/, prefect.yaml"
  stage_flows "$ctx"
  stage "flows: buildah build ($HERE/Containerfile.flows)"
  build "localhost/servekit-flows:$version" "$HERE/Containerfile.flows" "$ctx"
  if [ "$LATEST" = 1 ]; then podman tag "localhost/servekit-flows:$version" localhost/servekit-flows:latest; fi
  export_archive "localhost/servekit-flows:$version" servekit-flows "$version"
  report "localhost/servekit-flows:$version" "$IMAGE_DIR/servekit-flows.oci.tar"
}

[ $# -gt 0 ] || set -- gateway multimodel flows
for tool in buildah podman skopeo; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install $tool)" >&2; exit 1; }
done
start=$SECONDS
PYTHON="$PYTHON" BASE_IMAGE="$BASE_IMAGE" "$HERE/base.sh"
for what in "$@"; do
  case "$what" in
    gateway) serving_image gateway "$GATEWAY_BENTO" "$HERE/Containerfile.serve" ;;
    multimodel) serving_image multimodel "$MULTIMODEL_BENTO" "$HERE/Containerfile.serve" ;;
    flows) flows_image ;;
    gpu) serving_image gateway-gpu "$GATEWAY_BENTO" "$HERE/Containerfile.gpu" \
      --build-arg "CUDA_BASE_IMAGE=$CUDA_BASE_IMAGE" ;;
    *) echo "unknown image $what (gateway, multimodel, flows, gpu)" >&2; exit 2 ;;
  esac
done
stage "done in $((SECONDS - start)) s"
