"""The wire shape of the KServe v2 / Triton protocol as one side's generated code declares it.

    python proto_fields.py metalearn|tritonclient

Prints JSON: ``methods`` (name → request, response, whether each streams), ``fields``
("Message.field" → number, type, repeated, message or enum type) and ``enums`` ("Enum.VALUE" → number).
Runs in either venv, so it imports only the side it is asked about.
"""
import json
import sys


def shape(modules) -> dict:
    methods, fields, enums = {}, {}, {}

    def message(descriptor, prefix: str) -> None:
        name = prefix + descriptor.name
        for field in descriptor.fields:
            kind = field.message_type or field.enum_type
            # protobuf 6 has is_repeated; the older one tritonclient pins has only label
            repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
            fields[f"{name}.{field.name}"] = [field.number, field.type, repeated, kind.full_name if kind else ""]
        for nested in descriptor.nested_types:
            message(nested, name + ".")
        for enum in descriptor.enum_types:
            enums.update({f"{name}.{enum.name}.{v.name}": v.number for v in enum.values})

    for module in modules:
        for descriptor in module.DESCRIPTOR.message_types_by_name.values():
            message(descriptor, "")
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            enums.update({f"{enum.name}.{v.name}": v.number for v in enum.values})
        for service in module.DESCRIPTOR.services_by_name.values():
            methods.update({m.name: [m.input_type.full_name, m.output_type.full_name, m.client_streaming,
                                     m.server_streaming] for m in service.methods})
    return {"methods": methods, "fields": fields, "enums": enums}


if __name__ == "__main__":
    if sys.argv[1] == "tritonclient":
        from tritonclient.grpc import model_config_pb2, service_pb2
        print(json.dumps(shape([service_pb2, model_config_pb2])))
    else:
        from metalearn.kserve.v2 import grpc_service_pb2, model_config_pb2
        print(json.dumps(shape([grpc_service_pb2, model_config_pb2])))
