//! What the agent's Job pod asks of its node: resource requests and limits, and the
//! capabilities it runs with.
//!
//! The limits are the user's (`--agent-cpu`, `--agent-memory`); the requests are small
//! fixed amounts ([`CPU_REQUEST`], [`MEMORY_REQUEST`]), lowered to the limit when a limit is
//! smaller, so an agent is admitted on a busy node and still cannot take it over. An
//! ephemeral container cannot have either: the API refuses `resources` on ephemeral
//! containers (they share the pod's, which cannot change after creation), so there the
//! agent lives within the target pod's own limits.
//!
//! The container is not `privileged`: it gets the capabilities the agent needs before it
//! drops them (see the agent's `privileges` module) and nothing else: `SYS_ADMIN` and
//! `SYS_PTRACE` to enter the target's namespaces and open its root, `SETPCAP` to shrink its
//! bounding set, and the ones it may keep for the session. `--agent-privileged` asks for a
//! privileged container instead, for a runtime whose default profile (AppArmor, a seccomp
//! default) refuses `setns` even with those capabilities.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Capabilities, ResourceRequirements, SecurityContext};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The CPU every agent asks for.
pub const CPU_REQUEST: &str = "100m";
/// The memory every agent asks for.
pub const MEMORY_REQUEST: &str = "64Mi";
/// The default CPU limit.
pub const DEFAULT_CPU_LIMIT: &str = "1";
/// The default memory limit.
pub const DEFAULT_MEMORY_LIMIT: &str = "1Gi";

/// What the agent's container asks for and at most may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentResources {
    pub cpu: CpuQuantity,
    pub memory: MemoryQuantity,
}

impl Default for AgentResources {
    fn default() -> Self {
        Self {
            cpu: DEFAULT_CPU_LIMIT.parse().expect("a valid default"),
            memory: DEFAULT_MEMORY_LIMIT.parse().expect("a valid default"),
        }
    }
}

impl AgentResources {
    /// The container's `resources`.
    pub fn requirements(&self) -> ResourceRequirements {
        let cpu_request: CpuQuantity = CPU_REQUEST.parse().expect("a valid request");
        let memory_request: MemoryQuantity = MEMORY_REQUEST.parse().expect("a valid request");
        let cpu_request = cpu_request.min(self.cpu.clone());
        let memory_request = memory_request.min(self.memory.clone());
        ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity(cpu_request.text)),
                ("memory".to_owned(), Quantity(memory_request.text)),
            ])),
            limits: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity(self.cpu.text.clone())),
                ("memory".to_owned(), Quantity(self.memory.text.clone())),
            ])),
            ..ResourceRequirements::default()
        }
    }
}

/// The capabilities the agent's Job container asks for instead of `privileged`.
pub const CAPABILITIES: &[&str] = &[
    "SYS_ADMIN",
    "SYS_PTRACE",
    "SETPCAP",
    "NET_ADMIN",
    "NET_RAW",
    "NET_BIND_SERVICE",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "CHOWN",
    "FOWNER",
    "FSETID",
];

/// The agent container's security context: [`CAPABILITIES`], or privileged.
pub fn security_context(privileged: bool) -> SecurityContext {
    if privileged {
        return SecurityContext {
            privileged: Some(true),
            ..SecurityContext::default()
        };
    }
    SecurityContext {
        privileged: Some(false),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            add: Some(CAPABILITIES.iter().map(|cap| (*cap).to_owned()).collect()),
            drop: Some(vec!["ALL".to_owned()]),
        }),
        ..SecurityContext::default()
    }
}

/// A CPU amount as Kubernetes writes it (`500m`, `1`, `1.5`), kept as written and as
/// millicores to compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuQuantity {
    text: String,
    millis: u64,
}

impl std::str::FromStr for CpuQuantity {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{text:?} is not a CPU amount (e.g. 500m, 1, 1.5)");
        let millis = match text.strip_suffix('m') {
            Some(millis) => millis.parse::<u64>().map_err(|_| bad())?,
            None => {
                let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
                if fraction.len() > 3 || !fraction.chars().all(|c| c.is_ascii_digit()) {
                    return Err(bad());
                }
                let whole = whole.parse::<u64>().map_err(|_| bad())?;
                let fraction = format!("{fraction:0<3}")
                    .parse::<u64>()
                    .map_err(|_| bad())?;
                whole
                    .checked_mul(1000)
                    .and_then(|m| m.checked_add(fraction))
                    .ok_or_else(bad)?
            }
        };
        if millis == 0 {
            return Err(format!("{text:?}: the agent needs some CPU"));
        }
        Ok(Self {
            text: text.to_owned(),
            millis,
        })
    }
}

