#!/usr/bin/env bash
# registry_access.sh: `lamina pull` against real registries that want something from it.
#
# docker-registry 2.8 instances on 127.0.0.1 (ports 5081-5089), the busybox demo image
# (scripts/mkimage_busybox.py) pushed to each with skopeo, and fresh laminad daemons
# (private root, socket and registry_config_path). Every successful pull is checked:
# `lamina images` lists the reference with the manifest digest skopeo pushed, and a
# rootfs mounted from it (`lamina rootfs`) has the image's busybox, motd and whiteout.
#  1. basic auth (htpasswd, bcrypt): no credentials and a wrong password fail with
#     "401 Unauthorized" (PermissionDenied) and record nothing; the same daemon then pulls
#     with the right --user;
#  2. bearer tokens (registry_helpers.py token-server: RS256 JWTs with an x5c header, the
#     registry trusting that certificate): wrong password and anonymous access to a private
#     repository fail clearly; the right --user pulls; anonymous pull of a public repository
#     works;
#  3. mirrors from hosts.toml: upstream down, first mirror down, second mirror serving ->
#     the pull falls through to it (and without hosts.toml it fails); a mirror with only
#     the "pull" capability serves a digest but is not asked for a tag; a mirror below a
#     path prefix with override_path = true; _default/hosts.toml;
#  4. TLS with a private CA (openssl): untrusted -> certificate error; `ca` (relative to
#     the hosts.toml) and `skip_verify` work; a registry requiring client certificates
#     (http.tls.clientcas) refuses a client without one and accepts `client` pairs.
# A missing prerequisite fails the run; nothing is skipped.
# Usage: registry_access.sh LAMINAD LAMINA [DIR]   (as root; needs ../shared)
#   State goes to a fresh mktemp directory below DIR (default /var/tmp/lamina-test if it
#   exists, else $TMPDIR or /tmp), removed afterwards unless a check failed.
# Last line: "N passed, M failed".
set -uo pipefail
LAMINAD=$1 LAMINA=$2
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"   # HERE, SHARED, lib.sh, ok, bad, summary
if [ -n "${3:-}" ]; then PARENT=$3
elif [ -d /var/tmp/lamina-test ]; then PARENT=/var/tmp/lamina-test
else PARENT=${TMPDIR:-/tmp}; fi
if ! mkdir -p "$PARENT" || ! WORK=$(mktemp -d "$PARENT/registry-access.XXXXXX"); then bad "cannot create a work dir below $PARENT"; summary; exit 1; fi
PY=/usr/bin/python3   # Debian's python3, which python3-jwt and python3-cryptography serve
HELPERS=$HERE/scripts/tests/registry_helpers.py
PIDS=() DPID='' SOCK='' NROOT=0

finish() { [ "$failed" -eq 0 ] || echo "logs and state kept in $WORK"; summary; exit; }
cleanup() {
  for m in $(grep -F " $WORK/" /proc/self/mounts | awk '{print $2}' | sort -r); do umount -l "$m" 2>/dev/null; done
  [ -n "$DPID" ] && kill "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  [ "$failed" -eq 0 ] && rm -rf "$WORK"
}
trap cleanup EXIT

# --- prerequisites: fail loudly ------------------------------------------------------
missing=()
[ "$(id -u)" = 0 ] || missing+=("root (lamina rootfs mounts)")
for c in docker-registry skopeo htpasswd openssl curl busybox; do command -v "$c" >/dev/null || missing+=("$c"); done
"$PY" -c 'import jwt, cryptography' 2>/dev/null || missing+=("python3-jwt and python3-cryptography for $PY")
[ -x "$LAMINAD" ] && [ -x "$LAMINA" ] || missing+=("the laminad and lamina binaries ($LAMINAD, $LAMINA)")
if [ "${#missing[@]}" -gt 0 ]; then bad "missing prerequisites: ${missing[*]} (scripts/deps.sh installs the packages)"; finish; fi
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in $(seq 5081 5089); do
  port_open "$p" && { bad "port $p on 127.0.0.1 is in use: this test needs 5081-5089"; finish; }
done
BUSYBOX=$(command -v busybox)
"$PY" "$HERE/scripts/mkimage_busybox.py" "$WORK/image" "$BUSYBOX" >/dev/null || { bad "build the demo image"; finish; }

