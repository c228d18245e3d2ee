"""The fleet's mutual TLS judged by Python grpcio, which the project did not
write: who gets a handshake, who may call which method.

Environment:
  SHORTFLEET_TLS_DIR        material from deploy/tls/mint (the fleet's CA)
  SHORTFLEET_ROGUE_TLS_DIR  material from a second, unrelated mint
  SHORTFLEET_GRPC_SERVERS   name=host:port,… for write-svc, read-svc,
                            click-logger and analytics-svc

Every call sends raw request bytes, built here by hand, so the script needs
no generated code. Exits non-zero with a FAIL line per broken expectation.
"""

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEADLINE = 5.0
failures = []

WRITER = "shortener.v1.LinkWriter"
RESOLVER = "shortener.v1.LinkResolver"
CLICKS = "shortener.v1.ClickLogger"
ANALYTICS = "shortener.v1.Analytics"


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def field(number, text):
    """One length-delimited protobuf field (a string)."""
    data = text.encode()
    return bytes([number << 3 | 2, len(data)]) + data


def read(path):
    with open(path, "rb") as f:
        return f.read()


def credentials(tls_dir, identity):
    """Channel credentials trusting `tls_dir`'s CA, presenting `identity`'s
    certificate (None: no client certificate)."""
    root = read(os.path.join(tls_dir, "ca.crt"))
    if identity is None:
        return grpc.ssl_channel_credentials(root_certificates=root)
    return grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=read(os.path.join(tls_dir, identity, "tls.key")),
        certificate_chain=read(os.path.join(tls_dir, identity, "tls.crt")),
    )


def channel(address, server_name, creds):
    # The fleet dials services by address and checks the certificate against
    # the service's name, as here.
    return grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", server_name)])


def call(ch, service, method, payload=b""):
    try:
        ch.unary_unary(f"/{service}/{method}", request_serializer=None, response_deserializer=None)(
            payload, timeout=DEADLINE
        )
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()


def main():
    tls = os.environ["SHORTFLEET_TLS_DIR"]
    rogue = os.environ["SHORTFLEET_ROGUE_TLS_DIR"]
    servers = dict(
        (name, address) for name, address in (e.split("=") for e in os.environ["SHORTFLEET_GRPC_SERVERS"].split(","))
    )
    as_ = lambda svc, who: channel(servers[svc], svc, credentials(tls, who))  # noqa: E731
    alice = field(1, "alice")

    # Handshakes: only fleet certificates, only the real service.
    for svc, service in (("write-svc", WRITER), ("read-svc", RESOLVER), ("click-logger", CLICKS), ("analytics-svc", ANALYTICS)):
        health = health_pb2_grpc.HealthStub(as_(svc, "operator"))
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=DEADLINE).status
        check(status == health_pb2.HealthCheckResponse.SERVING, f"{svc}: health over mTLS with the operator certificate")
        code = call(as_(svc, None), "grpc.health.v1.Health", "Check")
        check(code == grpc.StatusCode.UNAVAILABLE, f"{svc}: no client certificate, no handshake ({code.name})")
        code = call(channel(servers[svc], svc, credentials(rogue, "gateway")), "grpc.health.v1.Health", "Check")
        check(code == grpc.StatusCode.UNAVAILABLE, f"{svc}: a certificate from another CA, no handshake ({code.name})")
        code = call(grpc.insecure_channel(servers[svc]), "grpc.health.v1.Health", "Check")
        check(code == grpc.StatusCode.UNAVAILABLE, f"{svc}: plaintext is refused ({code.name})")

    impostor = channel(servers["write-svc"], "read-svc", credentials(tls, "gateway"))
    code = call(impostor, "grpc.health.v1.Health", "Check")
    check(code == grpc.StatusCode.UNAVAILABLE, f"write-svc cannot pass for read-svc ({code.name})")

    # Who may call what.
    denied = grpc.StatusCode.PERMISSION_DENIED
    expectations = [
        ("write-svc", "gateway", WRITER, "ListLinks", alice, grpc.StatusCode.OK),
        ("write-svc", "read-svc", WRITER, "GetLink", field(1, "nosuchcode"), grpc.StatusCode.NOT_FOUND),
        ("write-svc", "read-svc", WRITER, "ListLinks", alice, denied),
        ("write-svc", "read-svc", WRITER, "CreateLink", alice, denied),
        ("write-svc", "operator", WRITER, "ListLinks", alice, denied),
        ("write-svc", "click-logger", WRITER, "DeleteLink", alice, denied),
        ("read-svc", "gateway", RESOLVER, "Resolve", field(1, "nosuchcode"), grpc.StatusCode.NOT_FOUND),
        ("read-svc", "write-svc", RESOLVER, "Resolve", field(1, "nosuchcode"), denied),
        ("click-logger", "analytics-svc", CLICKS, "LogClicks", b"", denied),
        ("analytics-svc", "gateway", ANALYTICS, "TopLinks", alice, grpc.StatusCode.OK),
        ("analytics-svc", "read-svc", ANALYTICS, "TopLinks", alice, denied),
        ("analytics-svc", "operator", ANALYTICS, "ClickTotals", alice, denied),
    ]
    for svc, who, service, method, payload, want in expectations:
        code = call(as_(svc, who), service, method, payload)
        check(code == want, f"{svc}: {who} calling {method} gets {want.name} (got {code.name})")

    # Still the right status for bytes that are no message, over TLS too.
    code = call(as_("write-svc", "gateway"), WRITER, "ListLinks", b"\x0f\xff\xff")
    check(code == grpc.StatusCode.INVALID_ARGUMENT, f"write-svc: undecodable bytes are INVALID_ARGUMENT ({code.name})")

    print("mtls_probe: all checks passed" if not failures else f"mtls_probe: {len(failures)} checks failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
