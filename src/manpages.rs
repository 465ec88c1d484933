//! Man pages: corral(1) and one page per subcommand generated from the clap definitions, so the
//! page and `--help` never disagree. corral.toml(5) is written by hand in `man/`.

use std::path::Path;

use clap::CommandFactory;

use crate::cli::Cli;

pub fn write_all(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd, dir)
}
