//! The aios public contract, package `aios.v1`, generated at build time from
//! `proto/aios/v1/*.proto` with no system `protoc`.
//!
//! Only the edges of aios use these types: servers convert them once into
//! domain types (`TryFrom`) and the rest of the code never sees them.
//! [`FILE_DESCRIPTOR_SET`] is what the servers hand to gRPC reflection, so
//! `grpcurl` and generated clients in any language can discover every service.

/// Generated messages, clients (`*_client`) and servers (`*_server`).
#[allow(
    clippy::all,
    clippy::pedantic,
    missing_docs,
    missing_debug_implementations
)]
pub mod v1 {
    tonic::include_proto!("aios.v1");
}

/// OTLP trace export (`opentelemetry.proto.*`, vendored unchanged): the
/// messages and the `TraceService` client and server. Module paths mirror
/// the proto packages, as the generated code expects.
#[allow(
    clippy::all,
    clippy::pedantic,
    missing_docs,
    missing_debug_implementations
)]
pub mod otlp {
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("opentelemetry.proto.common.v1");
        }
    }
    pub mod resource {
        pub mod v1 {
            tonic::include_proto!("opentelemetry.proto.resource.v1");
        }
    }
    pub mod trace {
        pub mod v1 {
            tonic::include_proto!("opentelemetry.proto.trace.v1");
        }
    }
    pub mod collector {
        pub mod trace {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
            }
        }
    }
}

/// Encoded `google.protobuf.FileDescriptorSet` of every `aios.v1` file.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/aios_descriptor.bin"));

/// Fully-qualified names of the services the control plane serves.
pub const CONTROL_PLANE_SERVICES: &[&str] = &[
    "aios.v1.AdminService",
    "aios.v1.FleetService",
    "aios.v1.TelemetryService",
    "aios.v1.ApprovalService",
    "aios.v1.BudgetService",
];

/// Fully-qualified names of the services a data-plane node serves.
pub const DATA_PLANE_SERVICES: &[&str] = &["aios.v1.AgentService"];

