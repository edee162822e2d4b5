//! `nodeagent`: run the launcher node agent.

use clap::Parser;

/// The launcher node agent: joins a controller, runs tasks, streams their output.
#[derive(Parser, Debug)]
#[command(name = "nodeagent", version, about)]
struct Cli {
    #[command(flatten)]
    args: nodeagent::AgentArgs,
}

fn main() -> anyhow::Result<()> {
    // `nodeagent exec ...` is `launcher exec ...` (the `rsh` wrapper of a job names this binary).
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("exec") {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let code = rt.block_on(nodeagent::remote::client(&argv[2..])).unwrap_or_else(|e| {
            eprintln!("launcher exec: {e:#}");
            255
        });
        std::process::exit(code);
    }
    let cli = Cli::parse();
    nodeagent::init_tracing("info");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(nodeagent::run(cli.args))
}
