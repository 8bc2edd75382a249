#!/usr/bin/env bash
# Builds the image from the real Dockerfile with podman (no Docker engine needed),
# runs it against the Deadline Cloud simulator and a webhook sink (both run from the
# same image), checks /healthz, the HEALTHCHECK command and one delivered
# notification, and prints the image size. Too slow for CI (a cold release build of
# the AWS SDK inside the container): run by hand.
#
#   scripts/container-smoke.sh                 # build stand-in bases if needed, then test
#   RUST_IMAGE=rust:1.95-bookworm scripts/container-smoke.sh   # with registry access
#
# Needs: podman, buildah-compatible storage (vfs), runc, and, without RUST_IMAGE,
# debootstrap plus a local Rust toolchain (copied into the stand-in builder image).
# On Debian: apt-get install podman runc debootstrap
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/deadline-notifier:smoke}
CACHE=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/deadline-notifier-smoke}
BASE=localhost/bookworm-minbase:local
STANDIN=localhost/rust-standin:1.95
# vfs storage and chroot isolation work without overlayfs or user namespaces;
# runc + cgroupfs where crun cannot set rlimits.
PODMAN=(podman --storage-driver vfs)
RUN=("${PODMAN[@]}" --runtime runc --cgroup-manager=cgroupfs run --network host
     --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
SIM_PORT=${SIM_PORT:-14566}
SINK_PORT=${SINK_PORT:-14567}
API_PORT=${API_PORT:-18080}
TOKEN=smoke-token-0123456789abcdef

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
for tool in podman runc; do
    command -v "$tool" >/dev/null || fail "$tool is not installed (apt-get install podman runc debootstrap)"
done
have_image() { "${PODMAN[@]}" image exists "$1"; }

if [[ -z "${RUST_IMAGE:-}" ]]; then
    if ! have_image "$BASE"; then
        step "making a local Debian base ($BASE) with debootstrap"
        command -v debootstrap >/dev/null || fail "debootstrap is not installed"
        mkdir -p "$CACHE"
        rm -rf "$CACHE/rootfs"
        debootstrap --variant=minbase bookworm "$CACHE/rootfs" http://deb.debian.org/debian >"$CACHE/debootstrap.log"
        tar -C "$CACHE/rootfs" -c . | "${PODMAN[@]}" import - "$BASE"
    fi
    if ! have_image "$STANDIN"; then
        step "making a stand-in Rust builder ($STANDIN) from $BASE and this machine's toolchain"
        sysroot=$(rustc --print sysroot)
        ctx=$(mktemp -d)
        mkdir -p "$ctx/rust" "$ctx/ca"
        cp -a "$sysroot/bin" "$sysroot/lib" "$ctx/rust/"
        # This machine's extra CAs (e.g. a TLS-inspecting egress proxy), so cargo in the
        # builder can reach crates.io the way the host does.
        cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
        cat >"$ctx/Containerfile" <<CONTAINERFILE
FROM $BASE
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev make ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY ca /usr/local/share/ca-certificates
RUN update-ca-certificates
COPY rust /usr/local/rust
ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CARGO_HOME=/usr/local/cargo
CONTAINERFILE
        "${PODMAN[@]}" build --isolation chroot -t "$STANDIN" -f "$ctx/Containerfile" "$ctx"
        rm -rf "$ctx"
    fi
    RUST_IMAGE=$STANDIN
fi

step "building $IMAGE from ./Dockerfile (RUST_IMAGE=$RUST_IMAGE)"
start=$(date +%s)
"${PODMAN[@]}" build --isolation chroot --build-arg "RUST_IMAGE=$RUST_IMAGE" -t "$IMAGE" -f Dockerfile .
echo "built in $(( $(date +%s) - start ))s"

work=$(mktemp -d)
containers=()
cleanup() {
    for c in "${containers[@]}"; do "${PODMAN[@]}" rm -f "$c" >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT

step "starting the simulator and the sink (from the image)"
for c in dn-smoke-sim dn-smoke-sink dn-smoke-svc; do "${PODMAN[@]}" rm -f "$c" >/dev/null 2>&1 || true; done
containers+=("$("${RUN[@]}" -d --name dn-smoke-sim "$IMAGE" simulate --listen "127.0.0.1:$SIM_PORT")")
containers+=("$("${RUN[@]}" -d --name dn-smoke-sink "$IMAGE" sink --listen "127.0.0.1:$SINK_PORT")")

cat >"$work/notifier.toml" <<TOML
[server]
listen = "0.0.0.0:$API_PORT"
[store]
path = "/data/notifier.sled"
[deadline]
poll_interval = "1s"
# A host name, not an address: checks name resolution in the scratch image.
endpoint_url = "http://localhost:$SIM_PORT"
[delivery]
allow_private_targets = true
[[teams]]
name = "smoke"
tokens = [{ env = "SMOKE_TOKEN" }]
[[teams.channels]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:$SINK_PORT/webhook/smoke"
TOML
chmod 644 "$work/notifier.toml"

step "starting the service as the manifests run it (read-only root, no capabilities, UID 10001, config mounted, secrets from env, /data a volume)"
# The security settings of deploy/kubernetes/statefulset.yaml and deploy/compose.yaml.
containers+=("$("${RUN[@]}" -d --name dn-smoke-svc \
    --read-only --tmpfs /tmp --cap-drop ALL --user 10001:10001 --security-opt no-new-privileges \
    -v "$work/notifier.toml:/app/config/notifier.toml:ro" -v dn-smoke-data:/data \
    -e SMOKE_TOKEN=$TOKEN -e AWS_ACCESS_KEY_ID=AKIDSMOKE -e AWS_SECRET_ACCESS_KEY=smoke \
    -e AWS_REGION=us-west-2 -e AWS_EC2_METADATA_DISABLED=true "$IMAGE")")

wait_for() { # what, seconds, command…
    local what=$1 secs=$2; shift 2
    for _ in $(seq $(( secs * 5 ))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    "${PODMAN[@]}" logs dn-smoke-svc 2>&1 | tail -20
    fail "timed out waiting for $what"
}
wait_for "/healthz" 30 curl -fsS "http://127.0.0.1:$API_PORT/healthz"
echo "/healthz: $(curl -fsS "http://127.0.0.1:$API_PORT/healthz")"
"${PODMAN[@]}" exec dn-smoke-svc /usr/local/bin/deadline-notifier healthcheck --url "http://127.0.0.1:$API_PORT/healthz" \
    || fail "the HEALTHCHECK command failed inside the container"
echo "HEALTHCHECK command: ok"
uid=$("${PODMAN[@]}" inspect --format '{{.Config.User}}' "$IMAGE")
[[ "$uid" == 10001* ]] || fail "image user is '$uid', expected 10001"
echo "runs as: $uid"

step "a job goes READY → RUNNING → SUCCEEDED; one notification must arrive"
job=$(curl -fsS -X POST "http://127.0.0.1:$SIM_PORT/_sim/jobs" -H 'content-type: application/json' \
    -d '{"name":"smoke shot_010","script":[{"afterMs":2500,"taskRunStatus":"RUNNING"},{"afterMs":5000,"taskRunStatus":"SUCCEEDED"}]}')
ids=$(python3 -c 'import json,sys; j=json.load(sys.stdin); print(json.dumps({k: j[k] for k in ("farmId","queueId","jobId")}))' <<<"$job")
curl -fsS -X POST "http://127.0.0.1:$API_PORT/v1/subscriptions" -H "Authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' -d "$ids" >/dev/null
delivered() { "${PODMAN[@]}" logs dn-smoke-sink 2>/dev/null | grep -q '"type":"job.succeeded"'; }
wait_for "the job.succeeded notification at the sink" 60 delivered
"${PODMAN[@]}" logs dn-smoke-sink 2>/dev/null | grep '"type":"job.succeeded"' | head -1 | cut -c1-300
echo
curl -fsS "http://127.0.0.1:$API_PORT/metrics" | grep -E '^deadline_notifier_deliveries_total' || true

step "SIGTERM stops it cleanly"
"${PODMAN[@]}" stop -t 20 dn-smoke-svc >/dev/null
code=$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' dn-smoke-svc)
echo "exit code: $code"
[[ "$code" == 0 ]] || fail "the service exited $code on SIGTERM"
"${PODMAN[@]}" logs dn-smoke-svc 2>&1 | grep -q '"stopped"\|stopped' || fail "no 'stopped' log line"

step "image size"
size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")
version=$("${RUN[@]}" --rm "$IMAGE" --version)
mnt=$("${PODMAN[@]}" image mount "$IMAGE" 2>/dev/null || true)
if [[ -n "$mnt" ]]; then
    bin=$(stat -c %s "$mnt/usr/local/bin/deadline-notifier")
    "${PODMAN[@]}" image unmount "$IMAGE" >/dev/null
    printf 'binary: %s bytes (%.1f MB)\n' "$bin" "$(echo "$bin/1000000" | bc -l)"
fi
printf '%s (%s): %s bytes (%.1f MB), FROM scratch\n' "$IMAGE" "$version" "$size" "$(echo "$size/1000000" | bc -l)"
echo "PASS"