/// Implemented by tools written in any language and registered by address.
pub const TOOL_SERVICE: &str = "aios.v1.ToolService";

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn descriptor_set_declares_every_service() {
        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let mut declared: Vec<String> = fds
            .file
            .iter()
            .flat_map(|f| {
                f.service
                    .iter()
                    .map(move |s| format!("{}.{}", f.package(), s.name()))
            })
            .collect();
        declared.sort();
        let mut expected: Vec<String> = CONTROL_PLANE_SERVICES
            .iter()
            .chain(DATA_PLANE_SERVICES)
            .chain([&TOOL_SERVICE])
            .map(|s| s.to_string())
            .collect();
        expected.sort();
        assert_eq!(declared, expected);
    }

    #[test]
    fn every_enum_starts_with_unspecified() {
        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        fn check(e: &prost_types::EnumDescriptorProto) {
            let first = &e.value[0];
            assert_eq!(first.number(), 0, "enum {}", e.name());
            assert!(
                first.name().ends_with("_UNSPECIFIED"),
                "enum {} starts with {}",
                e.name(),
                first.name()
            );
        }
        fn walk(m: &prost_types::DescriptorProto) {
            m.enum_type.iter().for_each(check);
            m.nested_type.iter().for_each(walk);
        }
        for file in fds.file.iter().filter(|f| f.package() == "aios.v1") {
            file.enum_type.iter().for_each(check);
            file.message_type.iter().for_each(walk);
        }
    }

    /// The contract's documentation is part of the contract: every message,
    /// field, oneof, enum, enum value, service and RPC carries a comment.
    #[test]
    fn every_element_of_the_contract_is_documented() {
        use std::collections::HashSet;

        use prost_types::{DescriptorProto, EnumDescriptorProto};

        // Field numbers of the descriptor.proto paths used in source info.
        const FILE_MESSAGE: i32 = 4;
        const FILE_ENUM: i32 = 5;
        const FILE_SERVICE: i32 = 6;
        const MESSAGE_FIELD: i32 = 2;
        const MESSAGE_NESTED: i32 = 3;
        const MESSAGE_ENUM: i32 = 4;
        const MESSAGE_ONEOF: i32 = 8;
        const ENUM_VALUE: i32 = 2;
        const SERVICE_METHOD: i32 = 2;

        fn enum_paths(
            e: &EnumDescriptorProto,
            path: Vec<i32>,
            name: String,
            out: &mut Vec<(Vec<i32>, String)>,
        ) {
            for (i, v) in e.value.iter().enumerate() {
                out.push((
                    [path.clone(), vec![ENUM_VALUE, i as i32]].concat(),
                    format!("{name}.{}", v.name()),
                ));
            }
            out.push((path, name));
        }
        fn message_paths(
            m: &DescriptorProto,
            path: Vec<i32>,
            name: String,
            out: &mut Vec<(Vec<i32>, String)>,
        ) {
            let child = |kind: i32, i: usize| [path.clone(), vec![kind, i as i32]].concat();
            for (i, f) in m.field.iter().enumerate() {
                out.push((child(MESSAGE_FIELD, i), format!("{name}.{}", f.name())));
            }
            // proto3 `optional` fields get a synthetic oneof with no source text.
            let synthetic = |i: usize| {
                m.field
                    .iter()
                    .any(|f| f.oneof_index == Some(i as i32) && f.proto3_optional())
            };
            for (i, o) in m
                .oneof_decl
                .iter()
                .enumerate()
                .filter(|(i, _)| !synthetic(*i))
            {
                out.push((child(MESSAGE_ONEOF, i), format!("{name}.{}", o.name())));
            }
            for (i, n) in m.nested_type.iter().enumerate() {
                if !n.options.as_ref().is_some_and(|o| o.map_entry()) {
                    message_paths(
                        n,
                        child(MESSAGE_NESTED, i),
                        format!("{name}.{}", n.name()),
                        out,
                    );
                }
            }
            for (i, e) in m.enum_type.iter().enumerate() {
                enum_paths(
                    e,
                    child(MESSAGE_ENUM, i),
                    format!("{name}.{}", e.name()),
                    out,
                );
            }
            out.push((path, name));
        }

        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let mut undocumented = Vec::new();
        for file in fds.file.iter().filter(|f| f.package() == "aios.v1") {
            let info = file
                .source_code_info
                .as_ref()
                .expect("protox keeps source info");
            let documented: HashSet<&[i32]> = info
                .location
                .iter()
                .filter(|l| {
                    !l.leading_comments().trim().is_empty()
                        || !l.trailing_comments().trim().is_empty()
                })
                .map(|l| l.path.as_slice())
                .collect();
            let mut elements = Vec::new();
            for (i, m) in file.message_type.iter().enumerate() {
                message_paths(
                    m,
                    vec![FILE_MESSAGE, i as i32],
                    m.name().to_string(),
                    &mut elements,
                );
            }
            for (i, e) in file.enum_type.iter().enumerate() {
                enum_paths(
                    e,
                    vec![FILE_ENUM, i as i32],
                    e.name().to_string(),
                    &mut elements,
                );
            }
            for (i, s) in file.service.iter().enumerate() {
                for (j, m) in s.method.iter().enumerate() {
                    elements.push((
                        vec![FILE_SERVICE, i as i32, SERVICE_METHOD, j as i32],
                        format!("{}.{}", s.name(), m.name()),
                    ));
                }
                elements.push((vec![FILE_SERVICE, i as i32], s.name().to_string()));
            }
            assert!(
                elements.len() > 10,
                "{} declares almost nothing",
                file.name()
            );
            undocumented.extend(
                elements
                    .into_iter()
                    .filter(|(path, _)| !documented.contains(path.as_slice()))
                    .map(|(_, name)| format!("{}: {name}", file.name())),
            );
        }
        assert!(
            undocumented.is_empty(),
            "undocumented:\n{}",
            undocumented.join("\n")
        );
    }
}
