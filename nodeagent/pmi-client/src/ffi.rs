//! The PMI-1 C API (`pmi.h`), as Open MPI 4.1's `pmix/flux` component calls it
//! through `dlsym`: `PMI_Init`, `PMI_Initialized`, `PMI_Finalize`,
//! `PMI_Get_{size,rank,universe_size,appnum}`, `PMI_Barrier`, `PMI_Abort`,
//! `PMI_KVS_Get_my_name`, `PMI_KVS_Get_{name,key,value}_length_max`,
//! `PMI_KVS_{Put,Commit,Get}`, `PMI_Get_clique_{size,ranks}`, plus `PMI_Get_id`
//! and `PMI_Get_id_length_max`.
//!
//! One process-wide connection behind a mutex. Every function returns a PMI
//! code and writes a one-line reason to stderr when it fails.

use crate::client::{Client, Conn, PmiError};
use std::ffi::{c_char, c_int, CStr};
use std::sync::{Mutex, MutexGuard};

const PMI_SUCCESS: c_int = 0;
const PMI_FAIL: c_int = -1;
const PMI_ERR_INIT: c_int = 1;
const PMI_ERR_INVALID_ARG: c_int = 3;
const PMI_ERR_INVALID_LENGTH: c_int = 8;

static CLIENT: Mutex<Option<Client<Conn>>> = Mutex::new(None);

fn lock() -> MutexGuard<'static, Option<Client<Conn>>> {
    CLIENT.lock().unwrap_or_else(|e| e.into_inner())
}

fn report(func: &str, e: &PmiError) {
    eprintln!("liblauncher_pmi: {func}: {e}");
}

/// Runs `f` on the connected client; PMI_ERR_INIT before `PMI_Init`.
fn with_client(func: &str, f: impl FnOnce(&mut Client<Conn>) -> Result<c_int, PmiError>) -> c_int {
    let mut guard = lock();
    let Some(client) = guard.as_mut() else {
        eprintln!("liblauncher_pmi: {func} called before PMI_Init");
        return PMI_ERR_INIT;
    };
    match f(client) {
        Ok(rc) => rc,
        Err(e) => {
            report(func, &e);
            PMI_FAIL
        }
    }
}

/// Stores `v` through `out` unless it is null.
///
/// # Safety
/// `out` is null or valid for one write.
unsafe fn store(out: *mut c_int, v: c_int) -> c_int {
    if out.is_null() {
        return PMI_ERR_INVALID_ARG;
    }
    // SAFETY: non-null, and the caller promises it is writable.
    unsafe { *out = v };
    PMI_SUCCESS
}

/// Copies `s` and a NUL into `buf` of `len` bytes.
///
/// # Safety
/// `buf` is null or valid for `len` bytes of writes.
unsafe fn copy_out(s: &str, buf: *mut c_char, len: c_int) -> c_int {
    if buf.is_null() || len < 0 {
        return PMI_ERR_INVALID_ARG;
    }
    if s.len() + 1 > len as usize {
        return PMI_ERR_INVALID_LENGTH;
    }
    // SAFETY: s.len() + 1 <= len bytes of `buf` are writable (caller) and do not overlap `s`.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), s.len());
        *buf.add(s.len()) = 0;
    }
    PMI_SUCCESS
}

/// Reads a C string argument.
///
/// # Safety
/// `p` is null or a NUL-terminated string.
unsafe fn arg<'a>(p: *const c_char) -> Option<&'a str> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated (caller).
    unsafe { CStr::from_ptr(p) }.to_str().ok()
}

/// Connects to the PMI server named by `PMI_FD` or `PMI_PORT`.
///
/// # Safety
/// `spawned` is null or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn PMI_Init(spawned: *mut c_int) -> c_int {
    let mut guard = lock();
    if guard.is_none() {
        match Client::from_env() {
            Ok(c) => *guard = Some(c),
            Err(e) => {
                report("PMI_Init", &e);
                return PMI_FAIL;
            }
        }
    }
    if !spawned.is_null() {
        let s = std::env::var("PMI_SPAWNED").is_ok_and(|v| v.trim() == "1");
        // SAFETY: non-null, writable (caller).
        unsafe { *spawned = c_int::from(s) };
    }
    PMI_SUCCESS
}

