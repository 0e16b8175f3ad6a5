//! The command line: `pispeaker [run]` runs the speaker; the subcommands are tools around it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{self, ConfigArgs, ConfigError};
use crate::connect::drop_test::{self, DropTestOptions};
use crate::{
    board, board_overlay, boot_config, boot_password, daemon, logging, system_settings, update,
};

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
        /// The Wi-Fi and SSH settings made in the web app (they fill what the boot partition
        /// leaves unset)
        #[arg(long)]
        system_store: Option<PathBuf>,
    },
    /// SD image: write the device-tree overlay for pispeaker.toml's board where config.txt
    /// includes it (run at every boot, before the speaker)
    BoardOverlay {
        /// The settings file on the boot partition
        #[arg(long, default_value = boot_config::DEFAULT_SOURCE)]
        source: PathBuf,
        /// The file config.txt includes
        #[arg(long, default_value = board_overlay::DEFAULT_TARGET)]
        target: PathBuf,
        /// If this mount point is read-only, remount it read-write for the write only
        #[arg(long)]
        remount: Option<PathBuf>,
        /// Reboot when the overlay changed, so the firmware applies it; at most once per change
        /// (remembered in this file, on a writable partition)
        #[arg(long)]
        reboot_stamp: Option<PathBuf>,
    },
    /// SD image: hash `admin-password` from the boot partition into the web app's password file
    /// and remove it from the card (run at every boot, as root, before the speaker)
    AdoptPassword {
        /// The boot partition's mount point
        #[arg(long, default_value = "/boot/firmware")]
        boot: PathBuf,
        /// The speaker's state directory (the password file gets its owner)
        #[arg(long, default_value = "/var/lib/pispeaker")]
        state: PathBuf,
        /// If this mount point is read-only, remount it read-write for the removal only
        #[arg(long)]
        remount: Option<PathBuf>,
    },
    /// SD image: apply the Wi-Fi/SSH change the web app requested (run as root by
    /// pispeaker-apply-system.path when the request appears)
    ApplySystem {
        /// The web app's request (taken and removed)
        #[arg(long, default_value = "/var/lib/pispeaker/system-request.json")]
        request: PathBuf,
        /// Where the web app's Wi-Fi and SSH settings are kept (root only)
        #[arg(long, default_value = system_settings::DEFAULT_STORE)]
        store: PathBuf,
        /// The settings file on the boot partition (its Wi-Fi and SSH win)
        #[arg(long, default_value = boot_config::DEFAULT_SOURCE)]
        source: PathBuf,
        /// The boot config's runtime directory
        #[arg(long, default_value = boot_config::DEFAULT_OUT_DIR)]
        out: PathBuf,
        /// Restart Wi-Fi and switch SSH on or off when their files changed
        #[arg(long)]
        restart_services: bool,
    },
    /// SD image: install a signed update bundle (a file, or an http(s) URL rauc reads) into
    /// the other root slot; it runs after the next reboot
    Update {
        /// The bundle, pispeaker-<version>-armhf.raucb, or its URL
        source: String,
        /// Only check that the bundle is signed, for this speaker and newer; install nothing
        #[arg(long)]
        check_only: bool,
        /// RAUC's configuration (compatible string and trusted keyring)
        #[arg(long, default_value = update::DEFAULT_SYSTEM_CONF)]
        rauc_conf: PathBuf,
        /// Trust this certificate instead of the keyring in the RAUC configuration
        #[arg(long)]
        keyring: Option<PathBuf>,
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
    if let Some(Command::BootConfig {
        source,
        out,
        system_store,
    }) = &cli.command
    {
        return apply_boot_config(source, out, system_store.as_deref());
    }
    if let Some(Command::ApplySystem {
        request,
        store,
        source,
        out,
        restart_services,
    }) = &cli.command
    {
        return apply_system(
            &system_settings::Paths {
                request: request.clone(),
                store: store.clone(),
                source: source.clone(),
                out: out.clone(),
            },
            *restart_services,
        );
    }
    if let Some(Command::BoardOverlay {
        source,
        target,
        remount,
        reboot_stamp,
    }) = &cli.command
    {
        return apply_board_overlay(
            &board_overlay::Paths {
                source: source.clone(),
                target: target.clone(),
                remount: remount.clone(),
            },
            reboot_stamp.as_deref(),
        );
    }
    if let Some(Command::AdoptPassword {
        boot,
        state,
        remount,
    }) = &cli.command
    {
        return adopt_password(&boot_password::Paths {
            boot: boot.clone(),
            state: state.clone(),
            remount: remount.clone(),
        });
    }
    // An update must work when the speaker's configuration is broken: it may be the fix.
    if let Some(Command::Update {
        source,
        check_only,
        rauc_conf,
        keyring,
    }) = &cli.command
    {
        return update::run(&update::Options {
            source: source.clone(),
            conf: rauc_conf.clone(),
            keyring: keyring.clone(),
            check_only: *check_only,
            running_version: update::RUNNING_VERSION.to_string(),
        });
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
        Some(Command::BootConfig { .. })
        | Some(Command::BoardOverlay { .. })
        | Some(Command::AdoptPassword { .. })
        | Some(Command::ApplySystem { .. })
        | Some(Command::Update { .. }) => {
            ExitCode::SUCCESS // handled above
        }
    }
}

