//! PMI-1 "simple" line format: request parsing and reply formatting.
//!
//! A request is one line of space-separated `key=value` fields, the first of
//! which is `cmd=<name>`. Example: `cmd=put kvsname=kvs_0 key=k value=v`. Two rules
//! differ from a naive split on spaces. Both were learned the hard way (research §2.2):
//!
//! * `value=` (and `message=`, for `abort`) runs to the **end of the line**. Open
//!   MPI's PMI-1 encoding is base64 padded with spaces and ends chunks with `-`,
//!   so a value may contain spaces, `=`, and trailing blanks. Clients always
//!   write it as the last field.
//! * Lines have no length limit below [`MAX_REQUEST_LINE`]. Open MPI puts
//!   1023-byte values, which gives about 1.1 kB lines.
//!
//! Only the `\n` (or `\r\n`) terminator is stripped; nothing else is trimmed.
//! Unknown extra fields are ignored, and a repeated field is an error.
//!
//! `mcmd=spawn` opens MPICH's multi-line spawn request (`MPI_Comm_spawn`). It
//! parses as [`Request::SpawnBlock`]. The engine swallows the body up to `endcmd` and
//! answers `cmd=spawn_result rc=-1` because spawning is not supported.
//!
//! Replies ([`Reply::encode`]) are byte-for-byte the strings hydra sends, and
//! MPICH 4.0.2 accepts them (research §2.2). MPICH reads a reply with
//! `PMIU_readline(fd, buf, 1024)`, which returns at most [`MPICH_MAX_LINE`] bytes
//! including the `\n`. A longer reply line is split in two and derails the
//! client. MPICH never gets near that limit: after `get_maxes` it clamps its own values to
//! [`MPICH_CLAMPED_VALLEN`] bytes.

use std::fmt::Write as _;

use super::PmiError;

/// The PMI version this server speaks.
pub const PMI_VERSION: u32 = 1;
/// The PMI subversion this server speaks (PMI-1.1).
pub const PMI_SUBVERSION: u32 = 1;
/// Advertised `kvsname_max` (hydra's value).
pub const KVSNAME_MAX: usize = 256;
/// Advertised `keylen_max` (hydra's value). Longer keys are rejected.
pub const KEYLEN_MAX: usize = 64;
/// Advertised `vallen_max` (hydra's value). Longer values are rejected.
pub const VALLEN_MAX: usize = 1024;
/// The longest reply line, in bytes **including** the trailing `\n`, that MPICH's
/// `PMIU_readline(fd, buf, PMIU_MAXLINE = 1024)` returns in one piece (one byte goes to the NUL).
pub const MPICH_MAX_LINE: usize = 1023;
/// The `vallen_max` MPICH 4.0.2 actually uses after `get_maxes`:
/// `1024 - kvsname_max - min(keylen_max, 256) - 30` = 674 with our advertised
/// maxima (research §2.4). MPICH never puts a longer value, and a value it `get`s
/// must fit a buffer of this size, NUL included.
pub const MPICH_CLAMPED_VALLEN: usize = 1024 - KVSNAME_MAX - KEYLEN_MAX - 30;
/// Longest request line the engine accepts, terminator excluded. The longest legitimate
/// request is a `put` with a 256-byte kvsname, a 64-byte key and a 1024-byte value (about 1.4 kB).
/// A driver's line reader should cap its buffer at this size too.
pub const MAX_REQUEST_LINE: usize = 4096;

/// Fields whose value runs to the end of the line.
const REST_OF_LINE: [&str; 2] = ["value", "message"];

