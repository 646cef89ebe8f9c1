//! `warmtls demo` (placeholder until the fleet simulator lands).
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Simulated devices.
    #[arg(long, default_value_t = 100_000)]
    pub devices: u64,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

pub fn run(_a: DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("the demo needs the fleet simulator, which has not landed yet")
}
