//! CreateAcls, DescribeAcls and DeleteAcls, with the ACL model of [`crate::security::acl`].

use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::create_acls_request::{AclCreation, CreateAclsRequest};
use kafka_protocol::messages::create_acls_response::CreateAclsResponse;
use kafka_protocol::messages::delete_acls_request::{DeleteAclsFilter, DeleteAclsRequest};
use kafka_protocol::messages::delete_acls_response::DeleteAclsResponse;
use kafka_protocol::messages::describe_acls_request::DescribeAclsRequest;
use kafka_protocol::messages::describe_acls_response::DescribeAclsResponse;
use kafka_protocol::protocol::StrBytes;

use super::Client;
use super::error::{Error, Result, check};
use crate::security::acl::{
    ANY_CODE, AclBinding, AclBindingFilter, MATCH_CODE, PatternFilter, PatternType, ResourceType,
};

fn text(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// A binding from a response's codes; an unknown code is a protocol error.
fn binding(
    resource_type: i8,
    name: &str,
    pattern_type: i8,
    principal: &str,
    host: &str,
    operation: i8,
    permission: i8,
) -> Result<AclBinding> {
    AclBinding::from_request(
        resource_type,
        name,
        pattern_type,
        principal,
        host,
        operation,
        permission,
    )
    .map_err(|e| {
        Error::Protocol(format!(
            "the broker described an ACL we cannot read: {}",
            e.0
        ))
    })
}

/// A filter's codes as DescribeAcls and DeleteAcls carry them (1: any, 2: match).
struct FilterCodes {
    resource_type: i8,
    pattern_type: i8,
    operation: i8,
    permission: i8,
}

fn codes(filter: &AclBindingFilter) -> FilterCodes {
    FilterCodes {
        resource_type: filter.resource_type.map_or(ANY_CODE, ResourceType::code),
        pattern_type: match filter.pattern {
            PatternFilter::Any => ANY_CODE,
            PatternFilter::Match => MATCH_CODE,
            PatternFilter::Exactly(t) => PatternType::code(t),
        },
        operation: filter.operation.map_or(ANY_CODE, |o| o.code()),
        permission: filter.permission.map_or(ANY_CODE, |p| p.code()),
    }
}

impl Client {
    /// CreateAcls; the first binding the broker refused is the error.
    pub fn create_acls(&mut self, bindings: &[AclBinding]) -> Result<()> {
        let version = self.versions.negotiate(ApiKey::CreateAcls)?;
        let creations = bindings
            .iter()
            .map(|b| {
                AclCreation::default()
                    .with_resource_type(b.pattern.resource_type.code())
                    .with_resource_name(text(&b.pattern.name))
                    .with_resource_pattern_type(b.pattern.pattern_type.code())
                    .with_principal(text(&b.entry.principal))
                    .with_host(text(&b.entry.host))
                    .with_operation(b.entry.operation.code())
                    .with_permission_type(b.entry.permission.code())
            })
            .collect();
        let request = CreateAclsRequest::default().with_creations(creations);
        let response: CreateAclsResponse = self.conn.call(ApiKey::CreateAcls, version, &request)?;
        for r in &response.results {
            check(
                r.error_code,
                r.error_message.as_ref().map(|m| m.to_string()),
                None,
            )?;
        }
        Ok(())
    }

    /// DescribeAcls: the bindings `filter` selects.
    pub fn describe_acls(&mut self, filter: &AclBindingFilter) -> Result<Vec<AclBinding>> {
        let version = self.versions.negotiate(ApiKey::DescribeAcls)?;
        let c = codes(filter);
        let request = DescribeAclsRequest::default()
            .with_resource_type_filter(c.resource_type)
            .with_resource_name_filter(filter.name.as_deref().map(text))
            .with_pattern_type_filter(c.pattern_type)
            .with_principal_filter(filter.principal.as_deref().map(text))
            .with_host_filter(filter.host.as_deref().map(text))
            .with_operation(c.operation)
            .with_permission_type(c.permission);
        let response: DescribeAclsResponse =
            self.conn.call(ApiKey::DescribeAcls, version, &request)?;
        check(
            response.error_code,
            response.error_message.as_ref().map(|m| m.to_string()),
            None,
        )?;
        let mut bindings = Vec::new();
        for resource in &response.resources {
            for acl in &resource.acls {
                bindings.push(binding(
                    resource.resource_type,
                    &resource.resource_name,
                    resource.pattern_type,
                    &acl.principal,
                    &acl.host,
                    acl.operation,
                    acl.permission_type,
                )?);
            }
        }
        Ok(bindings)
    }

    /// DeleteAcls: the bindings removed, over every filter.
    pub fn delete_acls(&mut self, filters: &[AclBindingFilter]) -> Result<Vec<AclBinding>> {
        let version = self.versions.negotiate(ApiKey::DeleteAcls)?;
        let request = DeleteAclsRequest::default().with_filters(
            filters
                .iter()
                .map(|f| {
                    let c = codes(f);
                    DeleteAclsFilter::default()
                        .with_resource_type_filter(c.resource_type)
                        .with_resource_name_filter(f.name.as_deref().map(text))
                        .with_pattern_type_filter(c.pattern_type)
                        .with_principal_filter(f.principal.as_deref().map(text))
                        .with_host_filter(f.host.as_deref().map(text))
                        .with_operation(c.operation)
                        .with_permission_type(c.permission)
                })
                .collect(),
        );
        let response: DeleteAclsResponse = self.conn.call(ApiKey::DeleteAcls, version, &request)?;
        let mut removed = Vec::new();
        for r in &response.filter_results {
            check(
                r.error_code,
                r.error_message.as_ref().map(|m| m.to_string()),
                None,
            )?;
            for m in &r.matching_acls {
                removed.push(binding(
                    m.resource_type,
                    &m.resource_name,
                    m.pattern_type,
                    &m.principal,
                    &m.host,
                    m.operation,
                    m.permission_type,
                )?);
            }
        }
        Ok(removed)
    }
}