/// One parsed request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `cmd=init pmi_version=V pmi_subversion=S`.
    Init {
        /// `pmi_version`.
        version: u32,
        /// `pmi_subversion`.
        subversion: u32,
    },
    /// `cmd=initack pmiid=R`: the first line on a `PMI_PORT` connection started with `PMI_ID`.
    InitAck {
        /// The rank the client claims (`PMI_ID`).
        pmiid: u32,
    },
    /// `cmd=get_maxes`.
    GetMaxes,
    /// `cmd=get_appnum`.
    GetAppnum,
    /// `cmd=get_my_kvsname`.
    GetMyKvsname,
    /// `cmd=get_universe_size`.
    GetUniverseSize,
    /// `cmd=put kvsname=K key=KEY value=V`.
    Put {
        /// `kvsname`, when sent.
        kvsname: Option<String>,
        /// The key. It is never empty.
        key: String,
        /// The value, exactly as sent (spaces included).
        value: String,
    },
    /// `cmd=get kvsname=K key=KEY`.
    Get {
        /// `kvsname`, when sent.
        kvsname: Option<String>,
        /// The key. It is never empty.
        key: String,
    },
    /// `cmd=barrier_in`.
    BarrierIn,
    /// `cmd=finalize`.
    Finalize,
    /// `cmd=abort exitcode=N [message=...]`.
    Abort {
        /// The exit code the job should end with.
        exit_code: i32,
        /// The reason, when the client sent one (`message=` or `msg=`).
        message: Option<String>,
    },
    /// A known PMI-1 command this server does not implement: `publish_name`,
    /// `unpublish_name`, `lookup_name`, `spawn`, `create_kvs`, `destroy_kvs`, `getbyidx`.
    Unsupported {
        /// The command name.
        cmd: String,
    },
    /// `mcmd=spawn`: the first line of a multi-line spawn block.
    SpawnBlock,
}

impl Request {
    /// Parses one request line. A trailing `\n` or `\r\n` is allowed.
    pub fn parse(line: &str) -> Result<Request, PmiError> {
        let fields = Fields::split(line)?;
        let cmd = fields.cmd;
        let req = if fields.multi {
            match cmd {
                "spawn" => Request::SpawnBlock,
                _ => return Err(PmiError::UnknownCommand { cmd: format!("mcmd={cmd}") }),
            }
        } else {
            match cmd {
                "init" => Request::Init {
                    version: fields.number("pmi_version")?,
                    subversion: fields.number("pmi_subversion")?,
                },
                "initack" => Request::InitAck { pmiid: fields.number("pmiid")? },
                "get_maxes" => Request::GetMaxes,
                "get_appnum" => Request::GetAppnum,
                "get_my_kvsname" => Request::GetMyKvsname,
                "get_universe_size" => Request::GetUniverseSize,
                "put" => Request::Put {
                    kvsname: fields.optional("kvsname").map(str::to_string),
                    key: fields.key()?,
                    value: fields.required("value")?.to_string(),
                },
                "get" => Request::Get { kvsname: fields.optional("kvsname").map(str::to_string), key: fields.key()? },
                "barrier_in" => Request::BarrierIn,
                "finalize" => Request::Finalize,
                "abort" => Request::Abort {
                    exit_code: fields.number("exitcode")?,
                    message: fields.optional("message").or(fields.optional("msg")).map(str::to_string),
                },
                "publish_name" | "unpublish_name" | "lookup_name" | "spawn" | "create_kvs" | "destroy_kvs"
                | "getbyidx" => Request::Unsupported { cmd: cmd.to_string() },
                _ => return Err(PmiError::UnknownCommand { cmd: cmd.to_string() }),
            }
        };
        Ok(req)
    }
}

/// The `cmd=` a client expects in the reply to `cmd` (`put` → `put_result`,
/// `init` → `response_to_init`, ...). An unknown command gets `<cmd>_result`.
pub fn reply_cmd(cmd: &str) -> String {
    let known = match cmd {
        "init" => "response_to_init",
        "initack" => "initack",
        "get_maxes" => "maxes",
        "get_appnum" => "appnum",
        "get_my_kvsname" => "my_kvsname",
        "get_universe_size" => "universe_size",
        "put" => "put_result",
        "get" => "get_result",
        "barrier_in" => "barrier_out",
        "finalize" => "finalize_ack",
        "publish_name" => "publish_result",
        "unpublish_name" => "unpublish_result",
        "lookup_name" => "lookup_result",
        "spawn" | "mcmd=spawn" => "spawn_result",
        "create_kvs" => "newkvs",
        "destroy_kvs" => "kvs_destroyed",
        "getbyidx" => "getbyidx_results",
        other => return format!("{}_result", other.strip_prefix("mcmd=").unwrap_or(other)),
    };
    known.to_string()
}

