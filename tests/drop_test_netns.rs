//! `pispeaker drop-test` as users run it, in network namespaces: a stand-in daemon (a shell that
//! holds a connection to a stand-in access point on port 4070 and reconnects when told), a
//! stand-in status page that reports the loss and the recovery, and a second client on the same
//! port that must never be dropped. Covers `--cycles`, Ctrl-C during rule insertion, SIGHUP (an
//! SSH session that drops), and a kill -9 whose rules the next run removes.
//!
//! Host-only: it needs root, namespaces, iptables and bash (for `/dev/tcp`).

mod netns;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use netns::NetNs;
use pispeaker::connect::drop_rules::RULE_TAG;

const SPEAKER: &str = "10.234.0.1";
const STAND_IN_AP: &str = "10.234.0.2";
const AP_PORT: u16 = 4070;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rules_in(ns: &str) -> usize {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "iptables", "-S"])
        .output()
        .expect("iptables -S");
    String::from_utf8_lossy(&out.stdout)
        .matches(RULE_TAG)
        .count()
}

/// The stand-in access point: a heartbeat line per second on every connection.
fn start_ap(ns: &NetNs) {
    let name = ns.name.clone();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        netns::enter(&name);
        let listener = TcpListener::bind((STAND_IN_AP, AP_PORT)).expect("bind stand-in AP");
        ready_tx.send(()).ok();
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut n = 0u64;
                while stream.write_all(format!("ping {n}\n").as_bytes()).is_ok() {
                    n += 1;
                    std::thread::sleep(Duration::from_secs(1));
                }
            });
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("AP up");
}

/// Everything one scenario needs.
struct Setup {
    speaker: NetNs,
    _ap: NetNs,
    dir: tempfile::TempDir,
    config: PathBuf,
    fifo: PathBuf,
    daemon: Killed,
    /// The status page reports losses and recoveries (false: it never notices).
    notices: Arc<AtomicBool>,
    reconnects: Arc<AtomicU64>,
}

fn setup(prefix: &str, status_port: u16, notices: bool) -> Setup {
    let (speaker, ap) = NetNs::pair(prefix, SPEAKER, STAND_IN_AP);
    start_ap(&ap);
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("reconnect");
    netns::sh(&["mkfifo", fifo.to_str().unwrap()]);
    // The stand-in daemon: one AP connection on fd 3; a line on the FIFO makes it reconnect.
    let script = format!(
        "exec 3<>/dev/tcp/{STAND_IN_AP}/{AP_PORT} || exit 1\nwhile true; do read -r _ < {fifo}; exec 3>&-; exec 3<>/dev/tcp/{STAND_IN_AP}/{AP_PORT}; done\n",
        fifo = fifo.display()
    );
    let daemon = Killed(
        speaker
            .command("bash")
            .args(["-c", &script])
            .spawn()
            .expect("stand-in daemon"),
    );
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"Drop\"\ncache = \"{}\"\n\n[status]\nlisten = \"127.0.0.1:{status_port}\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let notices = Arc::new(AtomicBool::new(notices));
    let reconnects = Arc::new(AtomicU64::new(0));
    start_status_page(
        &speaker,
        status_port,
        &fifo,
        notices.clone(),
        reconnects.clone(),
    );
    Setup {
        speaker,
        _ap: ap,
        dir,
        config,
        fifo,
        daemon,
        notices,
        reconnects,
    }
}

/// The stand-in status page: connected; once the drop rules are in (and `notices`), one
/// "reconnecting" answer while the daemon is told to reconnect, then connected again.
fn start_status_page(
    ns: &NetNs,
    port: u16,
    fifo: &Path,
    notices: Arc<AtomicBool>,
    reconnects: Arc<AtomicU64>,
) {
    let name = ns.name.clone();
    let fifo = fifo.to_path_buf();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        netns::enter(&name);
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind status page");
        ready_tx.send(()).ok();
        // One loss per insertion of the rules.
        let mut noticed = false;
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut request = [0u8; 2048];
            let _ = stream.read(&mut request);
            let mut state = "connected";
            let rules = rules_in(&name);
            if rules == 0 {
                noticed = false;
            }
            if notices.load(Ordering::SeqCst) && rules == 2 && !noticed {
                noticed = true;
                // The daemon noticed: it reconnects (a new source port) and counts the loss.
                if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&fifo) {
                    let _ = f.write_all(b"go\n");
                }
                reconnects.fetch_add(1, Ordering::SeqCst);
                state = "reconnecting";
            }
            let count = reconnects.load(Ordering::SeqCst);
            let body = format!(
                "{{\"volume_percent\": 42.0, \"spotify\": {{\"state\": \"{state}\", \"reconnect_count\": {count}, \"last_loss\": null, \"playing\": true, \"sessions_alive\": 1}}}}"
            );
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("status page up");
}

impl Setup {
    /// Starts `pispeaker drop-test` in the speaker's namespace, output to a file.
    fn drop_test(&self, args: &[&str], path_prefix: Option<&Path>) -> (Killed, PathBuf) {
        let out = self.dir.path().join(format!(
            "drop-test-{}.log",
            Instant::now().elapsed().as_nanos()
        ));
        let log = std::fs::File::create(&out).unwrap();
        let mut command = self.speaker.command(env!("CARGO_BIN_EXE_pispeaker"));
        command
            .arg("--config")
            .arg(&self.config)
            .arg("drop-test")
            .args(["--pid", &self.daemon.0.id().to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(prefix) = path_prefix {
            let path = format!(
                "{}:{}",
                prefix.display(),
                std::env::var("PATH").unwrap_or_default()
            );
            command.env("PATH", path);
        }
        (Killed(command.spawn().expect("drop-test")), out)
    }

    fn until(&self, limit: Duration, what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + limit;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn wait_exit(child: &mut Killed, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "drop-test did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Killed, sig: i32) {
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, sig) }, 0);
}

/// A second client on the same port, in the speaker's namespace, counting heartbeats.
fn second_client(ns: &NetNs) -> mpsc::Receiver<u64> {
    let name = ns.name.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        netns::enter(&name);
        let stream = TcpStream::connect((STAND_IN_AP, AP_PORT)).expect("second client");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        let mut beats = 0u64;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(n) if n > 0 => {
                    beats += 1;
                    if tx.send(beats).is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    });
    rx
}

