//! The command line: `pispeaker [run]` runs the speaker; the subcommands are tools around it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{self, ConfigArgs, ConfigError};
use crate::connect::drop_test::{self, DropTestOptions};
use crate::{board, boot_config, daemon, logging};

#[derive(Debug, Parser)]
#[command(
    name = "pispeaker",
    version,
    about = "Spotify Connect and Jellyfin network speaker for the Raspberry Pi",
    after_help = "Every option is also a config file key (without the dashes) and a PISPEAKER_* environment variable; precedence: flag > environment > file > board preset > defaults."
)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the speaker (the default)
    Run,
    /// Print the effective configuration as TOML
    Config,
    /// List the board presets and the config.txt lines each needs
    Boards,
    /// Show what the running speaker is doing (reads its status page)
    Status,
    /// On the device: drop the access-point connection with iptables and time the recovery
    DropTest {
        /// The daemon's pid (found by name if omitted)
        #[arg(long)]
        pid: Option<u32>,
        /// Give up after this many seconds
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Drop the connection this many times in a row and print a summary (a soak test)
        #[arg(long, default_value_t = 1)]
        cycles: u32,
    },
    /// SD image: turn the boot partition's pispeaker.toml into runtime files (run at every boot)
    BootConfig {
        /// The settings file on the boot partition
        #[arg(long, default_value = boot_config::DEFAULT_SOURCE)]
        source: PathBuf,
        /// Where the runtime files go
        #[arg(long, default_value = boot_config::DEFAULT_OUT_DIR)]
        out: PathBuf,
    },
    /// Jellyfin tools
    Jellyfin {
        #[command(subcommand)]
        command: JellyfinCommand,
    },
}

#[derive(Debug, Subcommand)]
enum JellyfinCommand {
    /// Pair with a Jellyfin server through Quick Connect and store the token
    Pair {
        /// Server URL, e.g. http://jellyfin.local:8096
        #[arg(long)]
        server: Option<String>,
    },
    /// Play a local audio file through the cast's decoder and output on the configured PCM and
    /// print time to the first frame, underruns, CPU and peak RSS (stop the daemon first)
    CastTest {
        /// FLAC, MP3, AAC/M4A, Ogg Vorbis or WAV
        file: std::path::PathBuf,
        /// Stop after this many seconds
        #[arg(long)]
        seconds: Option<f64>,
        /// Play into a capture paced like a sound card instead of ALSA
        #[arg(long)]
        capture: bool,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    logging::init();
    // Exits with status 2 and clap's message for unknown flags and invalid values.
    let cli = Cli::parse();
    // The boot config runs before the speaker's own config matters (and must work when that is
    // broken), so it does not load it.
    if let Some(Command::BootConfig { source, out }) = &cli.command {
        return apply_boot_config(source, out);
    }
    let config = match config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => return config_error(&e),
    };
    match cli.command {
        None | Some(Command::Run) => daemon::run(config, cli.config.clone()),
        Some(Command::Config) => {
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Some(Command::Boards) => {
            for preset in board::presets() {
                println!("{}: {}", preset.name, preset.description);
                for line in &preset.config_txt {
                    println!("    {line}");
                }
                if let Some(overlay) = &preset.image_overlay {
                    println!("    (SD image: dtoverlay={overlay}, from board/overlays/)");
                }
            }
            ExitCode::SUCCESS
        }
        Some(Command::Status) => block_on(crate::status::print_status(status_url(&config))),
        Some(Command::DropTest {
            pid,
            timeout,
            cycles,
        }) => block_on(drop_test::run(DropTestOptions {
            pid,
            status_url: status_url(&config),
            timeout: Duration::from_secs(timeout),
            cycles,
        })),
        Some(Command::Jellyfin {
            command: JellyfinCommand::Pair { server },
        }) => block_on(crate::jellyfin::pair_interactive(config, server)),
        Some(Command::Jellyfin {
            command:
                JellyfinCommand::CastTest {
                    file,
                    seconds,
                    capture,
                },
        }) => crate::jellyfin::cast::hook::run(&crate::jellyfin::cast::hook::CastTest {
            device: &config.device,
            file: &file,
            seconds,
            capture,
        }),
        Some(Command::BootConfig { .. }) => ExitCode::SUCCESS, // handled above
    }
}

/// Every problem goes to stderr (the journal) with the file it came from; only an unwritable
/// output directory is a failure, because the speaker must still start with defaults.
fn apply_boot_config(source: &Path, out: &Path) -> ExitCode {
    match boot_config::apply(source, out) {
        Ok(applied) => {
            for problem in &applied.problems {
                if problem.key.is_empty() {
                    eprintln!("boot config: {}: {}", source.display(), problem.message);
                } else {
                    eprintln!(
                        "boot config: {}: {}: {}",
                        source.display(),
                        problem.key,
                        problem.message
                    );
                }
            }
            eprintln!(
                "boot config: applied {} ({} problem(s)); runtime files in {}",
                source.display(),
                applied.problems.len(),
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: boot config: cannot write {}: {e}", out.display());
            ExitCode::from(1)
        }
    }
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("error: invalid configuration: {e}");
    ExitCode::from(ConfigError::EXIT_CODE)
}

/// The status page as seen from this machine: a wildcard listen address means loopback.
fn status_url(config: &config::Config) -> String {
    let listen = config
        .status
        .listen
        .replace("0.0.0.0", "127.0.0.1")
        .replace("[::]", "[::1]");
    format!("http://{listen}")
}

fn block_on<F: std::future::Future<Output = ExitCode>>(future: F) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(future),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(1)
        }
    }
}
