"""A self-signed CA and a forwarding proxy on loopback, to put TLS or Basic auth in front of a real mlflow server.

    ca = make_loopback_ca(folder)                   # -> LoopbackCA(ca_path, cert_path, key_path), for 127.0.0.1
    proxy = ForwardingProxy("http://127.0.0.1:5000", tls=ca, credentials=("user", "secret"))
    proxy.start(); proxy.url                        # https://127.0.0.1:<port>
    proxy.stop(); proxy.start()                     # the same port: the "server" goes down and comes back

The proxy answers HTTP/1.0 (one request per connection, so stopping it really cuts every client off),
terminates TLS in the handler thread, and with `credentials` answers 401 to every request without that
Basic ``Authorization`` header except ``/health`` (as MLflow's basic-auth app does). The pytest fixtures
that use it live in fixtures_mlflow.py.
"""
import base64
import datetime
import http.client
import ipaddress
import os
import ssl
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["LoopbackCA", "make_loopback_ca", "ForwardingProxy"]

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer",
               "host", "content-length"}


@dataclass
class LoopbackCA:
    """PEM files: the CA certificate (what a client trusts), the server certificate and its key."""

    ca_path: str
    cert_path: str
    key_path: str


def _name(common_name):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject, issuer, public_key, signing_key, extensions):
    """A certificate valid from a day ago to a day ahead, signed with `signing_key`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1)))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signing_key, hashes.SHA256())


def make_loopback_ca(folder):
    """Write a self-signed CA and a server certificate for 127.0.0.1/localhost signed by it into `folder`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("genmetrics test CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = _certificate(ca_name, ca_name, ca_key.public_key(), ca_key, [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                       encipher_only=False, decipher_only=False), True),
        (ca_ski, False),
    ])
    server_cert = _certificate(_name("127.0.0.1"), ca_name, server_key.public_key(), ca_key, [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                      x509.DNSName("localhost")]), False),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), False),
        (x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False),
    ])
    ca = LoopbackCA(*(os.path.join(str(folder), name) for name in ("ca.pem", "server.pem", "server.key")))
    pem = serialization.Encoding.PEM
    with open(ca.ca_path, "wb") as f:
        f.write(ca_cert.public_bytes(pem))
    with open(ca.cert_path, "wb") as f:
        f.write(server_cert.public_bytes(pem))
    with open(ca.key_path, "wb") as f:
        f.write(server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return ca


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):  # keep test output quiet
        pass

    def _forward(self):
        """Check the credentials, send the request on to the target, and its answer back."""
        proxy = self.server.proxy
        if not proxy.authorized(self.path, self.headers.get("Authorization")):
            self._answer(401, "Unauthorized", [("WWW-Authenticate", 'Basic realm="mlflow"')],
                         b"You are not authenticated. Please see the documentation for details.")
            return
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self._answer(501, "Not Implemented", [], b"chunked request bodies are not forwarded")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        connection = http.client.HTTPConnection(proxy.target_host, proxy.target_port, timeout=120)
        try:
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
        self._answer(response.status, response.reason, kept, data)

    def _answer(self, status, reason, headers, data):
        self.send_response(status, reason)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def finish_request(self, request, client_address):
        """TLS handshake in the handler thread (a client that gives up does not hold the accept loop)."""
        if self.proxy.context is not None:
            request = self.proxy.context.wrap_socket(request, server_side=True)
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):  # refused handshakes are the point of some tests
        pass


class ForwardingProxy:
    """Forwards every request to `target` (an http:// URL); optional TLS (a `LoopbackCA`) and Basic credentials."""

    def __init__(self, target, tls=None, credentials=None):
        parts = urllib.parse.urlsplit(target)
        self.target_host, self.target_port = parts.hostname, parts.port
        self.tls = tls
        self.context = None
        if tls is not None:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(tls.cert_path, tls.key_path)
        self.expected = None
        if credentials is not None:
            self.expected = "Basic " + base64.b64encode(":".join(credentials).encode()).decode()
        self.port = 0
        self._server = None
        self._thread = None

    @property
    def url(self):
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def authorized(self, path, header):
        """True when no credentials are required, for /health, or when `header` carries the right ones."""
        return self.expected is None or path.startswith("/health") or header == self.expected

    def start(self):
        """Listen (again) on the same port, in a daemon thread."""
        if self._server is not None:
            return
        self._server = _ProxyServer(("127.0.0.1", self.port), _ProxyHandler)
        self._server.proxy = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="test-proxy", daemon=True)
        self._thread.start()

    def stop(self):
        """Close the listening socket: new connections are refused until `start`."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None
