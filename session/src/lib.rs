//! The session: the namespaces, TUN device and files in which the user's command runs.
//!
//! The client (root via sudo, or an ordinary user: see `userns`) stays in the host's
//! namespaces, where it can reach the agent.
//! It re-executes its own binary as a hidden `__session` child, which builds the session —
//! new network, mount, UTS and PID namespaces; `lo` up; a TUN device with the target's
//! addresses, default routes and the tunnel's MTU; the target's resolv.conf and hosts; the
//! target's hostname — and hands the TUN descriptor back over a socketpair. When the client
//! says go, the child forks a minimal init, PID 1 of the session's PID namespace, which forks
//! the user's command (PID 2, as the invoking user). The client pumps the TUN's packets
//! through the tunnel and waits for the child, whose exit code is the command's and becomes
//! the client's own.
//!
//! Nothing of a session is named in the host's global state: its namespaces, interface and
//! mounts disappear with its last process and the client's TUN descriptor, whatever ends them,
//! and no process of it outlives its init, whose end is the command's.
//!
//! One file per job:
//!
//! - `spec`: what the caller asks for ([`SessionSpec`], [`SessionOptions`]) and its checks;
//! - `child_messages`: the messages on the socketpair (pure, unit-tested; framed by the wire
//!   crate's `framing`);
//! - `channel`: blocking frame I/O with descriptor passing (its [`MAX_FDS`] is also the room
//!   of the client's background-session control socket);
//! - `parent`: [`Session`] — starting the child, taking the TUN, waiting, signalling;
//! - `child`: [`child_main`] — the child's steps, from exec to `Go`;
//! - `init`: after `Go` — the child, the namespace's init and the command, and their signals;
//! - `namespaces`, `network` (with `netlink`), `mounts`, `identity`, `exec`: one step each;
//! - `hosts`: the target's hosts file with an entry for its own name (pure).
//! - `loopback`: the session's nftables table: the pod's localhost, and the outgoing filter's
//!   rules from `outgoing` (pure); `outgoing_relay`: the flows that filter keeps local,
//!   opened again from the host; `dns_filter` (pure) and `dns_relay`: the DNS filter, the
//!   session's queries answered by this machine's resolver or the target's by name.
//! - `served`: the ports the session's programs serve, watched once for the loopback redirect
//!   and the incoming side.
//! - `routed`: the routed path of a local target, the session's namespace joined to the
//!   target's by a veth.
//! - `remote_files`: the FUSE mount of the target's root and the binds of its paths.
//! - `userns`: what a session without root does differently: its user namespace and id maps,
//!   and the errors of a machine that forbids them.
//!
//! The privilege model is a seam ([`SessionPrivileges`]): a root client (via sudo) builds the
//! session in the host's user namespace and drops to the invoking user for the command; a
//! client without root has its child make a user namespace of its own first and build the same
//! session inside it (`userns`), the command keeping the user's own uid.

mod channel;
mod child;
mod child_messages;
mod dns_filter;
mod dns_relay;
mod error;
mod exec;
pub mod hosts;
mod identity;
mod init;
mod loopback;
mod mounts;
mod namespaces;
mod netlink;
mod network;
mod outgoing;
mod outgoing_relay;
mod parent;
mod remote_files;
mod routed;
mod served;
mod shadow;
mod socket_maker;
mod spec;
mod sysfs;
pub mod userns;

pub use channel::MAX_FDS;
pub use child::child_main;
// What a command joining a background session (the client's `background::join`) is made
// with: the same steps as the session's own command.
pub use child_messages::ResolvedUser;
pub use child_messages::{IdMap, IdMaps, IpFamily, SessionPrivileges, SetupFailure, SetupStep};
pub use dns_filter::{valid_name as valid_dns_name, DnsMode, DnsRules, NamePattern};
pub use error::SessionError;
pub use exec::command_env;
pub use exec::{compose_env, exec as exec_command, exit_code, CANNOT_EXECUTE};
pub use identity::invoking_user;
pub use identity::{become_user, identity_env, resolve as resolve_user};
pub use init::FORWARDED;
pub use mirrord_net_netfilter::sock_diag::Served;
pub use mounts::make_private;
pub use outgoing::{Destination, FilterMode, OutgoingRules};
pub use parent::Session;
pub use remote_files::{remote_root, REMOTE_ROOT, REMOTE_ROOT_ENV};
pub use spec::{
    tun_name_for, InvalidSpec, RemoteFiles, RunAs, ServeFiles, SessionOptions, SessionSpec,
    DEFAULT_TUN_NAME, HOSTS, RESOLV_CONF,
};
