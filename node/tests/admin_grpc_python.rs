//! The admin API from grpc-python: a single-node Replica serves the admin API on a Unix socket
//! (`serve_admin`, so `serve_on_socket`), and grpc-python (the grpcio that py-spiffe's venv holds,
//! `SIGIL_PYSPIFFE_PYTHON`) calls it with raw-bytes serializers. grpc-python names a Unix
//! socket's path as the HTTP/2 `:authority`, which the HTTP/2 server refuses unless the
//! connection goes through the `:authority` adapter. The answers must be what the typed Rust
//! client gets.
#![allow(clippy::disallowed_methods)] // tests run their own runtime and wait on wall-clock deadlines

#[path = "common/admin_node.rs"]
mod admin_node;
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use admin_node::AdminNode;
use common::pyspiffe_python;
use node::rt::admin;
use raft::replica::ReplicaConfig;
use wire::admin as pb;

const TD: &str = "python.example.org";
/// Bound on every wait.
const DEADLINE: Duration = Duration::from_secs(30);

/// Calls `method` of `sigil.admin.v1.Admin` on `socket` from grpc-python with `request` (an
/// encoded message) and raw-bytes serializers: `Ok(response bytes)` or `Err(status code name
/// and details)`.
fn python_call(
    python: &Path,
    socket: &Path,
    method: &str,
    request: &[u8],
) -> Result<Vec<u8>, String> {
    const SCRIPT: &str = r#"
import sys, grpc
socket, method, request = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
with grpc.insecure_channel("unix:" + socket) as channel:
    call = channel.unary_unary(
        "/sigil.admin.v1.Admin/" + method,
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    try:
        print("ok " + call(request, timeout=20).hex())
    except grpc.RpcError as e:
        print("error %s %s" % (e.code().name, e.details()))
"#;
    let out = Command::new(python)
        .args(["-c", SCRIPT])
        .arg(socket)
        .arg(method)
        .arg(hex(request))
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.trim();
    if let Some(h) = line.strip_prefix("ok ") {
        Ok(unhex(h))
    } else {
        Err(line.strip_prefix("error ").unwrap_or(line).to_owned())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A protobuf field's value: varint or length-delimited (all the messages here use).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Varint(u64),
    Bytes(Vec<u8>),
}

fn varint(bytes: &[u8], at: &mut usize) -> u64 {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = bytes[*at];
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return value;
        }
    }
    panic!("varint too long")
}

/// The top-level fields of an encoded message, by number (last value wins, as in proto3).
fn fields(bytes: &[u8]) -> BTreeMap<u64, Field> {
    let mut out = BTreeMap::new();
    let mut at = 0;
    while at < bytes.len() {
        let key = varint(bytes, &mut at);
        let value = match key & 7 {
            0 => Field::Varint(varint(bytes, &mut at)),
            2 => {
                let len = usize::try_from(varint(bytes, &mut at)).expect("len");
                at += len;
                Field::Bytes(bytes[at - len..at].to_vec())
            }
            other => panic!("wire type {other} in an admin message"),
        };
        out.insert(key >> 3, value);
    }
    out
}

fn string(fields: &BTreeMap<u64, Field>, n: u64) -> String {
    match fields.get(&n) {
        None => String::new(),
        Some(Field::Bytes(b)) => String::from_utf8(b.clone()).expect("utf-8"),
        Some(other) => panic!("field {n}: {other:?}"),
    }
}

fn number(fields: &BTreeMap<u64, Field>, n: u64) -> Option<u64> {
    match fields.get(&n) {
        None => None,
        Some(Field::Varint(v)) => Some(*v),
        Some(other) => panic!("field {n}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_python_calls_the_admin_api() {
    let Some(python) = pyspiffe_python() else {
        eprintln!(
            "skipped: SIGIL_PYSPIFFE_PYTHON is not set (scripts/test.sh installs py-spiffe, with grpcio, into a venv and sets it)"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("admin.sock");
    let AdminNode {
        replica,
        stop,
        server,
        ..
    } = AdminNode::start(
        socket.clone(),
        TD,
        &[1],
        ReplicaConfig::default().write_timeout_ms,
        None,
        DEADLINE,
    )
    .await;

    // What the typed Rust client (prost) gets.
    let mut client = admin::connect(&socket).await.expect("connect");
    let typed = client
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .expect("ClusterStatus")
        .into_inner();
    assert_eq!(typed.trust_domain, TD);

    // grpc-python on the same socket: a read-only call answers the same values.
    let py = {
        let (python, socket) = (python.clone(), socket.clone());
        tokio::task::spawn_blocking(move || python_call(&python, &socket, "ClusterStatus", &[]))
            .await
            .expect("python call")
    };
    let bytes = py.unwrap_or_else(|e| panic!("grpc-python refused: {e}"));
    let got = fields(&bytes);
    assert_eq!(string(&got, 1), typed.trust_domain);
    assert_eq!(number(&got, 2).unwrap_or(0), typed.node_id);
    assert_eq!(string(&got, 3), typed.node_state);
    assert_eq!(number(&got, 4), typed.leader_id);
    assert_eq!(number(&got, 5).unwrap_or(0), typed.term);
    assert_eq!(number(&got, 2), Some(1), "node 1 answered");

    // An error status reaches grpc-python as such: GetEntry of an unknown ID (field 1 = "nope").
    let py = {
        let (python, socket) = (python.clone(), socket.clone());
        tokio::task::spawn_blocking(move || {
            python_call(&python, &socket, "GetEntry", b"\x0a\x04nope")
        })
        .await
        .expect("python call")
    };
    let err = py.expect_err("no such entry");
    assert!(err.starts_with("NOT_FOUND"), "{err}");

    drop(client);
    let _ = stop.expect("running").send(());
    tokio::time::timeout(DEADLINE, server)
        .await
        .expect("admin server stops in time")
        .expect("task")
        .expect("served");
    assert!(!socket.exists(), "socket removed");
    let _ = tokio::time::timeout(Duration::from_secs(5), replica.shutdown()).await;
}