/// Whether `PMI_Init` succeeded.
///
/// # Safety
/// `initialized` is null or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn PMI_Initialized(initialized: *mut c_int) -> c_int {
    let yes = lock().is_some();
    // SAFETY: forwarded contract.
    unsafe { store(initialized, c_int::from(yes)) }
}

/// Says goodbye to the server and closes the connection.
#[no_mangle]
pub extern "C" fn PMI_Finalize() -> c_int {
    let mut guard = lock();
    let Some(mut client) = guard.take() else { return PMI_SUCCESS };
    match client.finalize() {
        Ok(()) => PMI_SUCCESS,
        Err(e) => {
            report("PMI_Finalize", &e);
            PMI_FAIL
        }
    }
}

/// The number of processes in the job.
///
/// # Safety
/// `size` is null or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn PMI_Get_size(size: *mut c_int) -> c_int {
    // SAFETY: forwarded contract.
    with_client("PMI_Get_size", |c| Ok(unsafe { store(size, c.size()) }))
}

/// This process's rank.
///
/// # Safety
/// `rank` is null or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn PMI_Get_rank(rank: *mut c_int) -> c_int {
    // SAFETY: forwarded contract.
    with_client("PMI_Get_rank", |c| Ok(unsafe { store(rank, c.rank()) }))
}

/// The universe size.
///
/// # Safety
/// `size` is null or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn PMI_Get_universe_size(size: *mut c_int) -> c_int {
    // SAFETY: forwarded contract.
    with_client("PMI_Get_universe_size", |c| c.universe_size().map(|n| unsafe { store(size, n) }))
}

/// The application number (0: one program per job).
///
/// # Safety
/// `appnum` is null or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn PMI_Get_appnum(appnum: *mut c_int) -> c_int {
    // SAFETY: forwarded contract.
    with_client("PMI_Get_appnum", |c| c.appnum().map(|n| unsafe { store(appnum, n) }))
}

/// Waits until every rank of the job is in the barrier; puts made before it
/// are visible to gets after it, on every node.
#[no_mangle]
pub extern "C" fn PMI_Barrier() -> c_int {
    with_client("PMI_Barrier", |c| c.barrier().map(|()| PMI_SUCCESS))
}

/// Asks the launcher to end the whole job with `exit_code`. Does not return.
///
/// # Safety
/// `error_msg` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn PMI_Abort(exit_code: c_int, error_msg: *const c_char) -> c_int {
    // SAFETY: forwarded contract.
    let msg = unsafe { arg(error_msg) }.unwrap_or("").to_string();
    let mut guard = lock();
    if let Some(c) = guard.as_mut() {
        // Blocks until the agent kills the job; returns if the connection ends first.
        if let Err(e) = c.abort(exit_code, &msg) {
            report("PMI_Abort", &e);
        }
    } else {
        eprintln!("liblauncher_pmi: PMI_Abort({exit_code}) before PMI_Init: {msg}");
    }
    std::process::exit(exit_code)
}

/// The job's KVS name.
///
/// # Safety
/// `kvsname` is null or valid for `length` bytes.
#[no_mangle]
pub unsafe extern "C" fn PMI_KVS_Get_my_name(kvsname: *mut c_char, length: c_int) -> c_int {
    // SAFETY: forwarded contract.
    with_client("PMI_KVS_Get_my_name", |c| c.kvsname().map(|k| unsafe { copy_out(&k, kvsname, length) }))
}

/// The job's id: the KVS name, as in MPICH's client.
///
/// # Safety
/// `id` is null or valid for `length` bytes.
#[no_mangle]
pub unsafe extern "C" fn PMI_Get_id(id: *mut c_char, length: c_int) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { PMI_KVS_Get_my_name(id, length) }
}

/// Longest job id.
///
/// # Safety
/// `length` is null or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn PMI_Get_id_length_max(length: *mut c_int) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { PMI_KVS_Get_name_length_max(length) }
}

