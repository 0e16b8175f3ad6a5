//! The command line: `pispeaker [run]` runs the speaker; the subcommands are tools around it.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{self, ConfigArgs, ConfigError};
use crate::connect::drop_test::{self, DropTestOptions};
use crate::{board, daemon, logging};

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
    let config = match config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => return config_error(&e),
    };
    match cli.command {
        None | Some(Command::Run) => daemon::run(config),
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
            }
            ExitCode::SUCCESS
        }
        Some(Command::Status) => block_on(crate::status::print_status(status_url(&config))),
        Some(Command::DropTest { pid, timeout }) => block_on(drop_test::run(DropTestOptions {
            pid,
            status_url: status_url(&config),
            timeout: Duration::from_secs(timeout),
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
