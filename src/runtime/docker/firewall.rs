//! Host firewall rules that keep isolated attempts off private ranges, link-local addresses and the host itself.
//!
//! Every attempt network's Linux bridge is named `tbw-…` ([`BRIDGE_PREFIX`]), so one set of rules matches them all
//! with `-i tbw-+`:
//! - [`EGRESS_CHAIN`], jumped to from `DOCKER-USER` (Docker consults it before its own forwarding rules; `FORWARD`
//!   when the daemon made no such chain): replies of existing connections, the operator's allow-list and DNS to the
//!   host's resolvers pass; private ranges, shared address space and link-local addresses (the cloud metadata
//!   address among them) are rejected; the rest of the internet passes.
//! - [`INPUT_CHAIN`], jumped to from `INPUT`: packets from an attempt to any address of the host itself are rejected
//!   (replies, the allow-list and DNS aside), so the worker's database and S3 server stay out of reach even when
//!   they listen beyond loopback.
//!
//! The same for IPv6 with `ip6tables` (unique-local and link-local ranges). Installing is idempotent: the chains are
//! rewritten whole in one `iptables-restore --noflush` transaction (no moment without rules), and each jump is added
//! only when missing, under a lock file so workers starting together on one host add it once. Docker's embedded DNS resolver lives inside the container's own network namespace and needs no
//! rule; the upstream queries it forwards do, hence the resolver exception.

use std::net::IpAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::config::Cidr;

/// The name every attempt bridge starts with (the rules match `-i tbw-+`).
pub const BRIDGE_PREFIX: &str = "tbw-";
/// The worker's chain for traffic an attempt sends through the host.
pub const EGRESS_CHAIN: &str = "TBW-EGRESS";
/// The worker's chain for traffic an attempt sends to the host itself.
pub const INPUT_CHAIN: &str = "TBW-INPUT";

/// IPv4 ranges an attempt may not reach: private (RFC 1918), shared address space (RFC 6598, carrier NAT and some
/// clouds' internal networks), link-local (the metadata address 169.254.169.254 among them), "this network".
const BLOCKED_V4: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "0.0.0.0/8",
];
/// IPv6 ranges an attempt may not reach: unique-local and link-local.
const BLOCKED_V6: &[&str] = &["fc00::/7", "fe80::/10"];

/// Held while installing, so two workers starting at once do not both add a missing jump.
const LOCK_FILE: &str = "/run/tbw-firewall.lock";

/// Longest wait for one `iptables` command (it waits for the xtables lock other programs may hold).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the rules could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FirewallError(String);

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn blocked(self) -> &'static [&'static str] {
        match self {
            Family::V4 => BLOCKED_V4,
            Family::V6 => BLOCKED_V6,
        }
    }

    fn reject(self) -> &'static str {
        match self {
            Family::V4 => "-j REJECT --reject-with icmp-admin-prohibited",
            Family::V6 => "-j REJECT --reject-with icmp6-adm-prohibited",
        }
    }

    fn holds(self, addr: &IpAddr) -> bool {
        matches!(
            (self, addr),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }
}

/// Installs (or refreshes) the rules for both address families. `allow` are the operator's exemptions; `resolvers`
/// the host's DNS servers. IPv4 must succeed; IPv6 failing is returned as a warning text (hosts without IPv6
/// support in the kernel are common, and Docker gives attempt networks no IPv6 addresses).
pub async fn install(
    allow: &[Cidr],
    resolvers: &[IpAddr],
) -> Result<Option<String>, FirewallError> {
    let _lock = lock().await?;
    install_family(Family::V4, allow, resolvers).await?;
    Ok(install_family(Family::V6, allow, resolvers)
        .await
        .err()
        .map(|e| e.0))
}

async fn install_family(
    family: Family,
    allow: &[Cidr],
    resolvers: &[IpAddr],
) -> Result<(), FirewallError> {
    run(family.tool(), &["-w", "-n", "-L", "INPUT"], None).await?;
    run(
        &format!("{}-restore", family.tool()),
        &["-w", "--noflush"],
        Some(&ruleset(family, allow, resolvers)),
    )
    .await?;
    // Docker makes DOCKER-USER (and keeps jumping to it first from FORWARD); without it, FORWARD itself.
    let forward = if run(family.tool(), &["-w", "-n", "-L", "DOCKER-USER"], None)
        .await
        .is_ok()
    {
        "DOCKER-USER"
    } else {
        "FORWARD"
    };
    let interfaces = format!("{BRIDGE_PREFIX}+");
    for (chain, target) in [(forward, EGRESS_CHAIN), ("INPUT", INPUT_CHAIN)] {
        let rule = ["-i", interfaces.as_str(), "-j", target];
        let check: Vec<&str> = ["-w", "-C", chain].iter().chain(&rule).copied().collect();
        if run(family.tool(), &check, None).await.is_err() {
            let insert: Vec<&str> = ["-w", "-I", chain, "1"]
                .iter()
                .chain(&rule)
                .copied()
                .collect();
            run(family.tool(), &insert, None).await?;
        }
    }
    Ok(())
}