/// Every problem goes to stderr (the journal) with the file it came from; only an unwritable
/// output directory is a failure, because the speaker must still start with defaults.
fn apply_boot_config(source: &Path, out: &Path, store: Option<&Path>) -> ExitCode {
    match boot_config::apply_with_store(source, out, store) {
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

/// Applies the web app's Wi-Fi/SSH request and logs the outcome (field names, never a value of
/// the passphrase). A refused request is reported to the web app, not a unit failure.
fn apply_system(paths: &system_settings::Paths, restart_services: bool) -> ExitCode {
    let (outcome, effects) = match system_settings::apply_request(paths) {
        Ok(Some(done)) => done,
        Ok(None) => {
            eprintln!(
                "system settings: no request at {} (nothing to do)",
                paths.request.display()
            );
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!(
                "error: system settings: cannot apply {}: {e}",
                paths.request.display()
            );
            return ExitCode::from(1);
        }
    };
    match &outcome.error {
        Some(e) => eprintln!("system settings: refused: {}: {}", e.field, e.message),
        None if outcome.changed.is_empty() => eprintln!("system settings: nothing changed"),
        None => eprintln!("system settings: applied {}", outcome.changed.join(", ")),
    }
    if restart_services {
        let mut commands: Vec<[&str; 3]> = Vec::new();
        if effects.wifi_changed {
            commands.push(["--no-block", "restart", "wpa_supplicant@wlan0.service"]);
        }
        if effects.ssh_changed {
            let verb = if effects.ssh_on { "restart" } else { "stop" };
            commands.push(["--no-block", verb, "ssh.service"]);
        }
        for args in commands {
            match std::process::Command::new("systemctl").args(args).status() {
                Ok(status) if status.success() => {
                    eprintln!("system settings: systemctl {}", args[1..].join(" "))
                }
                Ok(status) => eprintln!(
                    "system settings: systemctl {} failed ({status}); it applies at the next boot",
                    args[1..].join(" ")
                ),
                Err(e) => eprintln!(
                    "system settings: cannot run systemctl ({e}); the change applies at the next boot"
                ),
            }
        }
    }
    ExitCode::SUCCESS
}

/// Logs where a password came from (never the password). A failure to store it leaves the file
/// on the card for the next boot and exits 1 (the journal shows it); the speaker starts anyway.
fn adopt_password(paths: &boot_password::Paths) -> ExitCode {
    let auth = crate::web::auth::Auth::new(&paths.state);
    match boot_password::adopt(paths, &auth) {
        Ok(outcomes) => {
            for outcome in &outcomes {
                match outcome {
                    boot_password::Outcome::Adopted { from } => eprintln!(
                        "admin password: the web app's password is now the one from {}; removed it from the card",
                        from.display()
                    ),
                    boot_password::Outcome::Refused { from, why } => eprintln!(
                        "admin password: {} not used: {why}; removed it from the card (write a longer one there to try again)",
                        from.display()
                    ),
                }
            }
            if outcomes.is_empty() {
                eprintln!(
                    "admin password: none on {} (nothing to do)",
                    paths.boot.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "error: admin password: cannot store it in {} ({e}); it stays on the card and is tried again at the next boot",
                paths.state.display()
            );
            ExitCode::from(1)
        }
    }
}

/// Logs what happened to the overlay file and reboots when the firmware has to apply a change.
/// Nothing here may stop the boot: every failure is logged and the Pi boots with the old overlay.
fn apply_board_overlay(paths: &board_overlay::Paths, reboot_stamp: Option<&Path>) -> ExitCode {
    let target = paths.target.display();
    let board_text = |board: &Option<String>| match board {
        Some(name) => format!("board {name:?}"),
        None => "no board set".to_string(),
    };
    match board_overlay::apply(paths) {
        Ok(board_overlay::Outcome::Unchanged { board }) => {
            eprintln!(
                "board overlay: {target} is up to date for {}",
                board_text(&board)
            );
            if let Some(stamp) = reboot_stamp {
                if let Err(e) = board_overlay::clear_stamp(stamp) {
                    eprintln!("board overlay: cannot remove {}: {e}", stamp.display());
                }
            }
            ExitCode::SUCCESS
        }
        Ok(board_overlay::Outcome::LeftAlone { why }) => {
            eprintln!(
                "board overlay: {why}; {target} stays as it was (the overlay does not change)"
            );
            ExitCode::SUCCESS
        }
        Ok(board_overlay::Outcome::Written { board, reboot }) => {
            eprintln!("board overlay: wrote {target} for {}", board_text(&board));
            if !reboot {
                return ExitCode::SUCCESS;
            }
            let Some(stamp) = reboot_stamp else {
                eprintln!("board overlay: the new overlay applies at the next boot");
                return ExitCode::SUCCESS;
            };
            let wanted = std::fs::read(&paths.target).unwrap_or_default();
            match board_overlay::reboot_allowed(stamp, &wanted) {
                Ok(true) => {
                    eprintln!("board overlay: rebooting once so the firmware applies it");
                    match std::process::Command::new("systemctl")
                        .args(["--no-block", "reboot"])
                        .status()
                    {
                        Ok(status) if status.success() => ExitCode::SUCCESS,
                        Ok(status) => {
                            eprintln!("board overlay: systemctl reboot failed ({status}); the overlay applies at the next boot");
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            eprintln!("board overlay: cannot run systemctl reboot ({e}); the overlay applies at the next boot");
                            ExitCode::SUCCESS
                        }
                    }
                }
                Ok(false) => {
                    eprintln!(
                        "error: board overlay: the last boot already rebooted for this same change and the firmware still did not get it ({target} did not keep it?); not rebooting again. Check the SD card."
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!(
                        "error: board overlay: cannot write {} ({e}); not rebooting, so that a failure cannot loop. The overlay applies at the next boot.",
                        stamp.display()
                    );
                    ExitCode::SUCCESS
                }
            }
        }
        Err(e) => {
            eprintln!("error: board overlay: cannot update {target}: {e}; the old overlay stays");
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
