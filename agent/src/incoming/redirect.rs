//! The steal's redirect, by whichever means the target's namespace has: an nftables table
//! owned by the agent's netlink socket ([`nft`](super::nft)), or an iptables chain held by
//! the agent's keeper process ([`iptables`](super::iptables)).

use std::fmt;
use std::io;
use std::os::fd::RawFd;

use super::iptables::Keeper;
use super::nft::Nft;

/// How the redirect is to be made: decided when the agent starts, before it drops
/// privileges, since the iptables keeper can only be started then.
pub enum RedirectWith {
    Nftables,
    Iptables(Keeper),
    /// Neither works here; said when the session first asks to steal.
    Unavailable(String),
}

/// The user's choice (`--redirect-with`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RedirectChoice {
    /// nftables where the target's kernel has it, iptables otherwise.
    Auto,
    Nftables,
    Iptables,
}

impl RedirectWith {
    /// Decides in the calling thread's network namespace (the target's).
    pub fn choose(choice: RedirectChoice) -> RedirectWith {
        let iptables = |why: Option<String>| match Keeper::start() {
            Ok(keeper) => {
                tracing::info!(chain = keeper.chain(), "stealing through iptables");
                RedirectWith::Iptables(keeper)
            }
            Err(err) => RedirectWith::Unavailable(match why {
                Some(why) => format!("{why}, and iptables does not work either: {err}"),
                None => format!("iptables does not work here: {err}"),
            }),
        };
        match choice {
            RedirectChoice::Nftables => RedirectWith::Nftables,
            RedirectChoice::Iptables => iptables(None),
            RedirectChoice::Auto => {
                match mirrord_net_netfilter::Socket::open().and_then(|mut s| s.ask_generation()) {
                    Ok(()) => RedirectWith::Nftables,
                    Err(err) => {
                        tracing::info!(
                            "the target's kernel has no nftables ({err}): trying iptables"
                        );
                        iptables(Some(format!("the target's kernel has no nftables ({err})")))
                    }
                }
            }
        }
    }
}

/// The redirect in place.
pub enum Redirect {
    Nftables(Nft),
    Iptables(Keeper),
}

impl Redirect {
    /// Makes the redirect to `listeners` (`table`: the nftables table's name).
    pub fn make(with: RedirectWith, table: &str, listeners: &[RawFd]) -> io::Result<Redirect> {
        match with {
            RedirectWith::Nftables => Nft::create(table).map(Redirect::Nftables).map_err(|err| {
                io::Error::new(
                    err.kind(),
                    format!("cannot create nftables table inet {table}: {err}"),
                )
            }),
            RedirectWith::Iptables(mut keeper) => {
                keeper.hand_listeners(listeners).map_err(|err| {
                    io::Error::new(
                        err.kind(),
                        format!("cannot hand the steal's listeners to the iptables keeper: {err}"),
                    )
                })?;
                Ok(Redirect::Iptables(keeper))
            }
            RedirectWith::Unavailable(why) => Err(io::Error::other(why)),
        }
    }

    /// Redirects exactly `ports` (`(target port, agent listener port)`), atomically.
    pub fn set_ports(&mut self, ports: &[(u16, u16)]) -> io::Result<()> {
        match self {
            Redirect::Nftables(nft) => nft.set_ports(ports),
            Redirect::Iptables(keeper) => keeper.set_ports(ports),
        }
    }
}

impl fmt::Display for Redirect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Redirect::Nftables(nft) => write!(f, "nftables table inet {}", nft.table()),
            Redirect::Iptables(keeper) => write!(f, "iptables chain {} (nat)", keeper.chain()),
        }
    }
}
