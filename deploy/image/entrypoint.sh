#!/usr/bin/env bash
# Entry point of servekit's images.
#
#   serve            bentoml serve the bento at $BENTO_PATH on 0.0.0.0:$BENTOML_PORT (3000)
#   health           the HEALTHCHECK: exit 0 when GET /v2/health/ready answers 200
#   anything else    run it as given (prefect worker start ..., python, bash)
#
# Secrets are read from mounted files, never from the image: for each NAME below, when
# NAME_FILE names a file and NAME is unset, NAME is set from the file's content (a trailing
# newline dropped) before servekit starts. S3 credentials need no such step: boto3 reads
# the file named by AWS_SHARED_CREDENTIALS_FILE itself.
set -euo pipefail

SECRET_SETTINGS=(SERVEKIT_REDIS_URL SERVEKIT_ADMIN_TOKEN SERVEKIT_INGEST_TOKEN SERVEKIT_REQUEST_ID_SECRET)

read_secret_files() {
  local name file
  for name in "${SECRET_SETTINGS[@]}"; do
    file="${name}_FILE"
    [ -n "${!file:-}" ] || continue
    if [ -n "${!name:-}" ]; then
      echo "entrypoint: $name is set; $file is ignored" >&2
    elif [ -r "${!file}" ]; then
      export "$name=$(<"${!file}")"
    else
      echo "entrypoint: $file names ${!file}, which cannot be read" >&2
      exit 64
    fi
    unset "$file"
  done
}

# Plain bash (no curl in the image): one HTTP/1.0 request on the loopback, three seconds.
health() {
  timeout 3 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/${BENTOML_PORT:-3000}"
    printf "GET /v2/health/ready HTTP/1.0\r\nHost: localhost\r\n\r\n" >&3
    read -r _ status _ <&3
    [ "$status" = 200 ]'
}

case "${1:-serve}" in
  health)
    health
    ;;
  serve)
    shift $(($# > 0 ? 1 : 0))
    read_secret_files
    exec bentoml serve "$BENTO_PATH" --host "${BENTOML_HOST:-0.0.0.0}" \
      --port "${BENTOML_PORT:-3000}" "$@"
    ;;
  *)
    read_secret_files
    exec "$@"
    ;;
esac
