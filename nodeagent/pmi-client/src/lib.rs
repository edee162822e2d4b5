//! `liblauncher_pmi.so`: a PMI-1 client library speaking the "simple" wire
//! protocol to the launcher's node agent.
//!
//! MPICH has this client built in. Open MPI 4.1 (Debian's build has no `s1`/`s2`
//! components) instead loads a PMI-1 library through its `pmix/flux`
//! component: when `FLUX_JOB_ID` is set, it `dlopen`s `$FLUX_PMI_LIBRARY_PATH`
//! and calls the PMI-1 C API (`PMI_Init`, `PMI_KVS_Put`, `PMI_Barrier`, ...).
//! The agent sets both variables for every rank it serves PMI to, pointing at
//! this library (see docs/mpi.md and shared/research/mpi-wiring.md §7.1).
//!
//! How the connection is found, as in MPICH's client:
//! * `PMI_FD=<fd>` (+ `PMI_RANK`, `PMI_SIZE`): an inherited socket to the agent;
//! * else `PMI_PORT=<host>:<port>`, with `PMI_ID=<rank>` (the `initack`
//!   handshake hands out rank and size) or with `PMI_RANK`/`PMI_SIZE`.
//!
//! `LAUNCHER_PMI_DEBUG=1` writes every line sent and received to stderr.
//!
//! The C functions never unwind: errors become PMI return codes.

mod client;
mod ffi;

pub use client::{Client, Conn, PmiError};
