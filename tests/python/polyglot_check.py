#!/usr/bin/env python3
"""Checks that a non-Rust client can use an aios server from the .proto files alone.

Generates Python stubs from DIR/aios/v1/*.proto, imports them, asks the server's
grpc.health.v1 Health for overall status, lists services over server reflection,
and checks that each aios service's reflected methods equal the generated ones.
Prints one JSON line to stdout; exits 0 only when every check passed.
"""

import argparse
import importlib
import importlib.resources
import json
import pathlib
import sys
import tempfile

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

DEADLINE_S = 10.0
# v1 and v1alpha share the wire format, so the v1alpha messages serve both paths.
REFLECTION_METHODS = (
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
)


def generate(proto_dir: pathlib.Path, out_dir: pathlib.Path) -> list:
    """Runs protoc over every aios/v1 .proto; returns the generated module names."""
    protos = sorted((proto_dir / "aios" / "v1").glob("*.proto"))
    if not protos:
        raise RuntimeError(f"no .proto files in {proto_dir / 'aios' / 'v1'}")
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = ["protoc", f"-I{proto_dir}", f"-I{well_known}",
            f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"]
    args += [str(p.relative_to(proto_dir)) for p in protos]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed; see its messages above")
    stems = [f"aios.v1.{p.stem}" for p in protos]
    return [f"{s}{suffix}" for s in stems for suffix in ("_pb2", "_pb2_grpc")]


def reflect(channel: grpc.Channel, requests: list) -> list:
    """Sends reflection requests in one stream, trying v1 then v1alpha."""
    for method in REFLECTION_METHODS:
        call = channel.stream_stream(
            method,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        try:
            return list(call(iter(requests), timeout=DEADLINE_S))
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNIMPLEMENTED or method == REFLECTION_METHODS[-1]:
                raise
    return []


def reflected_methods(channel: grpc.Channel, service: str) -> list:
    """Method names of `service` according to the server's reflection."""
    [resp] = reflect(channel, [reflection_pb2.ServerReflectionRequest(file_containing_symbol=service)])
    if resp.HasField("error_response"):
        raise RuntimeError(f"reflection has no {service}: {resp.error_response.error_message}")
    package, _, name = service.rpartition(".")
    for raw in resp.file_descriptor_response.file_descriptor_proto:
        fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
        for svc in fd.service:
            if fd.package == package and svc.name == name:
                return [m.name for m in svc.method]
    raise RuntimeError(f"reflection returned no descriptor for {service}")


def check(args, report: dict) -> None:
    """Runs every check, filling `report`; raises on errors that stop the run."""
    problems = []

    # (1) + (2): generate stubs and import every generated module.
    out_dir = pathlib.Path(args.out_dir or tempfile.mkdtemp(prefix="aios-pystubs-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    names = generate(pathlib.Path(args.proto_dir).resolve(), out_dir)
    sys.path.insert(0, str(out_dir))
    modules = {name: importlib.import_module(name) for name in names}
    # Generated service descriptors, by full name, with their _pb2_grpc module.
    generated = {svc.full_name: (svc, modules[name + "_grpc"])
                 for name, mod in modules.items() if name.endswith("_pb2")
                 for svc in mod.DESCRIPTOR.services_by_name.values()}

    with grpc.insecure_channel(args.target) as channel:
        # (3): overall health ("" = the whole server).
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE_S)
        report["health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)
        if health.status != health_pb2.HealthCheckResponse.SERVING:
            problems.append(f"health is {report['health']}, expected SERVING")

        # (4): list services over reflection.
        [resp] = reflect(channel, [reflection_pb2.ServerReflectionRequest(list_services="")])
        listed = sorted(s.name for s in resp.list_services_response.service)
        report["services"] = listed

        # (5): expected services are listed; aios services match the generated code.
        report["missing"] = sorted(set(args.expect) - set(listed))
        problems += [f"service {s} is not listed by reflection" for s in report["missing"]]
        for service in sorted(s for s in set(listed) | set(args.expect) if s.startswith("aios.")):
            if service not in generated:
                problems.append(f"{service} is not in the generated code")
                continue
            descriptor, grpc_module = generated[service]
            if not hasattr(grpc_module, descriptor.name + "Stub"):
                problems.append(f"{grpc_module.__name__}.{descriptor.name}Stub does not exist")
            if service not in listed:
                continue
            want = sorted(m.name for m in descriptor.methods)
            got = sorted(reflected_methods(channel, service))
            if got != want:
                problems.append(f"{service} methods differ: server {got}, protos {want}")

    report["ok"] = not problems
    for problem in problems:
        print(f"polyglot_check: {problem}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto-dir", required=True, help="directory holding aios/v1/*.proto")
    parser.add_argument("--target", required=True, help="server address, HOST:PORT")
    parser.add_argument("--expect", action="append", default=[], metavar="SERVICE",
                        help="fully qualified service that must be served (repeatable)")
    parser.add_argument("--out-dir", help="where to write generated stubs (default: temp dir)")
    args = parser.parse_args()
    report = {"health": "UNKNOWN", "services": [], "missing": sorted(args.expect), "ok": False}
    try:
        check(args, report)
    except (grpc.RpcError, RuntimeError, ImportError, OSError) as err:
        detail = f"{err.code().name}: {err.details()}" if isinstance(err, grpc.RpcError) else str(err)
        print(f"polyglot_check: failed: {detail}", file=sys.stderr)
        report["ok"] = False
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