/// Takes the host-wide install lock (released when the file is dropped).
async fn lock() -> Result<std::fs::File, FirewallError> {
    let locked = crate::runtime::blocking("taking the firewall lock", || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_FILE)?;
        file.lock()?;
        Ok::<_, std::io::Error>(file)
    });
    match tokio::time::timeout(COMMAND_TIMEOUT, locked).await {
        Ok(Ok(Ok(file))) => Ok(file),
        Ok(Ok(Err(e))) => Err(FirewallError(format!("cannot lock {LOCK_FILE}: {e}"))),
        Ok(Err(e)) => Err(FirewallError(e.to_string())),
        Err(_) => Err(FirewallError(format!(
            "{LOCK_FILE} stayed locked for {COMMAND_TIMEOUT:?}"
        ))),
    }
}

/// The two chains, written whole, in `iptables-restore` format. Declaring a chain that exists flushes it within
/// the same transaction.
fn ruleset(family: Family, allow: &[Cidr], resolvers: &[IpAddr]) -> String {
    let mut text = format!("*filter\n:{EGRESS_CHAIN} - [0:0]\n:{INPUT_CHAIN} - [0:0]\n");
    for chain in [EGRESS_CHAIN, INPUT_CHAIN] {
        text += &format!("-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n");
        for cidr in allow.iter().filter(|c| family.holds(&c.addr)) {
            text += &format!("-A {chain} -d {cidr} -j RETURN\n");
        }
        for resolver in resolvers.iter().filter(|a| family.holds(a)) {
            for proto in ["udp", "tcp"] {
                text += &format!("-A {chain} -d {resolver} -p {proto} --dport 53 -j RETURN\n");
            }
        }
    }
    for range in family.blocked() {
        text += &format!("-A {EGRESS_CHAIN} -d {range} {}\n", family.reject());
    }
    text += &format!("-A {INPUT_CHAIN} {}\nCOMMIT\n", family.reject());
    text
}

/// The host's DNS servers that containers' queries are forwarded to (loopback ones are reached by Docker from the
/// host side and need no exception).
pub fn host_resolvers() -> Vec<IpAddr> {
    let mut found = Vec::new();
    for path in ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"] {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for addr in parse_resolvers(&text) {
            if !found.contains(&addr) {
                found.push(addr);
            }
        }
    }
    found
}

fn parse_resolvers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            // A scoped IPv6 address (fe80::1%eth0) keeps its address part.
            let addr: IpAddr = words.next()?.split('%').next()?.parse().ok()?;
            (!addr.is_loopback()).then_some(addr)
        })
        .collect()
}

/// Runs one command with a bound; its stderr (first line) is the error.
async fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<(), FirewallError> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let work = async {
        let mut child = command
            .spawn()
            .map_err(|e| FirewallError(format!("cannot run {program}: {e}")))?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .await
                .map_err(|e| FirewallError(format!("cannot write to {program}: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| FirewallError(format!("{program} failed: {e}")))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or("").trim();
        Err(FirewallError(format!(
            "{program} {} failed ({}): {first}",
            args.join(" "),
            out.status
        )))
    };
    tokio::time::timeout(COMMAND_TIMEOUT, work)
        .await
        .map_err(|_| {
            FirewallError(format!(
                "{program} did not finish within {COMMAND_TIMEOUT:?}"
            ))
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_lets_replies_allow_list_and_dns_through_before_the_blocks() {
        let allow: Vec<Cidr> = vec!["10.9.0.0/16".parse().unwrap(), "fd00::/8".parse().unwrap()];
        let resolvers: Vec<IpAddr> = vec!["10.255.255.53".parse().unwrap()];
        let v4 = ruleset(Family::V4, &allow, &resolvers);
        let lines: Vec<&str> = v4.lines().collect();
        let at = |needle: &str| {
            lines
                .iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no {needle:?} in\n{v4}"))
        };
        assert!(at("-A TBW-EGRESS -d 10.9.0.0/16 -j RETURN") < at("-d 10.0.0.0/8 -j REJECT"));
        assert!(
            at("-A TBW-EGRESS -d 10.255.255.53 -p udp --dport 53 -j RETURN")
                < at("-d 10.0.0.0/8 -j REJECT")
        );
        for range in BLOCKED_V4 {
            at(&format!("-A TBW-EGRESS -d {range} -j REJECT"));
        }
        assert!(at("-A TBW-INPUT -d 10.9.0.0/16 -j RETURN") < at("-A TBW-INPUT -j REJECT"));
        assert!(
            !v4.contains("fd00::"),
            "an IPv6 exemption in the IPv4 rules:\n{v4}"
        );
        assert!(v4.ends_with("COMMIT\n"));
        let v6 = ruleset(Family::V6, &allow, &resolvers);
        assert!(v6.contains("-A TBW-EGRESS -d fd00::/8 -j RETURN"), "{v6}");
        assert!(v6.contains("-A TBW-EGRESS -d fe80::/10 -j REJECT"), "{v6}");
        assert!(!v6.contains("10.255.255.53"), "{v6}");
    }

    #[test]
    fn resolvers_come_from_resolv_conf_without_loopback() {
        let text = "# comment\nnameserver 10.255.255.53\nnameserver 127.0.0.53\nsearch lan\n\
                    nameserver fe80::1%eth0\nnameserver bogus\n";
        let found: Vec<String> = parse_resolvers(text)
            .iter()
            .map(IpAddr::to_string)
            .collect();
        assert_eq!(found, ["10.255.255.53", "fe80::1"]);
    }
}
