//! `launcher submit` and `launcher run`.

use super::client::{check, exit, unexpected, usage, Client};
use super::jobargs::{directives, sbatch_directives, JobArgs};
use super::output::print_stream_chunk;
use anyhow::{anyhow, Result};
use clap::Parser;
use launcher_proto::{JobId, JobInfo, JobSpec, JobState, Request, Response, Stream};
use std::io::Write;
use std::path::PathBuf;

/// What to run: `-- CMD ARGS` (command mode) or `SCRIPT [ARGS]` (script mode).
pub struct Target {
    /// `--` was given: run a command.
    pub command_mode: bool,
    /// Program/script and its arguments.
    pub args: Vec<String>,
}

/// Command mode iff the target is exactly what follows a `--` on the command
/// line (`submit -N 2 -- hostname`); `submit job.sh -- x` is a script with arguments.
pub fn command_mode(argv: &[String], target: &[String]) -> bool {
    if target.is_empty() || argv.len() <= target.len() {
        return false;
    }
    let split = argv.len() - target.len();
    argv[split..] == *target && argv[split - 1] == "--"
}

/// Build a spec from flags plus, in script mode, the script's directives.
///
/// Without `--`, a text file is a batch script (its `#LAUNCHER` and `#SBATCH`
/// lines count; run with its `#!` line, else /bin/sh); any other file, such
/// as a compiled MPI program, is run as a program. With `programs_on_path`
/// (`run`, like srun), a name that is not a file is a program looked up on
/// the nodes' PATH.
pub fn build_spec(flags: JobArgs, target: Target, programs_on_path: bool) -> Result<JobSpec> {
    build_spec_over(flags, target, programs_on_path, None)
}

/// [`build_spec`] on top of a job definition's template.
pub fn build_spec_over(
    flags: JobArgs,
    target: Target,
    programs_on_path: bool,
    base: Option<&JobSpec>,
) -> Result<JobSpec> {
    if target.args.is_empty() && base.is_some() {
        return flags.to_spec_over(base, Vec::new(), None).map_err(|e| usage(format!("{e:#}")));
    }
    if target.args.is_empty() {
        return Err(usage(
            "nothing to run: give a script file, or a command after `--` (e.g. `launcher submit -N 2 -- hostname`)",
        ));
    }
    if target.command_mode {
        return flags.to_spec_over(base, target.args, None).map_err(|e| usage(format!("{e:#}")));
    }
    let path = PathBuf::from(&target.args[0]);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && programs_on_path && !target.args[0].contains('/') => {
            return flags.to_spec_over(base, target.args, None).map_err(|e| usage(format!("{e:#}")));
        }
        Err(e) => {
            return Err(usage(format!(
                "cannot read script {}: {e} (to run a program instead, put it after `--`: `launcher submit -- {}`)",
                path.display(),
                target.args[0]
            )))
        }
    };
    // Text is a script (run with its `#!` line, or /bin/sh without one, as a
    // shell runs a file execve refuses); anything else is a program.
    let text = match String::from_utf8(bytes) {
        Ok(t) if t.starts_with("#!") || !t.contains('\0') => t,
        _ => {
            // A program (an ELF binary, say): run it as a command, by absolute
            // path so the nodes find it whatever their working directory.
            let mut args = target.args;
            if let Ok(abs) = std::path::absolute(&path) {
                args[0] = abs.to_string_lossy().into_owned();
            }
            return flags.to_spec_over(base, args, None).map_err(|e| usage(format!("{e:#}")));
        }
    };
    let dir_args = directives(&text).map_err(|e| usage(format!("{}: {e:#}", path.display())))?;
    #[derive(Parser)]
    #[command(no_binary_name = true)]
    struct Directives {
        #[command(flatten)]
        job: JobArgs,
    }
    let d = Directives::try_parse_from(&dir_args).map_err(|e| {
        usage(format!("{}: bad #LAUNCHER directive: {}", path.display(), e.render().to_string().trim()))
    })?;
    // A Slurm script's `#SBATCH` lines count too, below `#LAUNCHER` ones. Each
    // line stands alone: one launcher has no equivalent for (--account,
    // --mail-type...) is skipped with a warning instead of failing the job.
    let mut sbatch = JobArgs::default();
    for (line, args) in sbatch_directives(&text).map_err(|e| usage(format!("{}: {e:#}", path.display())))? {
        match Directives::try_parse_from(&args) {
            Ok(d) => sbatch = d.job.over(sbatch),
            Err(e) => {
                let why = e.render().to_string();
                let why = why.lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
                eprintln!("launcher: {}:{line}: ignoring `#SBATCH {}`: {why}", path.display(), args.join(" "));
            }
        }
    }
    let merged = flags.over(d.job.over(sbatch));
    merged
        .to_spec_over(base, target.args[1..].to_vec(), Some((target.args[0].clone(), text)))
        .map_err(|e| usage(format!("{e:#}")))
}

