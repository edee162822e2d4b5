//! Tasks run as the submitter's local account on a root agent: its uid,
//! environment and working directory; output files opened with its
//! permissions; an identity without a local account refused by name.

mod common;

use common::{bin, stderr, stdout};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const USER: &str = "lnchtest";

struct Procs(Vec<std::process::Child>);
impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn ensure_user() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".into());
    }
    if nodeagent::users::lookup(USER)?.is_some() {
        return Ok(());
    }
    let out = Command::new("useradd")
        .args(["--no-create-home", "--shell", "/bin/sh", USER])
        .output()
        .map_err(|e| format!("useradd: {e}"))?;
    if !out.status.success() && nodeagent::users::lookup(USER)?.is_none() {
        return Err(format!("useradd failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

#[test]
fn tasks_run_as_the_submitting_user() {
    if let Err(why) = ensure_user() {
        println!("SKIP: needs root and useradd to create a local test user: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    Command::new("chmod").arg("755").arg(tmp.path()).status().unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let state = tmp.path().join("controller");
    let mut procs = Procs(vec![Command::new(bin())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--state-dir"])
        .arg(&state)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()]);
    let admin = state.join("admin.cred");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !admin.exists() {
        assert!(Instant::now() < deadline, "controller did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let as_ = |cred: &std::path::Path, args: &[&str]| {
        Command::new(bin())
            .args(args)
            .env("LAUNCHER_CRED", cred)
            .env("LAUNCHER_CONNECT_TIMEOUT", "20")
            .output()
            .unwrap()
    };
    let token = stdout(&as_(&admin, &["token", "create"])).trim().to_string();
    // A root agent with the default policy: tasks run as the submitter.
    procs.0.push(
        Command::new(bin())
            .args(["__agent", "--controller", &format!("127.0.0.1:{port}"), "--token", &token, "--name", "n1"])
            .arg("--state-dir")
            .arg(tmp.path().join("agent"))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let cred = tmp.path().join("user.cred");
    let out = as_(&admin, &["user", "add", USER, "--out", cred.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Identity, environment, working directory.
    let out = as_(&cred, &["run", "-D", "/tmp", "--", "sh", "-c", "id -un; id -u; echo $USER $LOGNAME; pwd"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let acct = nodeagent::users::lookup(USER).unwrap().unwrap();
    let lines: Vec<String> = stdout(&out).lines().map(String::from).collect();
    assert_eq!(lines, vec![USER.to_string(), acct.uid.to_string(), format!("{USER} {USER}"), "/tmp".to_string()]);

    // A script job: the agent's copy of the script is runnable by the user.
    let script = tmp.path().join("job.sh");
    std::fs::write(&script, "#!/bin/sh\nid -un\n").unwrap();
    let out = as_(&cred, &["run", "-D", "/tmp", script.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), USER);

    // Output files are opened with the user's permissions, not root's.
    let denied = "/root/launcher-identity-test.out";
    let out = as_(&cred, &["run", "-D", "/tmp", "--output", denied, "--", "true"]);
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("cannot open output file {denied}")), "{}", stderr(&out));
    assert!(!std::path::Path::new(denied).exists());
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    Command::new("chmod").arg("777").arg(&shared).status().unwrap();
    let pattern = shared.join("out-%j.txt");
    let out = as_(
        &cred,
        &["submit", "--parsable", "-D", "/tmp", "--output", pattern.to_str().unwrap(), "--", "echo", "hello"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let written = shared.join(format!("out-{}.txt", stdout(&out).trim()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&written).unwrap_or_default() != "hello\n" {
        assert!(Instant::now() < deadline, "output file never written");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::metadata(&written).unwrap().uid(), acct.uid, "output file owned by the user");

    // The admin credential has no local account on this node: refused by name.
    let out = as_(&admin, &["run", "--", "true"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(stderr(&out).contains("no local account 'admin' on node n1"), "{}", stderr(&out));
}