/// Strips one trailing `\n` or `\r\n`, and nothing else.
pub fn strip_terminator(line: &str) -> &str {
    let line = line.strip_suffix('\n').unwrap_or(line);
    line.strip_suffix('\r').unwrap_or(line)
}

/// The fields of one line, borrowed from it.
struct Fields<'a> {
    /// The line started with `mcmd=` instead of `cmd=`.
    multi: bool,
    cmd: &'a str,
    rest: Vec<(&'a str, &'a str)>,
}

impl<'a> Fields<'a> {
    fn split(line: &'a str) -> Result<Fields<'a>, PmiError> {
        let line = strip_terminator(line);
        let malformed = |reason, cmd: Option<&str>| PmiError::Malformed {
            line: line.to_string(),
            reason,
            cmd: cmd.map(str::to_string),
        };
        let mut rest = line.trim_start_matches(' ');
        let first = rest.split(' ').next().unwrap_or_default();
        let (multi, cmd) = if let Some(cmd) = first.strip_prefix("cmd=") {
            (false, cmd)
        } else if let Some(cmd) = first.strip_prefix("mcmd=") {
            (true, cmd)
        } else {
            return Err(malformed("the line does not start with cmd=<name>", None));
        };
        if cmd.is_empty() {
            return Err(malformed("empty command name", None));
        }
        rest = &rest[first.len()..];
        let reply_to = if multi { format!("mcmd={cmd}") } else { cmd.to_string() };
        let mut fields: Vec<(&str, &str)> = Vec::new();
        loop {
            rest = rest.trim_start_matches(' ');
            if rest.is_empty() {
                break;
            }
            let Some(eq) = rest.find('=') else {
                return Err(malformed("a field has no '='", Some(&reply_to)));
            };
            let key = &rest[..eq];
            if key.is_empty() || key.contains(' ') {
                return Err(malformed("a field has no '=' or an empty name", Some(&reply_to)));
            }
            let after = &rest[eq + 1..];
            let (value, next) = if REST_OF_LINE.contains(&key) {
                (after, "")
            } else {
                match after.find(' ') {
                    Some(sp) => (&after[..sp], &after[sp..]),
                    None => (after, ""),
                }
            };
            if key == "cmd" || fields.iter().any(|(k, _)| *k == key) {
                return Err(PmiError::DuplicateField { cmd: reply_to, field: key.to_string() });
            }
            fields.push((key, value));
            rest = next;
        }
        Ok(Fields { multi, cmd, rest: fields })
    }

    fn optional(&self, field: &str) -> Option<&'a str> {
        self.rest.iter().find(|(k, _)| *k == field).map(|(_, v)| *v)
    }

    fn required(&self, field: &'static str) -> Result<&'a str, PmiError> {
        self.optional(field).ok_or_else(|| PmiError::MissingField { cmd: self.cmd.to_string(), field })
    }

    fn key(&self) -> Result<String, PmiError> {
        let key = self.required("key")?;
        if key.is_empty() {
            return Err(self.bad("key", key, "a non-empty key"));
        }
        Ok(key.to_string())
    }

    fn number<T: std::str::FromStr>(&self, field: &'static str) -> Result<T, PmiError> {
        let value = self.required(field)?;
        value.parse().map_err(|_| self.bad(field, value, "a decimal integer"))
    }

    fn bad(&self, field: &'static str, value: &str, expected: &'static str) -> PmiError {
        PmiError::BadField { cmd: self.cmd.to_string(), field, value: value.to_string(), expected }
    }
}

/// One reply line, in the exact form clients expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0` (or `rc=-1 msg=...`).
    ResponseToInit {
        /// `None` for success, else the `msg=` token of an `rc=-1` reply.
        error: Option<String>,
    },
    /// The four-line `PMI_PORT` handshake reply (`cmd=initack`, then `cmd=set` size, rank, debug).
    InitAck {
        /// Job size.
        size: u32,
        /// The client's rank.
        rank: u32,
    },
    /// `cmd=maxes kvsname_max=256 keylen_max=64 vallen_max=1024`.
    Maxes,
    /// `cmd=appnum appnum=N`.
    Appnum(u32),
    /// `cmd=my_kvsname kvsname=NAME`.
    MyKvsname(String),
    /// `cmd=universe_size size=N`.
    UniverseSize(u32),
    /// `cmd=put_result rc=0 msg=success`.
    PutOk,
    /// `cmd=get_result rc=0 msg=success value=V`.
    GetFound(String),
    /// `cmd=get_result rc=-1 msg=key_<key>_not_found value=unknown` (hydra's text).
    GetNotFound(String),
    /// `cmd=barrier_out`.
    BarrierOut,
    /// `cmd=finalize_ack`.
    FinalizeAck,
    /// `cmd=<cmd> rc=-1 msg=<msg>`, the failure form of any reply.
    Error {
        /// The reply's `cmd=` (see [`reply_cmd`]).
        cmd: String,
        /// One space-free token.
        msg: String,
    },
}

