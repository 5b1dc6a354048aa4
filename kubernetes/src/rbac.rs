//! What an API call tried, and what a refusal of it means to the user.
//!
//! Every call to the API server is made under an [`Operation`]: the verb and resource an RBAC
//! rule would have to grant. When the server answers 403, [`describe_denial`] turns its
//! `Status` and that operation into the one line that tells the user which permission is
//! missing — the same words a Role needs (`verbs`, `resources`, `apiGroups`), so the fix is a
//! copy away.

use std::fmt;

use kube::core::Status;

/// One kind of API request, in RBAC terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The RBAC verb: get, list, watch, create, patch, delete.
    pub verb: &'static str,
    /// The resource as `kubectl auth can-i` spells it: `pods`, `pods/log`, `jobs.batch`.
    pub resource: &'static str,
    /// The namespace, or `None` for a cluster-wide request.
    pub namespace: Option<String>,
}

impl Operation {
    pub fn new(verb: &'static str, resource: &'static str, namespace: &str) -> Self {
        Self {
            verb,
            resource,
            namespace: Some(namespace.to_owned()),
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        match &self.namespace {
            Some(namespace) => write!(f, " in namespace {namespace}"),
            None => write!(f, " (cluster-wide)"),
        }
    }
}

/// The user's line for a 403 answer to `operation`.
pub fn describe_denial(status: &Status, operation: &Operation) -> String {
    let scope = match &operation.namespace {
        Some(namespace) => format!("in namespace {namespace}"),
        None => "cluster-wide".to_owned(),
    };
    let said = if status.message.is_empty() {
        status.reason.clone()
    } else {
        status.message.clone()
    };
    format!(
        "not allowed: needs `{}` on `{}` {scope} (Kubernetes said: {said})",
        operation.verb, operation.resource
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forbidden(message: &str) -> Status {
        Status {
            code: 403,
            reason: "Forbidden".into(),
            message: message.into(),
            ..Status::default()
        }
    }

    #[test]
    fn a_denied_create_names_the_verb_resource_and_namespace() {
        let status = forbidden(
            "pods is forbidden: User \"system:serviceaccount:mnk-rbac:limited\" cannot create \
             resource \"pods\" in API group \"\" in the namespace \"mnk-rbac\"",
        );
        let line = describe_denial(&status, &Operation::new("create", "pods", "mnk-rbac"));
        assert_eq!(
            line,
            "not allowed: needs `create` on `pods` in namespace mnk-rbac (Kubernetes said: pods \
             is forbidden: User \"system:serviceaccount:mnk-rbac:limited\" cannot create \
             resource \"pods\" in API group \"\" in the namespace \"mnk-rbac\")"
        );
    }

    #[test]
    fn subresources_and_groups_are_spelled_as_rbac_rules_spell_them() {
        let status = forbidden("jobs.batch is forbidden");
        let line = describe_denial(&status, &Operation::new("create", "jobs.batch", "team"));
        assert!(line.starts_with("not allowed: needs `create` on `jobs.batch` in namespace team"));
        let line = describe_denial(&status, &Operation::new("create", "pods/portforward", "t"));
        assert!(line.contains("`create` on `pods/portforward`"), "{line}");
    }

    #[test]
    fn a_cluster_wide_denial_says_so_and_falls_back_to_the_reason() {
        let operation = Operation {
            verb: "list",
            resource: "namespaces",
            namespace: None,
        };
        let line = describe_denial(&forbidden(""), &operation);
        assert_eq!(
            line,
            "not allowed: needs `list` on `namespaces` cluster-wide (Kubernetes said: Forbidden)"
        );
    }
}
