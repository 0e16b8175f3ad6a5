//! iptables rules that silently drop one TCP connection, as a user does on the device to test
//! recovery: a DROP on OUTPUT for the connection's source port and the mirror rule on INPUT. The
//! traffic vanishes without a reset, exactly like a dead Wi-Fi link, and every other connection
//! (discovery, the status page, a new access-point connection on another source port) keeps
//! working.
//!
//! Rules are tagged with a comment so they can be found and removed even after the process that
//! inserted them was killed ([`remove_stale`]); the guard removes them on drop, which covers
//! panics and early returns. Signal handling for Ctrl-C is the caller's job (it must drop the
//! guard).

use std::io;
use std::net::SocketAddr;
use std::process::Command;

use log::warn;

use super::ap_link::TcpConnection;

/// The comment every rule carries.
pub const RULE_TAG: &str = "pispeaker-drop-test";

/// The two rules for one connection, not yet inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropRules {
    /// Command that runs iptables: `["iptables"]`, or with a prefix such as
    /// `["ip", "netns", "exec", "ns1", "iptables"]`.
    program: Vec<String>,
    rules: [(String, Vec<String>); 2],
}

impl DropRules {
    /// Rules for `conn` as seen from the speaker: local = the speaker's end.
    pub fn for_connection(conn: &TcpConnection) -> Self {
        Self::new(conn.local, conn.remote)
    }

    pub fn new(local: SocketAddr, remote: SocketAddr) -> Self {
        let program = if remote.is_ipv6() {
            "ip6tables"
        } else {
            "iptables"
        };
        let tag = ["-m", "comment", "--comment", RULE_TAG, "-j", "DROP"];
        let output = [
            "-p",
            "tcp",
            "--sport",
            &local.port().to_string(),
            "-d",
            &remote.ip().to_string(),
            "--dport",
            &remote.port().to_string(),
        ]
        .iter()
        .chain(tag.iter())
        .map(|s| s.to_string())
        .collect();
        let input = [
            "-p",
            "tcp",
            "--dport",
            &local.port().to_string(),
            "-s",
            &remote.ip().to_string(),
            "--sport",
            &remote.port().to_string(),
        ]
        .iter()
        .chain(tag.iter())
        .map(|s| s.to_string())
        .collect();
        Self {
            program: vec![program.to_string()],
            rules: [("OUTPUT".into(), output), ("INPUT".into(), input)],
        }
    }

    /// Runs iptables through `prefix` (e.g. `ip netns exec NAME`).
    pub fn with_prefix(mut self, prefix: &[&str]) -> Self {
        let mut program: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
        program.append(&mut self.program);
        self.program = program;
        self
    }

    /// The iptables argument lists, for display and tests.
    pub fn describe(&self) -> Vec<String> {
        self.rules
            .iter()
            .map(|(chain, args)| {
                format!("{} -I {chain} {}", self.program.join(" "), args.join(" "))
            })
            .collect()
    }

    /// Inserts both rules. If the second fails, the first is removed again.
    pub fn insert(self) -> io::Result<InsertedRules> {
        let mut inserted = InsertedRules {
            rules: self,
            active: 0,
        };
        for i in 0..2 {
            let (chain, args) = &inserted.rules.rules[i];
            run(&inserted.rules.program, "-I", chain, args)?;
            inserted.active = i + 1;
        }
        Ok(inserted)
    }
}

/// Inserted rules; removed on drop.
#[derive(Debug)]
pub struct InsertedRules {
    rules: DropRules,
    /// How many of the rules are in the kernel (they go in in order).
    active: usize,
}

impl InsertedRules {
    /// Removes the rules now, reporting failure (drop only logs it).
    pub fn remove(mut self) -> io::Result<()> {
        self.remove_inner()
    }

    fn remove_inner(&mut self) -> io::Result<()> {
        let mut first_error = None;
        while self.active > 0 {
            let (chain, args) = &self.rules.rules[self.active - 1];
            if let Err(e) = run(&self.rules.program, "-D", chain, args) {
                first_error.get_or_insert(e);
            }
            self.active -= 1;
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for InsertedRules {
    fn drop(&mut self) {
        if let Err(e) = self.remove_inner() {
            warn!(
                "could not remove the drop-test iptables rules ({e}); remove them with: {}",
                self.rules
                    .describe()
                    .iter()
                    .map(|r| r.replace(" -I ", " -D "))
                    .collect::<Vec<_>>()
                    .join(" ; ")
            );
        }
    }
}

/// Removes rules tagged [`RULE_TAG`] that a killed run left behind. Returns how many.
pub fn remove_stale(prefix: &[&str]) -> io::Result<usize> {
    let mut removed = 0;
    for family in ["iptables", "ip6tables"] {
        let mut program: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
        program.push(family.to_string());
        let listing = match output(&program, &["-S"]) {
            Ok(text) => text,
            // ip6tables may be missing where IPv6 is off: nothing of ours can be there.
            Err(_) if family == "ip6tables" => continue,
            Err(e) => return Err(e),
        };
        for line in listing.lines().filter(|l| l.contains(RULE_TAG)) {
            // "-A OUTPUT -p tcp ... -j DROP" → "-D OUTPUT -p tcp ... -j DROP"
            let Some(rest) = line.strip_prefix("-A ") else {
                continue;
            };
            let args: Vec<String> = std::iter::once("-D".to_string())
                .chain(
                    rest.split_whitespace()
                        .map(|s| s.trim_matches('"').to_string()),
                )
                .collect();
            let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
            output(&program, &arg_refs)?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn run(program: &[String], op: &str, chain: &str, args: &[String]) -> io::Result<()> {
    let mut full: Vec<&str> = vec![op, chain];
    full.extend(args.iter().map(String::as_str));
    output(program, &full).map(|_| ())
}

fn output(program: &[String], args: &[&str]) -> io::Result<String> {
    let (cmd, prefix_args) = program
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty iptables command"))?;
    let out = Command::new(cmd)
        .args(prefix_args)
        .args(args)
        .output()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run {cmd}: {e} (install iptables)"),
            )
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "{} {} failed: {}",
            program.join(" "),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_only_the_one_connection_in_both_directions() {
        let rules = DropRules::new(
            "10.0.0.2:41716".parse().unwrap(),
            "193.31.42.30:4070".parse().unwrap(),
        );
        let text = rules.describe();
        assert_eq!(
            text[0],
            "iptables -I OUTPUT -p tcp --sport 41716 -d 193.31.42.30 --dport 4070 -m comment --comment pispeaker-drop-test -j DROP"
        );
        assert_eq!(
            text[1],
            "iptables -I INPUT -p tcp --dport 41716 -s 193.31.42.30 --sport 4070 -m comment --comment pispeaker-drop-test -j DROP"
        );
    }

    #[test]
    fn ipv6_uses_ip6tables_and_prefix_goes_first() {
        let rules = DropRules::new(
            "[2001:db8::2]:50000".parse().unwrap(),
            "[2001:db8::1]:4070".parse().unwrap(),
        )
        .with_prefix(&["ip", "netns", "exec", "x"]);
        assert!(rules.describe()[0].starts_with("ip netns exec x ip6tables -I OUTPUT"));
    }

    #[test]
    fn a_missing_iptables_is_an_error_not_a_panic() {
        let rules = DropRules::new(
            "10.0.0.2:1".parse().unwrap(),
            "10.0.0.1:4070".parse().unwrap(),
        )
        .with_prefix(&["/nonexistent/pispeaker-test-wrapper"]);
        assert!(rules.insert().is_err());
    }
}
