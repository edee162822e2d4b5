//! Bad input gets a clear error naming the problem, and the controller keeps
//! serving: CLI usage errors, unreadable scripts, corrupted or foreign
//! credentials, missing certificates, wrong protocol versions, garbage frames.

mod common;

use common::{stderr, Cluster};
use launcher_proto::{HandshakeError, Hello, HelloReply, Request, Response, Role};
use nodeagent::wire::{self, Credential, FramedStream};
use std::time::Duration;

fn assert_fails(c: &Cluster, args: &[&str], code: i32, needle: &str) {
    let out = c.cli(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: stderr {err:?} should mention {needle:?}");
}

#[test]
fn cli_usage_errors_name_the_problem() {
    let c = Cluster::start(1, 2, false);
    assert_fails(&c, &["submit", "--bogus", "--", "true"], 2, "--bogus");
    assert_fails(&c, &["submit", "-N", "-3", "--", "true"], 2, "-N/--nodes -3");
    assert_fails(&c, &["submit", "-N", "100000", "--", "true"], 2, "more than the 10000 nodes");
    assert_fails(&c, &["submit", "-N", "99999999999", "--", "true"], 2, "absurdly large");
    assert_fails(&c, &["submit", "-N", "3", "-n", "2", "--", "true"], 2, "-n/--ntasks 2 is smaller than -N/--nodes 3");
    assert_fails(&c, &["submit", "/nonexistent/job.sh"], 2, "cannot read script /nonexistent/job.sh");
    assert_fails(&c, &["submit", "--time", "soon", "--", "true"], 2, "--time \"soon\"");
    assert_fails(&c, &["submit", "--queue", "gpu", "--", "true"], 2, "unknown queue 'gpu'");
    assert_fails(&c, &["show", "abc"], 2, "\"abc\" is not a job id");
    assert_fails(&c, &["show", "424242"], 2, "no job 424242");
    // Nothing was accepted by any of that.
    assert_eq!(c.json(&["queue", "--all", "--json"]).as_array().unwrap().len(), 0);
}

#[test]
fn unrunnable_program_fails_the_job_with_a_clear_reason() {
    let c = Cluster::start(1, 2, false);
    let out = c.cli(&["run", "--", "/no/such/program"]);
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot start /no/such/program"), "{}", stderr(&out));
}

#[test]
fn bad_credentials_are_refused_with_exit_3() {
    let c = Cluster::start(1, 2, false);
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.cred");
    std::fs::write(&garbage, b"\x00\x01not json").unwrap();
    let out = c.cli_env(&["queue"], &[("LAUNCHER_CRED", garbage.to_str().unwrap())]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("corrupted"), "{}", stderr(&out));

    // A credential from another cluster, pointed at ours.
    let other = dir.path().join("other");
    let init = std::process::Command::new(common::bin())
        .args(["serve", "--init", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", stderr(&init));
    let ours = Credential::load(&c.cred).unwrap();
    let mut foreign = Credential::load(&other.join("admin.cred")).unwrap();
    foreign.controller = ours.controller.clone();
    let fpath = dir.path().join("foreign.cred");
    foreign.save(&fpath).unwrap();
    let out = c.cli_env(&["queue"], &[("LAUNCHER_CRED", fpath.to_str().unwrap()), ("LAUNCHER_CONNECT_TIMEOUT", "1")]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("certificate"), "{}", stderr(&out));

    // Nobody listening: exit 3, saying so.
    let mut nowhere = ours.clone();
    nowhere.controller = "127.0.0.1:9".into();
    let npath = dir.path().join("nowhere.cred");
    nowhere.save(&npath).unwrap();
    let out = c.cli_env(&["queue"], &[("LAUNCHER_CRED", npath.to_str().unwrap()), ("LAUNCHER_CONNECT_TIMEOUT", "1")]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("no answer from the controller"), "{}", stderr(&out));
    // And the controller still serves.
    assert!(c.cli(&["queue"]).status.success());
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn protocol_level_abuse_is_refused_and_the_controller_keeps_serving() {
    let c = Cluster::start(1, 2, false);
    let cred = Credential::load(&c.cred).unwrap();
    let addr = wire::resolve(&cred.controller).unwrap();
    rt().block_on(async {
        // 1. Wrong protocol version: refused, naming both versions.
        let ep = wire::client_endpoint(wire::client_config(&cred.ca, &cred.cert, &cred.key).unwrap()).unwrap();
        let conn = ep.connect(addr, launcher_proto::SERVER_NAME).unwrap().await.unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        let mut s = FramedStream::new(send, recv);
        s.send(&Hello { version: 99, role: Role::Client }).await.unwrap();
        let reply: HelloReply = s.recv().await.unwrap().unwrap();
        const OURS: u32 = launcher_proto::PROTOCOL_VERSION;
        let HelloReply::Rejected(e @ HandshakeError::VersionMismatch { ours: OURS, theirs: 99 }) = reply else {
            panic!("expected a version mismatch, got {reply:?}")
        };
        let text = e.to_string();
        assert!(text.contains(&format!("version {OURS}")) && text.contains("version 99"), "{text}");

        // 2. A garbage handshake frame.
        let (send, recv) = ep.connect(addr, launcher_proto::SERVER_NAME).unwrap().await.unwrap().open_bi().await.unwrap();
        let mut s = FramedStream::new(send, recv);
        s.send.write_all(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]).await.unwrap();
        let reply: HelloReply = s.recv().await.unwrap().unwrap();
        assert!(matches!(&reply, HelloReply::Rejected(HandshakeError::Unauthenticated(m)) if m.contains("malformed handshake")), "{reply:?}");

        // 3. A garbage request frame after a good handshake: an error on that stream only.
        let (conn, _hs, _) = wire::connect(&ep, addr, Role::Client, Duration::from_secs(5)).await.unwrap();
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&[0, 0, 0, 3, 0xee, 0xee, 0xee]).await.unwrap();
        send.finish().unwrap();
        let mut r = wire::FramedRecv::new(recv);
        let resp: Response = r.recv().await.unwrap().unwrap();
        assert!(matches!(&resp, Response::Error(e) if e.message.contains("malformed request")), "{resp:?}");
        // An absurd frame length.
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&[0xff, 0xff, 0xff, 0xff, 1]).await.unwrap();
        send.finish().unwrap();
        let resp: Response = wire::FramedRecv::new(recv).recv().await.unwrap().unwrap();
        assert!(matches!(&resp, Response::Error(e) if e.message.contains("exceeds")), "{resp:?}");
        // The same connection still works for a real request.
        let (send, recv) = conn.open_bi().await.unwrap();
        let mut s = FramedStream::new(send, recv);
        s.send(&Request::Nodes).await.unwrap();
        s.send.finish().unwrap();
        assert!(matches!(s.recv::<Response>().await.unwrap().unwrap(), Response::Nodes(n) if n.len() == 1));

        // 4. No client certificate, claiming to be a client: refused by name.
        let ca_fp = wire::fingerprint(&wire::certs_from_pem(&cred.ca).unwrap()[0]);
        let token: wire::JoinToken = format!("lt1.{}.00", wire::hex(&ca_fp)).parse().unwrap();
        let anon = wire::client_endpoint(wire::join_client_config(&token).unwrap()).unwrap();
        let err = wire::connect(&anon, addr, Role::Client, Duration::from_secs(5)).await.err().expect("refused");
        assert!(format!("{err:#}").contains("no client certificate"), "{err:#}");
        // ... and joining with a made-up token is refused too.
        let (_c, mut s, _) = wire::connect(&anon, addr, Role::Join, Duration::from_secs(5)).await.unwrap();
        s.send(&launcher_proto::JoinMsg { token: token.raw.clone(), name: "evil".into(), public_key: vec![4; 65] }).await.unwrap();
        let reply: launcher_proto::JoinReply = s.recv().await.unwrap().unwrap();
        assert!(matches!(&reply, launcher_proto::JoinReply::Rejected(m) if m.contains("unknown join token")), "{reply:?}");
    });
    // Through all of that, the controller kept serving.
    assert!(c.cli(&["nodes"]).status.success());
    assert_eq!(c.json(&["nodes", "--json"]).as_array().unwrap().len(), 1);
}