impl Reply {
    /// The reply as bytes for the wire, ending in `\n`.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = match self {
            Reply::ResponseToInit { error: None } => {
                write!(s, "cmd=response_to_init pmi_version={PMI_VERSION} pmi_subversion={PMI_SUBVERSION} rc=0")
            }
            Reply::ResponseToInit { error: Some(msg) } => write!(
                s,
                "cmd=response_to_init pmi_version={PMI_VERSION} pmi_subversion={PMI_SUBVERSION} rc=-1 msg={msg}"
            ),
            Reply::InitAck { size, rank } => {
                write!(s, "cmd=initack\ncmd=set size={size}\ncmd=set rank={rank}\ncmd=set debug=0")
            }
            Reply::Maxes => {
                write!(s, "cmd=maxes kvsname_max={KVSNAME_MAX} keylen_max={KEYLEN_MAX} vallen_max={VALLEN_MAX}")
            }
            Reply::Appnum(n) => write!(s, "cmd=appnum appnum={n}"),
            Reply::MyKvsname(name) => write!(s, "cmd=my_kvsname kvsname={name}"),
            Reply::UniverseSize(n) => write!(s, "cmd=universe_size size={n}"),
            Reply::PutOk => write!(s, "cmd=put_result rc=0 msg=success"),
            Reply::GetFound(value) => write!(s, "cmd=get_result rc=0 msg=success value={value}"),
            Reply::GetNotFound(key) => write!(s, "cmd=get_result rc=-1 msg=key_{key}_not_found value=unknown"),
            Reply::BarrierOut => write!(s, "cmd=barrier_out"),
            Reply::FinalizeAck => write!(s, "cmd=finalize_ack"),
            Reply::Error { cmd, msg } => write!(s, "cmd={cmd} rc=-1 msg={msg}"),
        };
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(line: &str) -> (Option<String>, String, String) {
        match Request::parse(line).unwrap() {
            Request::Put { kvsname, key, value } => (kvsname, key, value),
            other => panic!("not a put: {other:?}"),
        }
    }

    #[test]
    fn parses_the_mpich_requests() {
        assert_eq!(
            Request::parse("cmd=init pmi_version=1 pmi_subversion=1\n").unwrap(),
            Request::Init { version: 1, subversion: 1 }
        );
        assert_eq!(Request::parse("cmd=get_maxes\n").unwrap(), Request::GetMaxes);
        assert_eq!(Request::parse("cmd=get_appnum\n").unwrap(), Request::GetAppnum);
        assert_eq!(Request::parse("cmd=get_my_kvsname\n").unwrap(), Request::GetMyKvsname);
        assert_eq!(Request::parse("cmd=get_universe_size\n").unwrap(), Request::GetUniverseSize);
        assert_eq!(Request::parse("cmd=barrier_in\n").unwrap(), Request::BarrierIn);
        assert_eq!(Request::parse("cmd=finalize\n").unwrap(), Request::Finalize);
        assert_eq!(
            Request::parse("cmd=get kvsname=kvs_probe_0 key=PMI_process_mapping\n").unwrap(),
            Request::Get { kvsname: Some("kvs_probe_0".into()), key: "PMI_process_mapping".into() }
        );
        assert_eq!(
            put("cmd=put kvsname=kvs_probe_0 key=-bcast-1-0 value=2F6465762F\n"),
            (Some("kvs_probe_0".into()), "-bcast-1-0".into(), "2F6465762F".into())
        );
        assert_eq!(Request::parse("cmd=initack pmiid=3\n").unwrap(), Request::InitAck { pmiid: 3 });
        assert_eq!(Request::parse("cmd=abort exitcode=-1\n").unwrap(), Request::Abort { exit_code: -1, message: None });
    }

    #[test]
    fn value_runs_to_the_end_of_the_line() {
        // Open MPI: base64 padded with spaces, '=' inside, chunk ends with '-', trailing blanks.
        let (_, key, value) = put("cmd=put kvsname=k key=1-0-key5 value=QUJD RE= x=y  ZZ-  \n");
        assert_eq!(key, "1-0-key5");
        assert_eq!(value, "QUJD RE= x=y  ZZ-  ");
        // CRLF is a terminator; an empty value is a value.
        assert_eq!(put("cmd=put kvsname=k key=a value=\r\n").2, "");
        // Without a terminator at all.
        assert_eq!(put("cmd=put kvsname=k key=a value= b").2, " b");
        // The abort message also runs to the end of the line.
        assert_eq!(
            Request::parse("cmd=abort exitcode=3 message=out of memory on node 2\n").unwrap(),
            Request::Abort { exit_code: 3, message: Some("out of memory on node 2".into()) }
        );
    }

    #[test]
    fn long_lines_are_accepted() {
        let value = "A".repeat(VALLEN_MAX - 1) + " -";
        let line = format!("cmd=put kvsname=kvs_1 key=1-0-key0 value={value}\n");
        assert!(line.len() > 1024);
        assert_eq!(put(&line).2, value);
    }

    #[test]
    fn extra_spaces_and_unknown_fields_are_tolerated() {
        assert_eq!(
            Request::parse("  cmd=get   kvsname=k  key=x  future=1\n").unwrap(),
            Request::Get { kvsname: Some("k".into()), key: "x".into() }
        );
        assert_eq!(Request::parse("cmd=get key=x\n").unwrap(), Request::Get { kvsname: None, key: "x".into() });
    }

    #[test]
    fn malformed_lines_name_the_problem() {
        for line in ["", "\n", "hello", "value=x cmd=put", "cmd=", "cmd= x=y"] {
            let err = Request::parse(line).unwrap_err();
            assert!(matches!(err, PmiError::Malformed { cmd: None, .. }), "{line:?}: {err:?}");
            assert_eq!(err.command(), None);
        }
        let err = Request::parse("cmd=put kvsname=k key\n").unwrap_err();
        assert!(matches!(err, PmiError::Malformed { .. }), "{err:?}");
        assert_eq!(err.command(), Some("put"));

        let err = Request::parse("cmd=put kvsname=k value=v\n").unwrap_err();
        assert_eq!(err, PmiError::MissingField { cmd: "put".into(), field: "key" });
        assert_eq!(err.wire_msg(), "missing_field_key");
        assert!(err.to_string().contains("\"key\""), "{err}");

        let err = Request::parse("cmd=get key= kvsname=k\n").unwrap_err();
        assert!(matches!(err, PmiError::BadField { field: "key", .. }), "{err:?}");

        let err = Request::parse("cmd=get key=a key=b\n").unwrap_err();
        assert_eq!(err, PmiError::DuplicateField { cmd: "get".into(), field: "key".into() });

        let err = Request::parse("cmd=abort exitcode=x\n").unwrap_err();
        assert!(matches!(err, PmiError::BadField { field: "exitcode", .. }), "{err:?}");
        assert_eq!(err.command(), Some("abort"));

        let err = Request::parse("cmd=init pmi_version=1\n").unwrap_err();
        assert_eq!(err, PmiError::MissingField { cmd: "init".into(), field: "pmi_subversion" });
    }

    #[test]
    fn unknown_and_unsupported_commands() {
        let err = Request::parse("cmd=frobnicate a=b\n").unwrap_err();
        assert_eq!(err, PmiError::UnknownCommand { cmd: "frobnicate".into() });
        assert_eq!(err.command(), Some("frobnicate"));
        assert_eq!(reply_cmd("frobnicate"), "frobnicate_result");
        assert_eq!(err.wire_msg(), "unknown_command");

        for cmd in ["publish_name", "unpublish_name", "lookup_name", "spawn", "getbyidx"] {
            assert_eq!(
                Request::parse(&format!("cmd={cmd} service=x port=y\n")).unwrap(),
                Request::Unsupported { cmd: cmd.into() }
            );
        }
        assert_eq!(reply_cmd("publish_name"), "publish_result");
        assert_eq!(reply_cmd("unpublish_name"), "unpublish_result");
        assert_eq!(reply_cmd("lookup_name"), "lookup_result");
        assert_eq!(reply_cmd("getbyidx"), "getbyidx_results");

        assert_eq!(Request::parse("mcmd=spawn\n").unwrap(), Request::SpawnBlock);
        let err = Request::parse("mcmd=other\n").unwrap_err();
        assert_eq!(err.command(), Some("mcmd=other"));
        assert_eq!(reply_cmd("mcmd=other"), "other_result");
    }

    #[test]
    fn replies_are_hydras_strings() {
        let cases = [
            (Reply::ResponseToInit { error: None }, "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0\n"),
            (
                Reply::ResponseToInit { error: Some("nope".into()) },
                "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=-1 msg=nope\n",
            ),
            (Reply::InitAck { size: 4, rank: 0 }, "cmd=initack\ncmd=set size=4\ncmd=set rank=0\ncmd=set debug=0\n"),
            (Reply::Maxes, "cmd=maxes kvsname_max=256 keylen_max=64 vallen_max=1024\n"),
            (Reply::Appnum(0), "cmd=appnum appnum=0\n"),
            (Reply::MyKvsname("kvs_probe_0".into()), "cmd=my_kvsname kvsname=kvs_probe_0\n"),
            (Reply::UniverseSize(4), "cmd=universe_size size=4\n"),
            (Reply::PutOk, "cmd=put_result rc=0 msg=success\n"),
            (Reply::GetFound("(vector,(0,1,2))".into()), "cmd=get_result rc=0 msg=success value=(vector,(0,1,2))\n"),
            (
                Reply::GetNotFound("hostname[3]".into()),
                "cmd=get_result rc=-1 msg=key_hostname[3]_not_found value=unknown\n",
            ),
            (Reply::BarrierOut, "cmd=barrier_out\n"),
            (Reply::FinalizeAck, "cmd=finalize_ack\n"),
            (
                Reply::Error { cmd: "lookup_result".into(), msg: "unsupported".into() },
                "cmd=lookup_result rc=-1 msg=unsupported\n",
            ),
        ];
        for (reply, want) in cases {
            assert_eq!(reply.encode(), want);
        }
    }

    #[test]
    fn limits_match_research_note() {
        assert_eq!(MPICH_CLAMPED_VALLEN, 674);
        // The longest reply MPICH can provoke with its clamped values fits its line buffer.
        let reply = Reply::GetFound("F".repeat(MPICH_CLAMPED_VALLEN)).encode();
        assert!(reply.len() <= MPICH_MAX_LINE, "{}", reply.len());
    }

    #[test]
    fn wire_msgs_are_one_token() {
        let errs = [
            PmiError::VersionMismatch { version: 2, subversion: 0 },
            PmiError::TooLong { what: "key", len: 65, max: 64 },
            PmiError::DoubleBarrier { rank: 1, fence: 0 },
            PmiError::KvsnameMismatch { got: "a b".into(), expected: "c".into() },
            PmiError::UnexpectedInitack { rank: 2 },
            PmiError::AfterFinalize { rank: 2 },
        ];
        for e in errs {
            let m = e.wire_msg();
            assert!(!m.is_empty() && !m.contains([' ', '\n', '\r', '\t', '=']), "{m:?}");
        }
        assert_eq!(
            PmiError::VersionMismatch { version: 2, subversion: 0 }.wire_msg(),
            "pmi_version_2.0_unsupported_this_server_speaks_1.1"
        );
        assert_eq!(PmiError::TooLong { what: "key", len: 65, max: 64 }.wire_msg(), "key_too_long_65_bytes_max_64");
    }
}