#[test]
fn three_cycles_drop_only_the_daemons_connection_and_print_a_summary() {
    if !netns::root_or_skip("three_cycles_drop_only_the_daemons_connection_and_print_a_summary") {
        return;
    }
    let s = setup("pisp-dtc", 45731, true);
    let beats = second_client(&s.speaker);
    beats
        .recv_timeout(Duration::from_secs(10))
        .expect("second client connected");
    let (mut run, out) = s.drop_test(&["--cycles", "3", "--timeout", "60"], None);
    let deadline = Instant::now() + Duration::from_secs(200);
    let status = loop {
        if let Some(status) = run.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "drop-test did not finish:\n{}",
            std::fs::read_to_string(&out).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let printed = std::fs::read_to_string(&out).unwrap();
    println!("--- drop-test --cycles 3 ---\n{printed}");
    assert!(status.success(), "{printed}");
    assert_eq!(printed.matches("rules removed").count(), 3, "{printed}");
    assert!(
        printed.contains("cycles:          3 of 3 run, 3 passed"),
        "{printed}"
    );
    assert!(printed.contains("sessions alive:  1"), "{printed}");
    assert_eq!(rules_in(&s.speaker.name), 0);
    assert_eq!(s.reconnects.load(Ordering::SeqCst), 3);
    // The other client on port 4070 never lost its connection.
    let mut last = 0;
    while let Ok(n) = beats.recv_timeout(Duration::from_secs(3)) {
        last = n;
        if n >= 3 {
            break;
        }
    }
    assert!(last > 0, "the second client still receives");
    let _ = &s.fifo;
}

#[test]
fn ctrl_c_during_rule_insertion_and_sighup_leave_no_rule() {
    if !netns::root_or_skip("ctrl_c_during_rule_insertion_and_sighup_leave_no_rule") {
        return;
    }
    let s = setup("pisp-dts", 45732, false);
    // An iptables that takes two seconds to insert: Ctrl-C lands in the middle.
    let wrapper_dir = s.dir.path().join("bin");
    std::fs::create_dir_all(&wrapper_dir).unwrap();
    let wrapper = wrapper_dir.join("iptables");
    let real = netns::sh(&["which", "iptables"]);
    let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\ncase \"$1\" in -I) sleep 2;; esac\nexec {real} \"$@\"\n"),
    )
    .unwrap();
    netns::sh(&["chmod", "+x", wrapper.to_str().unwrap()]);
    let (mut run, out) = s.drop_test(&[], Some(&wrapper_dir));
    s.until(Duration::from_secs(30), "insertion under way", || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("inserting:")
    });
    std::thread::sleep(Duration::from_millis(500));
    signal(&run, libc::SIGINT);
    let status = wait_exit(&mut run, Duration::from_secs(30));
    let printed = std::fs::read_to_string(&out).unwrap();
    assert!(!status.success(), "{printed}");
    assert!(printed.contains("interrupted"), "{printed}");
    assert_eq!(rules_in(&s.speaker.name), 0, "{printed}");

    // SIGHUP (the SSH session dropped) while the rules are in.
    let (mut run, out) = s.drop_test(&[], None);
    s.until(Duration::from_secs(30), "rules in", || {
        rules_in(&s.speaker.name) == 2
    });
    signal(&run, libc::SIGHUP);
    let status = wait_exit(&mut run, Duration::from_secs(30));
    let printed = std::fs::read_to_string(&out).unwrap();
    assert!(!status.success(), "{printed}");
    assert!(printed.contains("rules removed"), "{printed}");
    assert_eq!(rules_in(&s.speaker.name), 0, "{printed}");
    let _ = &s.notices;
}

#[test]
fn after_a_kill_9_the_next_run_removes_the_rules() {
    if !netns::root_or_skip("after_a_kill_9_the_next_run_removes_the_rules") {
        return;
    }
    let s = setup("pisp-dtk", 45733, false);
    let (mut run, _) = s.drop_test(&[], None);
    s.until(Duration::from_secs(30), "rules in", || {
        rules_in(&s.speaker.name) == 2
    });
    signal(&run, libc::SIGKILL);
    wait_exit(&mut run, Duration::from_secs(10));
    assert_eq!(rules_in(&s.speaker.name), 2, "kill -9 leaves them");
    // The next run cleans up first, then does its own drop (stopped with SIGTERM here).
    let (mut run, out) = s.drop_test(&[], None);
    s.until(Duration::from_secs(30), "second run's rules in", || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("inserting:")
            && rules_in(&s.speaker.name) == 2
    });
    signal(&run, libc::SIGTERM);
    wait_exit(&mut run, Duration::from_secs(30));
    let printed = std::fs::read_to_string(&out).unwrap();
    assert!(
        printed.contains("removed 2 rule(s) left behind by an earlier, interrupted drop-test"),
        "{printed}"
    );
    assert_eq!(rules_in(&s.speaker.name), 0, "{printed}");
}