fn new_key() -> u128 {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("system randomness");
    u128::from_le_bytes(b)
}

/// Submit and return the job id. Retries across a controller restart with
/// the same idempotency key, so a job is created at most once.
pub async fn submit_spec(client: &mut Client, spec: JobSpec) -> Result<JobId> {
    let resp = check(client.call_retrying(&Request::Submit { spec: Box::new(spec), key: Some(new_key()) }).await?)?;
    match resp {
        Response::Submitted { job } => Ok(job),
        r => Err(unexpected(r)),
    }
}

/// The template of `--jobdef NAME[:REV]`, with its name:revision recorded.
pub async fn jobdef_base(client: &Client, jobdef: Option<&str>) -> Result<Option<JobSpec>> {
    let Some(name) = jobdef else { return Ok(None) };
    let d = super::admin::fetch_jobdef(client, name).await?;
    let mut spec = d.spec;
    spec.jobdef = Some(format!("{}:{}", d.name, d.revision));
    Ok(Some(spec))
}

/// `launcher submit`.
pub async fn submit(
    cred: Option<PathBuf>,
    flags: JobArgs,
    target: Target,
    parsable: bool,
    wait: bool,
    jobdef: Option<String>,
) -> Result<i32> {
    let spec = SpecToBe::new(flags, target, false, jobdef)?;
    let mut client = Client::connect(cred).await?;
    let spec = spec.build(&client).await?;
    let job = submit_spec(&mut client, spec).await?;
    if parsable {
        println!("{job}");
    } else {
        println!("Submitted batch job {job}");
    }
    if !wait {
        return Ok(exit::OK);
    }
    std::io::stdout().flush()?;
    // --wait: poll the job's state (its output is not needed here).
    let mut pause = std::time::Duration::from_millis(50);
    let info = loop {
        match check(client.call(&Request::Show { job }).await?)? {
            Response::Job(info) if info.state.is_terminal() => break info,
            Response::Job(_) => {}
            r => return Err(unexpected(r)),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(1));
    };
    say_if_it_failed(job, &info);
    Ok(job_exit_code(&info))
}

/// A spec built before dialing, so usage errors never wait on the network;
/// or, on a job definition, what it is built from once that is fetched.
enum SpecToBe {
    Built(JobSpec),
    OnJobdef { flags: JobArgs, target: Target, programs_on_path: bool, jobdef: String },
}

impl SpecToBe {
    fn new(flags: JobArgs, target: Target, programs_on_path: bool, jobdef: Option<String>) -> Result<SpecToBe> {
        Ok(match jobdef {
            None => SpecToBe::Built(build_spec(flags, target, programs_on_path)?),
            Some(jobdef) => SpecToBe::OnJobdef { flags, target, programs_on_path, jobdef },
        })
    }

    async fn build(self, client: &Client) -> Result<JobSpec> {
        match self {
            SpecToBe::Built(spec) => Ok(spec),
            SpecToBe::OnJobdef { flags, target, programs_on_path, jobdef } => {
                let base = jobdef_base(client, Some(&jobdef)).await?;
                build_spec_over(flags, target, programs_on_path, base.as_ref())
            }
        }
    }
}

/// On stderr, how a job that did not succeed ended.
fn say_if_it_failed(job: JobId, info: &JobInfo) {
    if info.state != JobState::Succeeded {
        eprintln!("launcher: job {job} {}: {}", info.state, info.reason_text.as_deref().unwrap_or_default());
    }
}

/// Exit code for a finished job: 0, or its exit code (at least 1).
pub fn job_exit_code(info: &JobInfo) -> i32 {
    match info.state {
        JobState::Succeeded => exit::OK,
        _ => info.exit_code.unwrap_or(1).clamp(1, 255),
    }
}

