//! Running the built `aiosctl` against a control plane, and reading its
//! `-o json` output back through the contract's descriptors, as a script
//! consuming it would.

#![allow(clippy::expect_used, clippy::panic)] // test harness: a failure should stop the test loudly

use std::process::Command;

use prost_reflect::{DescriptorPool, DynamicMessage};

use crate::bin;

/// What `aiosctl` printed, and how it exited.
#[derive(Debug)]
pub struct Run {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `aiosctl --endpoint url --api-key key ARGS` (ignoring any
/// `AIOS_API_KEY` of the environment).
pub fn aiosctl(url: &str, key: &str, args: &[&str]) -> Run {
    let output = Command::new(bin("aiosctl").expect("aiosctl is built"))
        .args(["--endpoint", url, "--api-key", key])
        .args(args)
        .env_remove("AIOS_API_KEY")
        .output()
        .expect("run aiosctl");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Reads `value` as the message `full_name` (e.g. `aios.v1.Trace`) in the
/// proto3 JSON mapping; panics, naming the message, when it is not one.
pub fn from_proto_json<T: prost::Message + Default>(
    value: &serde_json::Value,
    full_name: &str,
) -> T {
    let pool = DescriptorPool::decode(aios_proto::FILE_DESCRIPTOR_SET).expect("the descriptor set");
    let descriptor = pool
        .get_message_by_name(full_name)
        .unwrap_or_else(|| panic!("no message {full_name} in the contract"));
    DynamicMessage::deserialize(descriptor, value)
        .unwrap_or_else(|e| panic!("not an {full_name} in the proto3 JSON mapping: {e}\n{value}"))
        .transcode_to()
        .expect("the generated type matches its descriptor")
}
