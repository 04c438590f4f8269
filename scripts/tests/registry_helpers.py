#!/usr/bin/python3
"""Servers that registry_access.sh runs beside docker-registry (Debian's python3 with
python3-jwt and python3-cryptography; the prefix proxy needs only the standard library).

token-server PORT --key KEY.pem --cert CERT.pem --issuer I --service S --user NAME:PASSWORD
             [--public-prefix P/]
    A token server as distribution's token auth spec describes it
    (https://distribution.github.io/distribution/spec/auth/token/): GET /token?service=S
    &scope=repository:NAME:ACTIONS (scope may repeat), answered with
    {"token": JWT, "access_token": JWT, ...}. The JWT is RS256, signed by KEY, with the
    certificate CERT in its x5c header (docker-registry's `rootcertbundle` holds CERT), and
    the claims iss, sub, aud, exp, nbf, iat, jti and access=[{type, name, actions}].
    Basic credentials must match --user exactly (else 401); that user gets every action
    asked for. Anonymous requests get "pull" on repositories starting with
    --public-prefix and nothing else (an empty access list, as Docker Hub does).

prefix-proxy PORT --prefix /PATH --upstream http://HOST:PORT
    Serves a registry below a path prefix, without /v2 (what a hosts.toml mirror with
    override_path = true points at): GET/HEAD /PATH/<rest> is forwarded to
    UPSTREAM/v2/<rest>; anything else is 404.

Both log every request (and each token's grant) to stderr.
"""
import argparse
import base64
import datetime
import http.client
import http.server
import json
import sys
import time
import urllib.parse
import uuid


class TokenHandler(http.server.BaseHTTPRequestHandler):
    opts = None
    key = None
    x5c = None

    def reply(self, status, doc):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="lamina test token server"')
        self.end_headers()
        self.wfile.write(body)

    def user(self):
        """(ok, name): name is "" for an anonymous request; ok False for bad credentials."""
        header = self.headers.get("Authorization", "")
        if not header:
            return True, ""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False, ""
        try:
            given = base64.b64decode(value).decode()
        except Exception:  # malformed: as bad as a wrong password
            return False, ""
        return given == self.opts.user, given.split(":", 1)[0]

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/token":
            return self.reply(404, {"errors": [{"code": "NOT_FOUND", "message": url.path}]})
        query = urllib.parse.parse_qs(url.query)
        if query.get("service", [""])[0] != self.opts.service:
            return self.reply(400, {"errors": [{"code": "DENIED", "message": "unknown service"}]})
        ok, name = self.user()
        if not ok:
            return self.reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "invalid username or password"}]})
        access = []
        for scope in query.get("scope", []):
            parts = scope.split(":")
            if len(parts) != 3 or parts[0] != "repository":
                continue
            repo, actions = parts[1], [a for a in parts[2].split(",") if a]
            if not name:
                actions = [a for a in actions if a == "pull"] if repo.startswith(self.opts.public_prefix) else []
            if actions:
                access.append({"type": "repository", "name": repo, "actions": actions})
        now = int(time.time())
        claims = {"iss": self.opts.issuer, "sub": name, "aud": self.opts.service, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        import jwt  # python3-jwt
        token = jwt.encode(claims, self.key, algorithm="RS256", headers={"x5c": [self.x5c]})
        issued = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat()
        sys.stderr.write("token for %r: %s\n" % (name, json.dumps(access)))
        self.reply(200, {"token": token, "access_token": token, "expires_in": 300, "issued_at": issued})


def token_server(opts):
    from cryptography import x509  # python3-cryptography
    from cryptography.hazmat.primitives import serialization

    with open(opts.cert, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    with open(opts.key, "rb") as f:
        TokenHandler.key = serialization.load_pem_private_key(f.read(), password=None)
    TokenHandler.x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    TokenHandler.opts = opts
    http.server.ThreadingHTTPServer(("127.0.0.1", opts.port), TokenHandler).serve_forever()


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    opts = None
    protocol_version = "HTTP/1.1"

    def forward(self, method):
        prefix = self.opts.prefix.rstrip("/") + "/"
        if not self.path.startswith(prefix):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        up = urllib.parse.urlsplit(self.opts.upstream)
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range", "authorization")}
        conn.request(method, "/v2/" + self.path[len(prefix):], headers=headers)
        resp = conn.getresponse()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() in ("content-type", "content-length", "content-range", "docker-content-digest",
                             "www-authenticate", "etag", "accept-ranges"):
                self.send_header(k, v)
        if resp.getheader("Content-Length") is None:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if method != "HEAD":
            while True:
                chunk = resp.read(1 << 16)
                if not chunk:
                    break
                self.wfile.write(chunk)
        conn.close()

    def do_GET(self):
        self.forward("GET")

    def do_HEAD(self):
        self.forward("HEAD")


def prefix_proxy(opts):
    ProxyHandler.opts = opts
    http.server.ThreadingHTTPServer(("127.0.0.1", opts.port), ProxyHandler).serve_forever()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("token-server")
    t.add_argument("port", type=int)
    t.add_argument("--key", required=True)
    t.add_argument("--cert", required=True)
    t.add_argument("--issuer", required=True)
    t.add_argument("--service", required=True)
    t.add_argument("--user", required=True, help="NAME:PASSWORD")
    t.add_argument("--public-prefix", default="public/")
    p = sub.add_parser("prefix-proxy")
    p.add_argument("port", type=int)
    p.add_argument("--prefix", required=True)
    p.add_argument("--upstream", required=True)
    opts = ap.parse_args()
    (token_server if opts.cmd == "token-server" else prefix_proxy)(opts)


if __name__ == "__main__":
    main()
