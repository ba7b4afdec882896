//! The one place a request's permissions are decided: an [`Authorizer`] built per request
//! from the metadata's ACLs, the `authorizer.*` settings and the connection's principal and
//! host. Handlers ask it which operations Kafka's `KafkaApis` checks; it logs refusals.

use std::sync::Arc;

use super::Peer;
use crate::cluster::ClusterMetadata;
use crate::security::Principal;
use crate::security::acl::{Acls, AuthorizerSettings, CLUSTER_NAME, Operation, ResourceType};

/// A request's permissions: everything (authorizer disabled, or a super user), or what the
/// ACLs grant this principal from this host.
pub struct Authorizer {
    checked: Option<Checked>,
}

struct Checked {
    acls: Arc<Acls>,
    principal: Principal,
    /// The peer's address without the leading `/`, as ACL hosts are written.
    host: String,
    allow_if_none: bool,
}

impl Authorizer {
    pub fn new(settings: &AuthorizerSettings, meta: &ClusterMetadata, peer: &Peer) -> Self {
        if !settings.enabled {
            return Self::allow_all();
        }
        let principal = peer.principal();
        if settings.super_users.contains(&principal) {
            return Self::allow_all();
        }
        Self {
            checked: Some(Checked {
                acls: meta.acls.clone(),
                principal,
                host: peer.host.trim_start_matches('/').to_string(),
                allow_if_none: settings.allow_everyone_if_no_acl_found,
            }),
        }
    }

    /// What the broker's own work is allowed (and every request when authorization is off).
    pub fn allow_all() -> Self {
        Self { checked: None }
    }

    pub fn allows(&self, operation: Operation, resource_type: ResourceType, name: &str) -> bool {
        let Some(c) = &self.checked else {
            return true;
        };
        let allowed = c.acls.authorize(
            &c.principal,
            &c.host,
            operation,
            resource_type,
            name,
            c.allow_if_none,
        );
        if !allowed {
            tracing::debug!(
                principal = %c.principal,
                host = c.host,
                %operation,
                %resource_type,
                name,
                "authorization denied"
            );
        }
        allowed
    }

    pub fn topic(&self, operation: Operation, name: &str) -> bool {
        self.allows(operation, ResourceType::Topic, name)
    }

    pub fn group(&self, operation: Operation, name: &str) -> bool {
        self.allows(operation, ResourceType::Group, name)
    }

    pub fn cluster(&self, operation: Operation) -> bool {
        self.allows(operation, ResourceType::Cluster, CLUSTER_NAME)
    }

    /// Kafka's `authorizeByResourceType`: whether some resource of the type allows
    /// `operation`.
    pub fn any(&self, operation: Operation, resource_type: ResourceType) -> bool {
        self.checked.as_ref().is_none_or(|c| {
            c.acls.authorize_any(
                &c.principal,
                &c.host,
                operation,
                resource_type,
                c.allow_if_none,
            )
        })
    }
}
