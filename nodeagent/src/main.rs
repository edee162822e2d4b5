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
    let cli = Cli::parse();
    nodeagent::init_tracing("info");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(nodeagent::run(cli.args))
}
