//! The client against the node agent's real PMI-1 server engine (no MPI):
//! three ranks on one node put values like Open MPI's (1 kB, with spaces),
//! fence, and read each other's.

use launcher_pmi::Client;
use nodeagent::pmi::{Effect, Engine, JobInfo};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread;

type Conns = Arc<Mutex<Vec<(u32, UnixStream)>>>;

fn apply(engine: &Mutex<Engine>, conns: &Conns, mut fx: Vec<Effect>) {
    while !fx.is_empty() {
        let mut next = Vec::new();
        for e in fx {
            match e {
                Effect::Reply { rank, line } => {
                    let mut c = conns.lock().unwrap();
                    let s = &mut c.iter_mut().find(|(r, _)| *r == rank).unwrap().1;
                    s.write_all(line.as_bytes()).unwrap();
                }
                // One node: the fence's merged delta is this node's own.
                Effect::FenceReady { puts } => next.extend(engine.lock().unwrap().on_fence_done(puts).unwrap()),
                Effect::Finalized { .. } => {}
                other => panic!("unexpected effect {other:?}"),
            }
        }
        fx = next;
    }
}

#[test]
fn three_ranks_put_fence_get() {
    let n = 3u32;
    let engine = Arc::new(Mutex::new(
        Engine::new(JobInfo {
            kvsname: "kvs_7_0".into(),
            size: n,
            universe_size: n,
            appnum: 0,
            tasks_per_node: vec![n],
            local_ranks: (0..n).collect(),
        })
        .unwrap(),
    ));
    let conns: Conns = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for rank in 0..n {
        let (ours, theirs) = UnixStream::pair().unwrap();
        conns.lock().unwrap().push((rank, ours.try_clone().unwrap()));
        let (engine, conns) = (engine.clone(), conns.clone());
        thread::spawn(move || {
            for line in BufReader::new(ours).lines() {
                let Ok(line) = line else { break };
                let fx = engine.lock().unwrap().on_line(rank, &line);
                apply(&engine, &conns, fx);
            }
        });
        clients.push(thread::spawn(move || {
            let mut c = Client::new(theirs, rank as i32, n as i32, false);
            c.init().unwrap();
            let kvs = c.kvsname().unwrap();
            assert_eq!(kvs, "kvs_7_0");
            assert_eq!(c.maxes().unwrap().value, 1024);
            assert_eq!(c.clique().unwrap(), vec![0, 1, 2]);
            assert_eq!(c.universe_size().unwrap(), 3);
            // Open MPI-style value: base64 padded with spaces, ending in '-'.
            let value = format!("{}{rank}  x -", "A".repeat(1000));
            c.put(&kvs, &format!("7-{rank}-key0"), &value).unwrap();
            c.barrier().unwrap();
            for peer in 0..n {
                let got = c.get(&kvs, &format!("7-{peer}-key0")).unwrap();
                assert_eq!(got, Some(format!("{}{peer}  x -", "A".repeat(1000))));
            }
            assert_eq!(c.get(&kvs, "7-9-key0").unwrap(), None);
            c.barrier().unwrap();
            c.finalize().unwrap();
        }));
    }
    for c in clients {
        c.join().unwrap();
    }
}
