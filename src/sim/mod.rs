//! A faithful local stand-in for the Jobs API (SPEC §6). (Placeholder until the simulator lands.)

#[derive(clap::Args, Debug, Clone)]
pub struct SimulateArgs {}

pub async fn run_cli(_args: SimulateArgs, _token: Option<String>) -> anyhow::Result<()> {
    anyhow::bail!("`simulate` is not implemented yet in this build of jobsync")
}
