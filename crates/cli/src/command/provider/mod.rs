//! `kmsgate provider …`: what a vendor needs to make a provider component
//! (`new`), label it (`stamp`) and certify it (`test`).

mod direct;
mod new;
mod stamp;
mod test;

/// Make, label and test provider components.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    New(new::NewArgs),
    Stamp(stamp::StampArgs),
    Test(test::TestArgs),
}

pub async fn run(Args { command }: Args) -> anyhow::Result<()> {
    match command {
        Command::New(args) => new::run(args),
        Command::Stamp(args) => stamp::run(args),
        Command::Test(args) => test::run(args).await,
    }
}