/// Stream a job's output until it ends; returns its final record.
pub async fn follow(client: &Client, job: JobId, rank: Option<u32>, label: bool, follow: bool) -> Result<JobInfo> {
    let mut s = client.stream(&Request::Logs { job, rank, follow }).await?;
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut partial: std::collections::HashMap<(u32, Stream), Vec<u8>> = Default::default();
    loop {
        let Some(resp) = s.recv::<Response>().await? else {
            return Err(anyhow!("the controller ended the output stream early"));
        };
        match check(resp)? {
            Response::Output { rank, stream, data } => {
                if stream == Stream::Stdout {
                    print_stream_chunk(&mut stdout.lock(), &mut partial, rank, stream, &data, label)?;
                } else {
                    print_stream_chunk(&mut stderr.lock(), &mut partial, rank, stream, &data, label)?;
                }
            }
            Response::LogsEnd(info) => {
                for ((rank, stream), rest) in partial.drain() {
                    if !rest.is_empty() {
                        let line = if label { format!("{rank}: ") } else { String::new() };
                        let mut out: Box<dyn Write> =
                            if stream == Stream::Stdout { Box::new(stdout.lock()) } else { Box::new(stderr.lock()) };
                        out.write_all(line.as_bytes())?;
                        out.write_all(&rest)?;
                        out.write_all(b"\n")?;
                    }
                }
                stdout.lock().flush()?;
                return Ok(*info);
            }
            r => return Err(unexpected(r)),
        }
    }
}

/// `launcher run`: submit, stream output, exit with the job's code; Ctrl-C cancels.
pub async fn run(
    cred: Option<PathBuf>,
    flags: JobArgs,
    target: Target,
    label: bool,
    jobdef: Option<String>,
) -> Result<i32> {
    let spec = SpecToBe::new(flags, target, true, jobdef)?;
    let mut client = Client::connect(cred).await?;
    let spec = spec.build(&client).await?;
    if spec.array.is_some() {
        return Err(usage("`run` streams one job; submit array jobs with `launcher submit --array ...` and read a child's output with `launcher logs ID:INDEX`"));
    }
    let job = submit_spec(&mut client, spec).await?;
    let streaming = async {
        // Output, and meanwhile why the job waits, if it does.
        let (output, notes) = (follow(&client, job, None, label, true), say_why_it_waits(&client, job));
        tokio::pin!(output, notes);
        let mut waiting = true;
        loop {
            tokio::select! {
                r = &mut output => break r,
                () = &mut notes, if waiting => waiting = false,
            }
        }
    };
    tokio::pin!(streaming);
    let info = tokio::select! {
        r = &mut streaming => r?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("launcher: cancelling job {job} (Ctrl-C again to detach)");
            let _ = client.call(&Request::Cancel { jobs: vec![job] }).await;
            tokio::select! {
                r = &mut streaming => r?,
                _ = tokio::signal::ctrl_c() => return Ok(130),
            }
        }
    };
    say_if_it_failed(job, &info);
    for t in &info.tasks {
        if let Some(e @ launcher_proto::ExitStatus::KilledAfterFinalize { .. }) = &t.exit {
            eprintln!("launcher: job {job}: rank {} {e}", t.rank);
        }
    }
    Ok(job_exit_code(&info))
}

/// While `run`'s job has not started, say why on stderr, as srun does: once
/// it has waited a second, then whenever the reason changes. Returns when the
/// job starts (or ends). A job no node can ever run must not look hung.
async fn say_why_it_waits(client: &Client, job: JobId) {
    let mut said = String::new();
    let mut pause = std::time::Duration::from_secs(1);
    loop {
        tokio::time::sleep(pause).await;
        pause = std::time::Duration::from_millis(500);
        let Ok(Ok(Response::Job(info))) = client.call(&Request::Show { job }).await.map(check) else { return };
        if !matches!(info.state, JobState::Submitted | JobState::Pending | JobState::Runnable) {
            return;
        }
        let why = match (&info.reason, &info.reason_text) {
            (Some(r), Some(t)) => format!("{r}: {t}"),
            (Some(r), None) => r.clone(),
            _ => "waiting".into(),
        };
        if why != said {
            eprintln!("launcher: job {job} is {}: {why} (Ctrl-C cancels it)", info.state);
            said = why;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::command_mode;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn double_dash_introduces_a_command_only_right_before_it() {
        assert!(command_mode(&v("launcher submit -N 2 -- hostname -f"), &v("hostname -f")));
        assert!(!command_mode(&v("launcher submit job.sh -- x y"), &v("job.sh -- x y")));
        assert!(!command_mode(&v("launcher submit job.sh -- x y"), &v("job.sh x y")));
        assert!(!command_mode(&v("launcher submit job.sh"), &v("job.sh")));
        assert!(command_mode(&v("launcher run -- --"), &v("--")));
    }
}
