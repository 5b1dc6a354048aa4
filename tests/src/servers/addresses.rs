//! Where the test servers listen: the services addresses of the topology, both families.

use std::net::{IpAddr, SocketAddr};

use crate::topology::{SERVICES_V4, SERVICES_V6};

/// `port` on both services addresses.
pub(super) fn both_families(port: u16) -> [SocketAddr; 2] {
    [
        SocketAddr::new(IpAddr::V4(SERVICES_V4), port),
        SocketAddr::new(IpAddr::V6(SERVICES_V6), port),
    ]
}