# --- helpers ----------------------------------------------------------------------------
wait_port() { for _ in $(seq 100); do port_open "$1" && return 0; sleep 0.1; done; return 1; }
# start_registry NAME PORT HTTP_EXTRA AUTH: docker-registry on 127.0.0.1:PORT, storage and
# log under $WORK/reg-NAME; HTTP_EXTRA goes below `http:` (2 spaces), AUTH at top level.
start_registry() {
  local name=$1 port=$2 d=$WORK/reg-$1
  mkdir -p "$d/data"
  cat > "$d/config.yml" <<EOF
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $d/data
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
$3
$4
EOF
  docker-registry serve "$d/config.yml" > "$d/registry.log" 2>&1 &
  PIDS+=($!)
  wait_port "$port" && return 0
  echo "docker-registry $name did not come up:"; tail -5 "$d/registry.log"; return 1
}
# push REF [skopeo options...]: the demo image to REF; prints the manifest digest.
push() {
  local ref=$1; shift
  skopeo --insecure-policy copy -q --dest-tls-verify=false --digestfile "$WORK/digest" "$@" \
    "oci:$WORK/image:latest" "docker://$ref" >&2 && cat "$WORK/digest"
}
# daemon NAME [CERTS_DIR]: stops the running laminad and starts a fresh one (own root and
# socket) whose registry_config_path is CERTS_DIR (default: an empty directory, so the
# machine's /etc/containerd/certs.d never matters).
daemon() {
  stop_daemon
  local d=$WORK/d-$1 certs=${2:-$WORK/d-$1/no-certs}
  mkdir -p "$d" "$certs"
  printf 'registry_config_path = "%s"\n' "$certs" > "$d/laminad.toml"
  "$LAMINAD" --config "$d/laminad.toml" --root "$d/root" --socket "$d/lamina.sock" --log-level info 2>"$d/laminad.log" &
  DPID=$! SOCK=$d/lamina.sock
  for _ in $(seq 100); do
    L images >/dev/null 2>&1 && return 0
    kill -0 "$DPID" 2>/dev/null || break
    sleep 0.1
  done
  echo "laminad $1 did not come up:"; tail -5 "$d/laminad.log"; return 1
}
stop_daemon() { [ -n "$DPID" ] || return 0; kill "$DPID"; wait "$DPID" 2>/dev/null; DPID=; }
L() { "$LAMINA" --socket "$SOCK" "$@"; }
# check_image WHAT REF DIGEST: `lamina images` lists REF with manifest DIGEST and its
# rootfs holds the demo image's files (layer 2's motd, busybox, the whiteout applied).
check_image() {
  local what=$1 ref=$2 digest=$3 dir=$WORK/rootfs-$((++NROOT)) got motd
  got=$(L -o json images | "$PY" -c '
import json, sys
print(" ".join(i["manifest"] for i in json.load(sys.stdin) if i["name"] == sys.argv[1]) or "nothing")' "$ref")
  if [ "$got" != "$digest" ]; then bad "$what: lamina images lists $ref with manifest $got, want $digest"; return 1; fi
  if ! L rootfs "$ref" "$dir" >/dev/null 2>"$WORK/rootfs.err"; then bad "$what: lamina rootfs $ref: $(cat "$WORK/rootfs.err")"; return 1; fi
  motd=$(cat "$dir/etc/motd" 2>&1)
  if [ "$motd" = "image layer 2: configuration" ] && [ ! -e "$dir/etc/obsolete" ] && cmp -s "$dir/bin/busybox" "$BUSYBOX"; then
    ok "$what: $ref pulled, manifest $digest, rootfs has the image's files"
  else bad "$what: rootfs of $ref is wrong (motd: $motd)"; fi
  umount "$dir"
}
# pull_ok WHAT REF DIGEST [pull options...]: the pull works and check_image passes.
pull_ok() {
  local what=$1 ref=$2 digest=$3 err; shift 3
  if ! err=$(L -o json pull "$@" "$ref" 2>&1 >"$WORK/pull.json"); then bad "$what: pull of $ref failed: $err"; return 1; fi
  check_image "$what" "$ref" "$digest"
}
# pull_fails WHAT REF PATTERN [pull options...]: the pull fails, its message matching
# PATTERN (grep -E).
pull_fails() {
  local what=$1 ref=$2 pattern=$3 msg; shift 3
  if msg=$(L pull "$@" "$ref" 2>&1); then bad "$what: pull of $ref succeeded"; return 1; fi
  msg=$(printf '%s' "$msg" | tr '\n' ' ')
  if printf '%s' "$msg" | grep -Eq "$pattern"; then ok "$what: fails clearly: $msg"
  else bad "$what: unclear error (want /$pattern/): $msg"; fi
}
# no_images WHAT: the daemon answers and lists no image.
no_images() {
  local n
  if n=$(L -o json images | "$PY" -c 'import json, sys; print(len(json.load(sys.stdin)))') && [ "$n" = 0 ]; then
    ok "$1: laminad still serving, no image recorded"
  else bad "$1: laminad not answering, or an image was recorded (${n:-no answer})"; fi
}
# http_status URL [curl options...]: the status code of a GET (000: no HTTP answer).
http_status() { local url=$1; shift; curl -s -o /dev/null -w '%{http_code}' "$@" "$url"; }

# --- 1. basic auth -----------------------------------------------------------------------
echo "--- basic auth (htpasswd)"
mkdir -p "$WORK/auth"
htpasswd -Bbn alice 's3cret-Pass' > "$WORK/auth/htpasswd"
if start_registry basic 5081 "" "auth:
  htpasswd:
    realm: lamina-test
    path: $WORK/auth/htpasswd"; then
  code=$(http_status http://127.0.0.1:5081/v2/)
  if [ "$code" = 401 ]; then ok "basic: the registry refuses anonymous requests (HTTP $code)"; else bad "basic: anonymous GET /v2/ answered $code, want 401"; fi
  REF=127.0.0.1:5081/lamina/demo:1
  if D_BASIC=$(push "$REF" --dest-creds 'alice:s3cret-Pass') && daemon basic; then
    pull_fails "basic: no credentials" "$REF" "401 Unauthorized.*none were given.*PermissionDenied"
    pull_fails "basic: wrong password" "$REF" "401 Unauthorized.*credentials given were refused.*PermissionDenied" --user alice:wrong
    no_images "basic: after the refused pulls"
    pull_ok "basic: right credentials, same daemon" "$REF" "$D_BASIC" --user 'alice:s3cret-Pass'
  else bad "basic: push with credentials, or laminad start"; fi
else bad "basic: docker-registry with htpasswd auth"; fi

# --- 2. bearer tokens --------------------------------------------------------------------
echo "--- bearer token auth"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/auth/token.key" -out "$WORK/auth/token.pem" \
  -days 2 -subj "/CN=lamina test token issuer" 2>/dev/null || bad "token: openssl signing certificate"
"$PY" "$HELPERS" token-server 5083 --key "$WORK/auth/token.key" --cert "$WORK/auth/token.pem" \
  --issuer lamina-test-issuer --service lamina-test-registry --user 'bob:t0ken-Pass' \
  --public-prefix public/ 2>"$WORK/auth/token-server.log" &
PIDS+=($!)
if wait_port 5083 && start_registry token 5082 "" "auth:
  token:
    realm: http://127.0.0.1:5083/token
    service: lamina-test-registry
    issuer: lamina-test-issuer
    rootcertbundle: $WORK/auth/token.pem"; then
  challenge=$(curl -s -D - -o /dev/null http://127.0.0.1:5082/v2/ | tr -d '\r' | grep -i '^www-authenticate:')
  if printf '%s' "$challenge" | grep -q 'Bearer realm="http://127.0.0.1:5083/token"'; then ok "token: the registry challenges for a bearer token ($challenge)"
  else bad "token: no bearer challenge from the registry: $challenge"; fi
  PRIV=127.0.0.1:5082/private/demo:1 PUB=127.0.0.1:5082/public/demo:1
  if D_PRIV=$(push "$PRIV" --dest-creds 'bob:t0ken-Pass') && D_PUB=$(push "$PUB" --dest-creds 'bob:t0ken-Pass') && daemon token; then
    pull_fails "token: wrong password" "$PRIV" "token endpoint .*401 Unauthorized.*PermissionDenied" --user bob:wrong
    pull_fails "token: anonymous, private repository" "$PRIV" "401 Unauthorized.*anonymous access was refused.*PermissionDenied"
    no_images "token: after the refused pulls"
    pull_ok "token: right credentials, same daemon" "$PRIV" "$D_PRIV" --user 'bob:t0ken-Pass'
    if grep -q "token for 'bob': \[{\"type\": \"repository\", \"name\": \"private/demo\", \"actions\": \[\"pull\"\]}\]" "$WORK/auth/token-server.log"; then
      ok "token: lamina asked the token server for pull on private/demo as bob"
    else bad "token: no pull token for bob in the token server's log"; fi
    daemon token-anonymous && pull_ok "token: anonymous, public repository" "$PUB" "$D_PUB"
  else bad "token: push through the token server, or laminad start"; tail -5 "$WORK/auth/token-server.log"; fi
else bad "token: token server or docker-registry with token auth"; fi

# --- 3. mirrors from hosts.toml ----------------------------------------------------------
echo "--- mirrors (hosts.toml)"
# Upstream 127.0.0.1:5085 and mirror 127.0.0.1:5086 are down (checked free above).
UP=127.0.0.1:5085
if start_registry mirror 5084 "" "" && D_MIRROR=$(push 127.0.0.1:5084/lamina/demo:1); then
  daemon mirror-none && pull_fails "mirror: no hosts.toml, upstream down" "$UP/lamina/demo:1" "Unavailable"
  M=$WORK/certs-mirror
  mkdir -p "$M/$UP"
  cat > "$M/$UP/hosts.toml" <<EOF
server = "http://$UP"

[host."http://127.0.0.1:5086"]
  capabilities = ["pull", "resolve"]

[host."http://127.0.0.1:5084"]
  capabilities = ["pull", "resolve"]
EOF
  daemon mirror "$M" && pull_ok "mirror: upstream and first mirror down, second mirror serves" "$UP/lamina/demo:1" "$D_MIRROR"

  # A mirror that may only serve content by digest ("pull"), not resolve tags.
  sed -i 's/capabilities = \["pull", "resolve"\]/capabilities = ["pull"]/' "$M/$UP/hosts.toml"
  daemon mirror-pull-only "$M"
  pull_fails "mirror: pull-only mirror is not asked for a tag" "$UP/lamina/demo:1" "$UP.*Unavailable"
  pull_ok "mirror: pull-only mirror serves a pull by digest, same daemon" "$UP/lamina/demo@$D_MIRROR" "$D_MIRROR"

  # The registry below a path prefix, no /v2: override_path = true.
  "$PY" "$HELPERS" prefix-proxy 5089 --prefix /mirror/lamina --upstream http://127.0.0.1:5084 \
    2>"$WORK/prefix-proxy.log" &
  PIDS+=($!)
  if wait_port 5089; then
    cat > "$M/$UP/hosts.toml" <<EOF
server = "http://$UP"

[host."http://127.0.0.1:5089/mirror/lamina"]
  capabilities = ["pull", "resolve"]
  override_path = true
EOF
    daemon mirror-override "$M" && pull_ok "mirror: override_path mirror below a path prefix" "$UP/lamina/demo:1" "$D_MIRROR"
    if grep -q '"GET /mirror/lamina/lamina/demo/manifests/1 HTTP' "$WORK/prefix-proxy.log"; then ok "mirror: the override_path mirror was asked /mirror/lamina/lamina/demo/manifests/1"
    else bad "mirror: the prefix proxy saw no manifest request"; fi
  else bad "mirror: prefix proxy did not start"; fi

  # _default/hosts.toml applies to a registry without its own directory.
  DEF=$WORK/certs-default
  mkdir -p "$DEF/_default"
  cat > "$DEF/_default/hosts.toml" <<EOF
[host."http://127.0.0.1:5084"]
  capabilities = ["pull", "resolve"]
EOF
  daemon mirror-default "$DEF" && pull_ok "mirror: _default/hosts.toml" "$UP/lamina/demo:1" "$D_MIRROR"
else bad "mirror: docker-registry or push"; fi

# --- 4. TLS with a private CA --------------------------------------------------------------
echo "--- TLS (private CA, client certificates)"
T=$WORK/tls
mkdir -p "$T/skopeo"
# sign NAME EXTENDED_KEY_USAGE: NAME.key and NAME.pem, a certificate for 127.0.0.1 signed by the CA.
sign() {
  openssl req -newkey rsa:2048 -nodes -keyout "$T/$1.key" -out "$T/$1.csr" -subj "/CN=lamina test $1" 2>/dev/null &&
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=%s\n' "$2" > "$T/$1.ext" &&
    openssl x509 -req -in "$T/$1.csr" -CA "$T/ca.pem" -CAkey "$T/ca.key" -CAcreateserial -days 2 \
      -extfile "$T/$1.ext" -out "$T/$1.pem" 2>/dev/null
}
if openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/ca.key" -out "$T/ca.pem" -days 2 -subj "/CN=lamina test CA" \
     -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null &&
   sign server serverAuth && sign client clientAuth; then
  cp "$T/ca.pem" "$T/skopeo/ca.crt"; cp "$T/client.pem" "$T/skopeo/client.cert"; cp "$T/client.key" "$T/skopeo/client.key"
  TLS_CONF="  tls:
    certificate: $T/server.pem
    key: $T/server.key"
  C=$WORK/certs-tls
  if start_registry tls 5087 "$TLS_CONF" "" && D_TLS=$(push 127.0.0.1:5087/lamina/demo:1); then
    REF=127.0.0.1:5087/lamina/demo:1
    code=$(http_status https://127.0.0.1:5087/v2/ --cacert "$T/ca.pem")
    if [ "$code" = 200 ]; then ok "tls: the registry serves https with the CA's certificate (curl --cacert: $code)"
    else bad "tls: curl --cacert answered $code"; fi
    daemon tls "$C"
    pull_fails "tls: no hosts.toml (loopback means plain http)" "$REF" "HTTP 400.*HTTPS"
    mkdir -p "$C/127.0.0.1:5087"
    printf 'server = "https://127.0.0.1:5087"\n' > "$C/127.0.0.1:5087/hosts.toml"
    pull_fails "tls: https, private CA not trusted" "$REF" "certificate.*UnknownIssuer.*Unavailable"
    cp "$T/ca.pem" "$C/127.0.0.1:5087/ca.pem"
    printf 'server = "https://127.0.0.1:5087"\nca = "ca.pem"\n' > "$C/127.0.0.1:5087/hosts.toml"
    pull_ok "tls: ca = \"ca.pem\" (relative to hosts.toml), same daemon" "$REF" "$D_TLS"
    printf 'server = "https://127.0.0.1:5087"\nskip_verify = true\n' > "$C/127.0.0.1:5087/hosts.toml"
    daemon tls-skip-verify "$C" && pull_ok "tls: skip_verify = true" "$REF" "$D_TLS"
  else bad "tls: docker-registry with TLS, or push"; fi

  if start_registry mtls 5088 "$TLS_CONF
    clientcas:
      - $T/ca.pem" "" && D_MTLS=$(push 127.0.0.1:5088/lamina/demo:1 --dest-cert-dir "$T/skopeo"); then
    REF=127.0.0.1:5088/lamina/demo:1
    code=$(http_status https://127.0.0.1:5088/v2/ --cacert "$T/ca.pem")
    if [ "$code" = 000 ]; then ok "mtls: the registry refuses a TLS client without a certificate (curl: no HTTP answer)"
    else bad "mtls: curl without a client certificate answered $code"; fi
    mkdir -p "$C/127.0.0.1:5088"
    printf 'server = "https://127.0.0.1:5088"\nca = "%s"\n' "$T/ca.pem" > "$C/127.0.0.1:5088/hosts.toml"
    daemon mtls "$C"
    pull_fails "mtls: no client certificate" "$REF" "client certificate.*Unavailable"
    cp "$T/client.pem" "$T/client.key" "$C/127.0.0.1:5088/"
    printf 'server = "https://127.0.0.1:5088"\nca = "%s"\nclient = [["client.pem", "client.key"]]\n' "$T/ca.pem" > "$C/127.0.0.1:5088/hosts.toml"
    pull_ok "mtls: client = [[cert, key]], same daemon" "$REF" "$D_MTLS"
  else bad "mtls: docker-registry with clientcas, or push with a client certificate"; fi
else bad "tls: openssl CA and certificates"; fi

stop_daemon
finish
