"""Judges the fleet's gRPC servers the way generic tools see them.

A client the project did not write (Python grpcio, grpcio-reflection,
grpcio-health-checking; pinned in deploy/local/requirements-tools.txt) knows
nothing about Shortfleet but the addresses. For each server it:

1. lists services through reflection, in grpc.reflection.v1alpha (the
   official grpcio-reflection client) and grpc.reflection.v1 (same messages,
   the v1 method path), and requires exactly the service that server serves
   plus health and both reflection services;
2. builds every request type from the reflected descriptors alone;
3. checks grpc.health.v1 for "" and for the fully-qualified service name
   (SERVING), and NOT_FOUND for a name the server does not serve;
4. calls every method with an empty request and with a malformed one (every
   string a control character, every number its maximum), and requires a
   precise status: never UNKNOWN, INTERNAL or UNIMPLEMENTED;
5. sends bytes that do not decode (a wire type that does not exist, and a
   string field that is not UTF-8): INVALID_ARGUMENT; a string that is not
   UTF-8 inside a message-typed field: refused, by status or in band.

Input: SHORTFLEET_GRPC_SERVERS="name=host:port=shortener.v1.Service,...".
Prints one line per check; exits 1 if any failed.
"""

import os
import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

DEADLINE = 10.0
STANDARD = {
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}
# With every dependency up, none of these is an honest answer to a request:
# UNKNOWN/INTERNAL/UNIMPLEMENTED say nothing, CANCELLED is what a handler
# panic looks like from outside, UNAVAILABLE/DEADLINE_EXCEEDED blame a
# dependency for the caller's own input.
VAGUE = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
# What a request that breaks the contract may answer.
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION,
}
REFLECTION_PATHS = {
    "v1": "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "v1alpha": "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
}

failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def reflect(channel, version, request):
    """One reflection request over `version`'s method path (v1 and v1alpha
    share their message definitions field for field)."""
    call = channel.stream_stream(
        REFLECTION_PATHS[version],
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    (response,) = list(call(iter([request]), timeout=DEADLINE))
    return response


def listed_services(channel, version):
    response = reflect(channel, version, reflection_pb2.ServerReflectionRequest(list_services=""))
    return {s.name for s in response.list_services_response.service}


def pool_over(channel, version, symbol):
    """A descriptor pool filled only from what `version` reflection says:
    the file defining `symbol` and, depth first, every file it imports."""
    pool = descriptor_pool.DescriptorPool()
    added = set()

    def add(proto_bytes):
        fd = descriptor_pb2.FileDescriptorProto.FromString(proto_bytes)
        if fd.name in added:
            return
        for dep in fd.dependency:
            if dep not in added:
                r = reflect(channel, version, reflection_pb2.ServerReflectionRequest(file_by_filename=dep))
                for raw in r.file_descriptor_response.file_descriptor_proto:
                    add(raw)
        pool.Add(fd)
        added.add(fd.name)

    r = reflect(channel, version, reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
    # The answer may carry the file's dependencies too: add the named file last.
    for raw in r.file_descriptor_response.file_descriptor_proto:
        add(raw)
    return pool


def malformed(cls):
    """An instance of `cls` with every scalar set to a hostile value."""
    msg = cls()
    for field in cls.DESCRIPTOR.fields:
        repeated = field.is_repeated
        if field.type == FieldDescriptor.TYPE_STRING:
            value = "\x00\x01" + "x" * 300
        elif field.type == FieldDescriptor.TYPE_BYTES:
            value = b"\x00" * 300
        elif field.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
            value = 2**32 - 1
        elif field.type in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
            value = 2**64 - 1
        elif field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
            value = -(2**31)
        elif field.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
            value = -(2**63)
        elif field.type == FieldDescriptor.TYPE_ENUM:
            value = 9999 if not field.enum_type.is_closed else field.enum_type.values[-1].number
        elif field.type == FieldDescriptor.TYPE_BOOL:
            value = True
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            sub = message_factory.GetMessageClass(field.message_type)
            if field.message_type.full_name == "google.protobuf.Timestamp":
                inner = sub(seconds=253402300800 + 10, nanos=0)  # past year 9999
            else:
                inner = malformed(sub)
            if repeated:
                getattr(msg, field.name).append(inner)
            else:
                getattr(msg, field.name).CopyFrom(inner)
            continue
        else:
            continue
        if repeated:
            getattr(msg, field.name).append(value)
        else:
            setattr(msg, field.name, value)
    return msg


def call(channel, service, method, request, output):
    path = f"/{service}/{method.name}"
    kwargs = dict(
        request_serializer=type(request).SerializeToString,
        response_deserializer=output.FromString,
    )
    try:
        if method.client_streaming and method.server_streaming:
            responses = list(channel.stream_stream(path, **kwargs)(iter([request]), timeout=DEADLINE))
        elif method.client_streaming:
            responses = [channel.stream_unary(path, **kwargs)(iter([request]), timeout=DEADLINE)]
        elif method.server_streaming:
            responses = list(channel.unary_stream(path, **kwargs)(request, timeout=DEADLINE))
        else:
            responses = [channel.unary_unary(path, **kwargs)(request, timeout=DEADLINE)]
        return grpc.StatusCode.OK, "", responses
    except grpc.RpcError as err:
        return err.code(), err.details(), []


UNDECODABLE = b"\x0f\xff\xff"


def varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def invalid_utf8(descriptor):
    """A well-formed message whose first string field holds bytes that are
    not UTF-8 (proto3 requires UTF-8 in strings), or None when the message
    has no string field of its own."""
    for field in descriptor.fields:
        if field.type == field.TYPE_STRING:
            return varint(field.number << 3 | 2) + varint(2) + b"\xff\xfe"
    return None


def nested_invalid_utf8(descriptor):
    """A message whose first message-typed field holds one element that is
    well framed but does not decode (a string in it is not UTF-8), or None
    when no field's type has a string of its own. A server that reads such
    elements lazily (click-logger's StreamClicks) must still refuse it."""
    for field in descriptor.fields:
        if field.type == field.TYPE_MESSAGE:
            inner = invalid_utf8(field.message_type)
            if inner is not None:
                return varint(field.number << 3 | 2) + varint(len(inner)) + inner
    return None


def call_raw(channel, service, method, payload, output=None):
    """Sends `payload` as the request bytes, unserialised; responses are
    decoded as `output` when given."""
    path = f"/{service}/{method.name}"
    kwargs = dict(request_serializer=None, response_deserializer=output.FromString if output else None)
    try:
        if method.client_streaming and method.server_streaming:
            responses = list(channel.stream_stream(path, **kwargs)(iter([payload]), timeout=DEADLINE))
        elif method.client_streaming:
            responses = [channel.stream_unary(path, **kwargs)(iter([payload]), timeout=DEADLINE)]
        elif method.server_streaming:
            responses = list(channel.unary_stream(path, **kwargs)(payload, timeout=DEADLINE))
        else:
            responses = [channel.unary_unary(path, **kwargs)(payload, timeout=DEADLINE)]
        return grpc.StatusCode.OK, "", responses
    except grpc.RpcError as err:
        return err.code(), err.details(), []


def refused_in_band(responses):
    """A stream protocol may refuse a message in its answer (ClickAck's
    `error`) instead of ending the call: that is a precise answer too."""
    return responses and all(getattr(r, "error", "") for r in responses)


def judge(name, address, service):
    print(f"== {name} at {address} ({service})", flush=True)
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=DEADLINE)

    for version in ("v1alpha", "v1"):
        names = listed_services(channel, version)
        check(names == STANDARD | {service}, f"{name}: reflection {version} lists exactly {service} + standard, got {sorted(names)}")

    # The official client's descriptor database (v1alpha) must resolve the
    # service, and v1 must describe it identically.
    official = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    described = official.FindServiceByName(service)
    via_v1 = pool_over(channel, "v1", service).FindServiceByName(service)
    check(
        [m.name for m in described.methods] == [m.name for m in via_v1.methods] and described.methods,
        f"{name}: v1 and v1alpha describe the same methods {[m.name for m in described.methods]}",
    )

    health = health_pb2_grpc.HealthStub(channel)
    for svc in ("", service):
        status = health.Check(health_pb2.HealthCheckRequest(service=svc), timeout=DEADLINE).status
        check(status == health_pb2.HealthCheckResponse.SERVING, f"{name}: health {svc or '(server)'!r} is SERVING")
    try:
        health.Check(health_pb2.HealthCheckRequest(service="shortener.v1.NoSuchService"), timeout=DEADLINE)
        check(False, f"{name}: health for an unknown service is NOT_FOUND")
    except grpc.RpcError as err:
        check(err.code() == grpc.StatusCode.NOT_FOUND, f"{name}: health for an unknown service is NOT_FOUND, got {err.code()}")

    for method in described.methods:
        request_cls = message_factory.GetMessageClass(method.input_type)
        output_cls = message_factory.GetMessageClass(method.output_type)
        code, detail, _ = call(channel, service, method, request_cls(), output_cls)
        check(code not in VAGUE, f"{name}: {method.name}(empty) answers a precise status: {code.name} {detail[:80]!r}")
        code, detail, responses = call(channel, service, method, malformed(request_cls), output_cls)
        precise = code in REFUSALS or (code == grpc.StatusCode.OK and refused_in_band(responses))
        shown = detail or "; ".join(getattr(r, "error", "") for r in responses)
        check(precise, f"{name}: {method.name}(malformed) is refused precisely: {code.name} {shown[:80]!r}")
        # Bytes that are no protobuf message at all (a field tag with wire
        # type 7 does not exist) are the caller's mistake too.
        code, detail, _ = call_raw(channel, service, method, UNDECODABLE)
        check(code == grpc.StatusCode.INVALID_ARGUMENT, f"{name}: {method.name}(undecodable bytes) is INVALID_ARGUMENT: {code.name} {detail[:80]!r}")
        # Framing intact, but a string that is not UTF-8: still no decode.
        payload = invalid_utf8(method.input_type)
        if payload is not None:
            code, detail, _ = call_raw(channel, service, method, payload)
            check(code == grpc.StatusCode.INVALID_ARGUMENT, f"{name}: {method.name}(a string field that is not UTF-8) is INVALID_ARGUMENT: {code.name} {detail[:80]!r}")
        # The same one level down: refused, by status or in band.
        payload = nested_invalid_utf8(method.input_type)
        if payload is not None:
            code, detail, responses = call_raw(channel, service, method, payload, output_cls)
            precise = code == grpc.StatusCode.INVALID_ARGUMENT or (code == grpc.StatusCode.OK and refused_in_band(responses))
            shown = detail or "; ".join(getattr(r, "error", "") for r in responses)
            check(precise, f"{name}: {method.name}(an element whose string is not UTF-8) is refused precisely: {code.name} {shown[:80]!r}")
    channel.close()


def main():
    servers = os.environ.get("SHORTFLEET_GRPC_SERVERS", "")
    if not servers:
        print("SHORTFLEET_GRPC_SERVERS is not set", file=sys.stderr)
        return 2
    for entry in servers.split(","):
        name, address, service = entry.split("=")
        judge(name, address, service)
    checked = "passed" if not failures else "failed"
    print(f"grpc_tools: {len(failures)} checks {checked}" if failures else "grpc_tools: all checks passed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
