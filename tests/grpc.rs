//! `grpc` health checks against a real gRPC server (Python `grpcio` with the standard
//! health service from `grpcio-health-checking`): SERVING passes; NOT_SERVING, an
//! unknown service name, a server that is down and one that accepts but never answers
//! each keep the service `starting` with the reason in `last_error`.

use crate::util::*;
use serde_json::json;
use std::process::Command;

/// The standard health service on 127.0.0.1:$PORT: "" and "up" SERVING, "down"
/// NOT_SERVING, anything else unknown (NOT_FOUND).
const SERVER: &str = r#"
import os
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
h = health.HealthServicer()
h.set("", health_pb2.HealthCheckResponse.SERVING)
h.set("up", health_pb2.HealthCheckResponse.SERVING)
h.set("down", health_pb2.HealthCheckResponse.NOT_SERVING)
health_pb2_grpc.add_HealthServicer_to_server(h, server)
server.add_insecure_port("127.0.0.1:" + os.environ["PORT"])
server.start()
server.wait_for_termination()
"#;

/// A listener on $PORT that accepts connections and never says a word.
const MUTE: &str = r#"
import os, socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"])))
s.listen(16)
held = []
while True:
    held.append(s.accept()[0])
"#;

fn has_grpc() -> bool {
    Command::new("python3")
        .args(["-c", "import grpc, grpc_health.v1.health"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether python3 has grpcio and grpcio-health-checking (never installed here: a
/// missing one skips the test, or fails it where packages are required).
fn grpc_available() -> bool {
    let ok = has_grpc();
    if !ok {
        crate::util::packages::missing(
            "python3 lacks grpcio or grpcio-health-checking: pip install grpcio grpcio-health-checking",
        );
    }
    ok
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn grpc_health_checks_against_a_real_server() {
    if !grpc_available() {
        return;
    }
    let sb = Sandbox::new();
    let server = sb.path("server.py");
    std::fs::write(&server, SERVER).unwrap();
    let mute = sb.path("mute.py");
    std::fs::write(&mute, MUTE).unwrap();
    let (port, mute_port, down_port) = (free_port(), free_port(), free_port());
    sb.service("grpcd", &format!("exec python3 {}", server.display()));
    sb.service("mute", &format!("exec python3 {}", mute.display()));
    for name in ["up", "notserving", "unknown", "down", "hung"] {
        sb.service(name, "exec sleep 1000");
    }
    let check = |port: u16, service: &str| {
        json!({"type": "grpc", "address": format!("127.0.0.1:{port}"),
               "grpc_service": service, "interval_ms": 200, "timeout_ms": 500})
    };
    sb.config(
        json!({}),
        json!({
            "grpcd": {"environment": {"PORT": port.to_string()}, "health_check": check(port, "")},
            "mute": {"environment": {"PORT": mute_port.to_string()}},
            "up": {"health_check": check(port, "up")},
            "notserving": {"health_check": check(port, "down")},
            "unknown": {"health_check": check(port, "nope")},
            "down": {"health_check": check(down_port, "")},
            "hung": {"health_check": check(mute_port, "")},
        }),
    );
    let _d = Daemon::start(&sb, &[]);
    sb.wait_running("grpcd", None);
    sb.wait_running("up", None);
    let reason = |name: &str, part: &str| {
        let mut last = serde_json::Value::Null;
        let ok = wait_until(DEADLINE, || {
            last = sb.service_status(name);
            last["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(part))
        });
        assert!(ok, "{name}: no `{part}` in last_error: {last}");
        assert_eq!(last["state"], "starting", "{name}: {last}");
    };
    reason("notserving", "status NOT_SERVING");
    reason("unknown", "grpc-status 5 (NOT_FOUND)");
    reason("down", "connect");
    reason("hung", "timed out");
}
