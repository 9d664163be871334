"""A minimal Docker registry token server for the local test stack.

Implements the distribution token flow (GET /token?service=..&scope=..) with
HTTP basic credentials, signing ES256 JWTs whose x5c header carries the
certificate the registry is configured to trust (`auth.token.rootcertbundle`).
Anonymous requests get a token with no access, as Docker Hub does for private
repositories, so the registry answers 401 and the client must log in.

Test use only: it listens on 127.0.0.1 and knows one user from the environment.
Every issued token is appended to the log as one line (without the token), so
tests can count how often a client authenticated.
"""

import base64
import json
import os
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

USER = os.environ["TOKEN_USER"]
PASSWORD = os.environ["TOKEN_PASS"]
ISSUER = os.environ["TOKEN_ISSUER"]
SERVICE = os.environ["TOKEN_SERVICE"]
TTL = int(os.environ.get("TOKEN_TTL", "300"))

with open(os.environ["TOKEN_KEY"], "rb") as f:
    KEY = serialization.load_pem_private_key(f.read(), password=None)
with open(os.environ["TOKEN_CERT"], "rb") as f:
    CERT = x509.load_pem_x509_certificate(f.read())
CERT_DER_B64 = base64.b64encode(CERT.public_bytes(serialization.Encoding.DER)).decode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(claims: dict) -> str:
    header = {"typ": "JWT", "alg": "ES256", "x5c": [CERT_DER_B64]}
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    der = KEY.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    # JWS wants the raw 64-byte r||s form, not DER.
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return signing_input + "." + b64url(raw)


def parse_scope(scope: str):
    # repository:name:pull,push (names may contain ':' only via port-less paths, so split from the right)
    kind, rest = scope.split(":", 1)
    name, actions = rest.rsplit(":", 1)
    return {"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):  # keep stdout for the one-line-per-token log
        pass

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/healthz":
            return self.reply(200, {"ok": True})
        if url.path != "/token":
            return self.reply(404, {"error": "not found"})
        query = parse_qs(url.query)
        authorized = False
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except Exception:
                return self.reply(400, {"error": "malformed basic credentials"})
            if user != USER or password != PASSWORD:
                print(json.dumps({"event": "denied", "user": user}), flush=True)
                return self.reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "invalid username or password"}]})
            authorized = True
        scopes = []
        for raw in query.get("scope", []):
            for item in raw.split(" "):
                if item:
                    scopes.append(parse_scope(item))
        access = scopes if authorized else []
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": USER if authorized else "",
            "aud": query.get("service", [SERVICE])[0],
            "exp": now + TTL,
            "nbf": now - 5,
            "iat": now,
            "jti": str(uuid.uuid4()),
            "access": access,
        }
        token = sign(claims)
        print(json.dumps({"event": "issued", "authorized": authorized, "scopes": [s["name"] for s in scopes]}), flush=True)
        self.reply(200, {"token": token, "access_token": token, "expires_in": TTL, "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))})


if __name__ == "__main__":
    port = int(sys.argv[1])
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