/// Longest KVS name.
///
/// # Safety
/// `length` is null or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn PMI_KVS_Get_name_length_max(length: *mut c_int) -> c_int {
    // SAFETY: forwarded contract.
    with_client("PMI_KVS_Get_name_length_max", |c| c.maxes().map(|m| unsafe { store(length, m.kvsname) }))
}

/// Longest key.
///
/// # Safety
/// `length` is null or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn PMI_KVS_Get_key_length_max(length: *mut c_int) -> c_int {
    // SAFETY: forwarded contract.
    with_client("PMI_KVS_Get_key_length_max", |c| c.maxes().map(|m| unsafe { store(length, m.key) }))
}

/// Longest value.
///
/// # Safety
/// `length` is null or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn PMI_KVS_Get_value_length_max(length: *mut c_int) -> c_int {
    // SAFETY: forwarded contract.
    with_client("PMI_KVS_Get_value_length_max", |c| c.maxes().map(|m| unsafe { store(length, m.value) }))
}

/// Stores `key` = `value`; other ranks see it after the next `PMI_Barrier`.
///
/// # Safety
/// The arguments are null or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn PMI_KVS_Put(kvsname: *const c_char, key: *const c_char, value: *const c_char) -> c_int {
    // SAFETY: forwarded contract.
    let (Some(kvs), Some(key), Some(value)) = (unsafe { arg(kvsname) }, unsafe { arg(key) }, unsafe { arg(value) })
    else {
        return PMI_ERR_INVALID_ARG;
    };
    with_client("PMI_KVS_Put", |c| c.put(kvs, key, value).map(|()| PMI_SUCCESS))
}

/// Nothing to do: puts are sent at once and published by the barrier.
#[no_mangle]
pub extern "C" fn PMI_KVS_Commit(_kvsname: *const c_char) -> c_int {
    PMI_SUCCESS
}

/// Reads `key` into `value` (`length` bytes); PMI_FAIL when it does not exist.
///
/// # Safety
/// `kvsname` and `key` are null or NUL-terminated; `value` is null or valid for `length` bytes.
#[no_mangle]
pub unsafe extern "C" fn PMI_KVS_Get(
    kvsname: *const c_char,
    key: *const c_char,
    value: *mut c_char,
    length: c_int,
) -> c_int {
    // SAFETY: forwarded contract.
    let (Some(kvs), Some(key)) = (unsafe { arg(kvsname) }, unsafe { arg(key) }) else {
        return PMI_ERR_INVALID_ARG;
    };
    with_client("PMI_KVS_Get", |c| {
        // A missing key is an answer, not an error worth a line on stderr:
        // Open MPI probes for keys speculatively.
        Ok(match c.get(kvs, key)? {
            // SAFETY: forwarded contract.
            Some(v) => unsafe { copy_out(&v, value, length) },
            None => PMI_FAIL,
        })
    })
}

/// How many ranks share this node.
///
/// # Safety
/// `size` is null or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn PMI_Get_clique_size(size: *mut c_int) -> c_int {
    // SAFETY: forwarded contract.
    with_client("PMI_Get_clique_size", |c| c.clique().map(|r| unsafe { store(size, r.len() as c_int) }))
}

/// The ranks sharing this node, in rank order.
///
/// # Safety
/// `ranks` is null or valid for `length` writes.
#[no_mangle]
pub unsafe extern "C" fn PMI_Get_clique_ranks(ranks: *mut c_int, length: c_int) -> c_int {
    with_client("PMI_Get_clique_ranks", |c| {
        let r = c.clique()?;
        if ranks.is_null() || length < 0 {
            return Ok(PMI_ERR_INVALID_ARG);
        }
        if r.len() > length as usize {
            return Ok(PMI_ERR_INVALID_LENGTH);
        }
        // SAFETY: `length` >= r.len() ints are writable (caller).
        unsafe { std::ptr::copy_nonoverlapping(r.as_ptr(), ranks, r.len()) };
        Ok(PMI_SUCCESS)
    })
}
