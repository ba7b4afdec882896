//! CreateAcls, DescribeAcls and DeleteAcls. Changes go through the controller as topic
//! creations do (answered once every shard here applied them); descriptions read this
//! shard's metadata. All need the authorizer on (else SECURITY_DISABLED, as a Kafka broker
//! without an authorizer answers) and ALTER (changes) or DESCRIBE on the cluster.

use std::rc::Rc;

use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{
    CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DescribeAclsRequest, DescribeAclsResponse,
};

use super::super::shard::Shard;
use super::admin::{controller, not_available};
use super::authz::Authorizer;
use super::str_bytes;
use crate::cluster::controller::{ControllerRequest, ControllerResponse};
use crate::cluster::topics::TopicError;
use crate::protocol::ErrorCode;
use crate::security::acl::{AclBinding, AclBindingFilter, InvalidAcl, Operation, ResourcePattern};

/// Why nothing of the request is done: the authorizer is off, or the principal lacks
/// `operation` on the cluster.
fn refusal(shard: &Shard, auth: &Authorizer, operation: Operation) -> Option<TopicError> {
    if !shard.settings.authorizer.enabled {
        return Some(TopicError::new(
            ErrorCode::SecurityDisabled,
            "No Authorizer is configured on the broker",
        ));
    }
    (!auth.cluster(operation)).then(|| {
        TopicError::new(
            ErrorCode::ClusterAuthorizationFailed,
            ErrorCode::ClusterAuthorizationFailed.to_string(),
        )
    })
}

fn invalid(e: InvalidAcl) -> TopicError {
    TopicError::new(ErrorCode::InvalidRequest, e.0)
}

pub async fn create_acls(
    shard: &Rc<Shard>,
    request: CreateAclsRequest,
    auth: &Authorizer,
) -> CreateAclsResponse {
    let refused = refusal(shard, auth, Operation::Alter);
    let parsed: Vec<Result<AclBinding, TopicError>> = request
        .creations
        .iter()
        .map(|c| match &refused {
            Some(e) => Err(e.clone()),
            None => AclBinding::from_request(
                c.resource_type,
                c.resource_name.as_str(),
                c.resource_pattern_type,
                c.principal.as_str(),
                c.host.as_str(),
                c.operation,
                c.permission_type,
            )
            .map_err(invalid),
        })
        .collect();
    let valid: Vec<AclBinding> = parsed.iter().filter_map(|p| p.clone().ok()).collect();
    let mut answers = match valid.len() {
        0 => Vec::new(),
        asked => match controller(shard, ControllerRequest::CreateAcls(valid)).await {
            Some(ControllerResponse::AclsCreated(results)) => results,
            Some(ControllerResponse::Done(Err(e))) => vec![Err(e); asked],
            _ => vec![Err(not_available()); asked],
        },
    }
    .into_iter();
    let results = parsed
        .into_iter()
        .map(|p| {
            let result = p.and_then(|_| answers.next().unwrap_or_else(|| Err(not_available())));
            match result {
                Ok(()) => AclCreationResult::default(),
                Err(e) => AclCreationResult::default()
                    .with_error_code(e.code)
                    .with_error_message(Some(str_bytes(e.message))),
            }
        })
        .collect();
    CreateAclsResponse::default().with_results(results)
}

pub fn describe_acls(
    shard: &Shard,
    request: DescribeAclsRequest,
    auth: &Authorizer,
) -> DescribeAclsResponse {
    let filter = AclBindingFilter::from_request(
        request.resource_type_filter,
        request.resource_name_filter.as_deref(),
        request.pattern_type_filter,
        request.principal_filter.as_deref(),
        request.host_filter.as_deref(),
        request.operation,
        request.permission_type,
    )
    .map_err(invalid);
    let filter = match refusal(shard, auth, Operation::Describe).map_or(filter, Err) {
        Ok(filter) => filter,
        Err(e) => {
            return DescribeAclsResponse::default()
                .with_error_code(e.code)
                .with_error_message(Some(str_bytes(e.message)));
        }
    };
    let meta = shard.metadata();
    // The bindings come ordered by pattern: each run of one pattern is one resource.
    let mut resources: Vec<DescribeAclsResource> = Vec::new();
    let mut last: Option<ResourcePattern> = None;
    for binding in meta.acls.matching(&filter) {
        if last.as_ref() != Some(&binding.pattern) {
            let p = &binding.pattern;
            resources.push(
                DescribeAclsResource::default()
                    .with_resource_type(p.resource_type.code())
                    .with_resource_name(str_bytes(p.name.clone()))
                    .with_pattern_type(p.pattern_type.code()),
            );
            last = Some(binding.pattern.clone());
        }
        let e = binding.entry;
        if let Some(resource) = resources.last_mut() {
            resource.acls.push(
                AclDescription::default()
                    .with_principal(str_bytes(e.principal))
                    .with_host(str_bytes(e.host))
                    .with_operation(e.operation.code())
                    .with_permission_type(e.permission.code()),
            );
        }
    }
    DescribeAclsResponse::default().with_resources(resources)
}

pub async fn delete_acls(
    shard: &Rc<Shard>,
    request: DeleteAclsRequest,
    auth: &Authorizer,
) -> DeleteAclsResponse {
    let refused = refusal(shard, auth, Operation::Alter);
    let parsed: Vec<Result<AclBindingFilter, TopicError>> = request
        .filters
        .iter()
        .map(|f| match &refused {
            Some(e) => Err(e.clone()),
            None => AclBindingFilter::from_request(
                f.resource_type_filter,
                f.resource_name_filter.as_deref(),
                f.pattern_type_filter,
                f.principal_filter.as_deref(),
                f.host_filter.as_deref(),
                f.operation,
                f.permission_type,
            )
            .map_err(invalid),
        })
        .collect();
    let valid: Vec<AclBindingFilter> = parsed.iter().filter_map(|p| p.clone().ok()).collect();
    let mut answers = match valid.len() {
        0 => Vec::new(),
        asked => match controller(shard, ControllerRequest::DeleteAcls(valid)).await {
            Some(ControllerResponse::AclsDeleted(removed)) => removed.into_iter().map(Ok).collect(),
            Some(ControllerResponse::Done(Err(e))) => vec![Err(e); asked],
            _ => vec![Err(not_available()); asked],
        },
    }
    .into_iter();
    let results = parsed
        .into_iter()
        .map(|p| {
            let result = p.and_then(|_| answers.next().unwrap_or_else(|| Err(not_available())));
            match result {
                Ok(removed) => DeleteAclsFilterResult::default()
                    .with_matching_acls(removed.into_iter().map(matching_acl).collect()),
                Err(e) => DeleteAclsFilterResult::default()
                    .with_error_code(e.code)
                    .with_error_message(Some(str_bytes(e.message))),
            }
        })
        .collect();
    DeleteAclsResponse::default().with_filter_results(results)
}

fn matching_acl(binding: AclBinding) -> DeleteAclsMatchingAcl {
    let AclBinding { pattern, entry } = binding;
    DeleteAclsMatchingAcl::default()
        .with_resource_type(pattern.resource_type.code())
        .with_resource_name(str_bytes(pattern.name))
        .with_pattern_type(pattern.pattern_type.code())
        .with_principal(str_bytes(entry.principal))
        .with_host(str_bytes(entry.host))
        .with_operation(entry.operation.code())
        .with_permission_type(entry.permission.code())
}