impl PartialOrd for CpuQuantity {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for CpuQuantity {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.millis.cmp(&other.millis)
    }
}

/// A memory amount as Kubernetes writes it (`512Mi`, `1Gi`, `500M`, bytes), kept as
/// written and as bytes to compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryQuantity {
    text: String,
    bytes: u64,
}

/// The agent's smallest useful memory limit.
const MIN_MEMORY: u64 = 16 << 20;

impl std::str::FromStr for MemoryQuantity {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{text:?} is not a memory amount (e.g. 256Mi, 1Gi, 500M)");
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, suffix) = text.split_at(split);
        let number = number.parse::<u64>().map_err(|_| bad())?;
        let unit: u64 = match suffix {
            "" => 1,
            "k" => 1000,
            "M" => 1000_u64.pow(2),
            "G" => 1000_u64.pow(3),
            "T" => 1000_u64.pow(4),
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "Ti" => 1 << 40,
            _ => return Err(bad()),
        };
        let bytes = number.checked_mul(unit).ok_or_else(bad)?;
        if bytes < MIN_MEMORY {
            return Err(format!("{text:?}: the agent needs at least 16Mi"));
        }
        Ok(Self {
            text: text.to_owned(),
            bytes,
        })
    }
}

impl PartialOrd for MemoryQuantity {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for MemoryQuantity {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.bytes.cmp(&other.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_as_kubernetes_writes_them_and_bad_ones_are_one_line() {
        let cpu = |text: &str| text.parse::<CpuQuantity>().map(|q| q.millis);
        assert_eq!(cpu("500m"), Ok(500));
        assert_eq!(cpu("1"), Ok(1000));
        assert_eq!(cpu("1.5"), Ok(1500));
        assert_eq!(cpu("0.25"), Ok(250));
        for bad in ["", "m", "1.2345", "one", "-1", "0", "1e3"] {
            let err = cpu(bad).unwrap_err();
            assert!(!err.contains('\n') && err.contains(bad), "{err}");
        }
        let memory = |text: &str| text.parse::<MemoryQuantity>().map(|q| q.bytes);
        assert_eq!(memory("64Mi"), Ok(64 << 20));
        assert_eq!(memory("1Gi"), Ok(1 << 30));
        assert_eq!(memory("500M"), Ok(500_000_000));
        assert_eq!(memory("33554432"), Ok(32 << 20));
        for bad in ["", "Mi", "12Qi", "1.5Gi", "1Mi"] {
            let err = memory(bad).unwrap_err();
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn requests_are_small_and_never_above_the_limits() {
        let value = |r: &AgentResources| serde_json::to_value(r.requirements()).unwrap();
        let default = value(&AgentResources::default());
        assert_eq!(default["requests"]["cpu"], CPU_REQUEST);
        assert_eq!(default["requests"]["memory"], MEMORY_REQUEST);
        assert_eq!(default["limits"]["cpu"], DEFAULT_CPU_LIMIT);
        assert_eq!(default["limits"]["memory"], DEFAULT_MEMORY_LIMIT);
        let small = value(&AgentResources {
            cpu: "50m".parse().unwrap(),
            memory: "32Mi".parse().unwrap(),
        });
        assert_eq!(small["requests"]["cpu"], "50m");
        assert_eq!(small["requests"]["memory"], "32Mi");
        assert_eq!(small["limits"]["memory"], "32Mi");
    }

    #[test]
    fn the_container_asks_for_capabilities_not_privilege() {
        let value = serde_json::to_value(security_context(false)).unwrap();
        assert_eq!(value["privileged"], false);
        assert_eq!(value["capabilities"]["drop"], serde_json::json!(["ALL"]));
        let added = value["capabilities"]["add"].as_array().unwrap();
        for cap in ["SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN"] {
            assert!(added.contains(&cap.into()), "{cap} missing: {value}");
        }
        assert!(!added.contains(&"SYS_MODULE".into()));
        let value = serde_json::to_value(security_context(true)).unwrap();
        assert_eq!(value["privileged"], true);
    }
}
