//! Access control lists with Kafka's model and rules (`StandardAuthorizer`): bindings of a
//! resource pattern to an entry (principal, host, operation, allow or deny), filters that
//! select bindings (DescribeAcls, DeleteAcls), and the decision for one action.
//!
//! Pure values: the metadata stores an [`Acls`], the request path asks it with the
//! connection's principal and host.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::Principal;

/// The name of the one CLUSTER resource (Kafka's `kafka-cluster`).
pub const CLUSTER_NAME: &str = "kafka-cluster";
/// A literal resource name, principal name or host matching every one.
pub const WILDCARD: &str = "*";
/// The most ACL bindings a cluster holds: each one is checked at every request it covers.
pub const MAX_ACLS: usize = 100_000;
/// The longest resource name, principal or host of a binding.
pub const MAX_FIELD_BYTES: usize = 4096;

/// Defines a `#[repr(i8)]` enum of Kafka's codes with its `from_code` and upper-case name.
macro_rules! kafka_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $code:literal, $text:literal;)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name { $($variant = $code),* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            pub fn from_code(code: i8) -> Option<Self> {
                match code { $($code => Some($name::$variant),)* _ => None }
            }

            pub fn code(self) -> i8 {
                self as i8
            }

            /// Kafka's name (`TOPIC`, `READ`, ...).
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }

            /// Parses Kafka's name as kafka-acls.sh takes it: `ClusterAction`,
            /// `cluster-action` or `CLUSTER_ACTION`.
            pub fn parse(text: &str) -> Option<Self> {
                let wanted = words_upper_snake(text);
                Self::ALL.iter().copied().find(|v| v.name() == wanted)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

/// `ClusterAction` / `cluster-action` / `cluster_action` as `CLUSTER_ACTION`.
fn words_upper_snake(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    let mut previous_lower = false;
    for c in text.chars() {
        if c.is_ascii_uppercase() && previous_lower {
            out.push('_');
        }
        previous_lower = c.is_ascii_lowercase();
        out.push(if c == '-' {
            '_'
        } else {
            c.to_ascii_uppercase()
        });
    }
    out
}

kafka_enum!(
    /// Kafka's `ResourceType` codes (0 UNKNOWN and 1 ANY are filter values).
    ResourceType {
        Topic = 2, "TOPIC";
        Group = 3, "GROUP";
        Cluster = 4, "CLUSTER";
        TransactionalId = 5, "TRANSACTIONAL_ID";
    }
);

kafka_enum!(
    /// Kafka's `PatternType` codes of a binding (1 ANY and 2 MATCH are filter values).
    PatternType {
        Literal = 3, "LITERAL";
        Prefixed = 4, "PREFIXED";
    }
);

kafka_enum!(
    /// Kafka's `AclOperation` codes (1 ANY is a filter value).
    Operation {
        All = 2, "ALL";
        Read = 3, "READ";
        Write = 4, "WRITE";
        Create = 5, "CREATE";
        Delete = 6, "DELETE";
        Alter = 7, "ALTER";
        Describe = 8, "DESCRIBE";
        ClusterAction = 9, "CLUSTER_ACTION";
        DescribeConfigs = 10, "DESCRIBE_CONFIGS";
        AlterConfigs = 11, "ALTER_CONFIGS";
        IdempotentWrite = 12, "IDEMPOTENT_WRITE";
    }
);

kafka_enum!(
    /// Kafka's `AclPermissionType` codes (1 ANY is a filter value).
    Permission {
        Deny = 2, "DENY";
        Allow = 3, "ALLOW";
    }
);

/// Kafka's code for "any" in a filter (resource type, pattern type, operation, permission).
pub const ANY_CODE: i8 = 1;
/// Kafka's pattern type filter matching every binding that applies to a name.
pub const MATCH_CODE: i8 = 2;

impl Operation {
    /// Whether an ALLOW of `self` allows `wanted` (Kafka: DESCRIBE is implied by READ,
    /// WRITE, DELETE and ALTER; DESCRIBE_CONFIGS by ALTER_CONFIGS; everything by ALL).
    pub fn allow_implies(self, wanted: Operation) -> bool {
        use Operation::*;
        self == All
            || self == wanted
            || (wanted == Describe && matches!(self, Read | Write | Delete | Alter))
            || (wanted == DescribeConfigs && self == AlterConfigs)
    }

    /// Whether a DENY of `self` denies `wanted` (only itself, or ALL).
    pub fn deny_implies(self, wanted: Operation) -> bool {
        self == Operation::All || self == wanted
    }
}

/// What a binding applies to: a resource type and a literal name (or `*`) or a prefix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourcePattern {
    pub resource_type: ResourceType,
    pub name: String,
    pub pattern_type: PatternType,
}

/// Who may (or may not) do what, from where.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AccessControlEntry {
    /// `Type:name`, or `User:*` for every user.
    pub principal: String,
    /// An address (`10.0.0.1`) or `*`.
    pub host: String,
    pub operation: Operation,
    pub permission: Permission,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclBinding {
    pub pattern: ResourcePattern,
    pub entry: AccessControlEntry,
}

/// Why a binding or filter is refused (Kafka answers INVALID_REQUEST with this message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidAcl(pub String);

fn check_field(what: &str, value: &str) -> Result<(), InvalidAcl> {
    if value.len() > MAX_FIELD_BYTES {
        return Err(InvalidAcl(format!(
            "{what} of {} bytes is longer than {MAX_FIELD_BYTES}",
            value.len()
        )));
    }
    Ok(())
}

impl AclBinding {
    /// A binding from a request's codes and strings, with Kafka's validation
    /// (`AclControlManager.validateNewAcl`, `AclApis`): known codes, a non-empty name, a
    /// principal with a type, and the cluster resource only as literal `kafka-cluster`.
    pub fn from_request(
        resource_type: i8,
        name: &str,
        pattern_type: i8,
        principal: &str,
        host: &str,
        operation: i8,
        permission: i8,
    ) -> Result<Self, InvalidAcl> {
        let invalid = |what: &str, code: i8| InvalidAcl(format!("Invalid {what} {code}"));
        let resource_type =
            ResourceType::from_code(resource_type).ok_or(invalid("resourceType", resource_type))?;
        let pattern_type =
            PatternType::from_code(pattern_type).ok_or(invalid("patternType", pattern_type))?;
        let operation = Operation::from_code(operation).ok_or(invalid("operation", operation))?;
        let permission =
            Permission::from_code(permission).ok_or(invalid("permissionType", permission))?;
        let binding = Self {
            pattern: ResourcePattern {
                resource_type,
                name: name.into(),
                pattern_type,
            },
            entry: AccessControlEntry {
                principal: principal.into(),
                host: host.into(),
                operation,
                permission,
            },
        };
        binding.validate()?;
        Ok(binding)
    }

    /// The checks of a binding beyond its codes (run again by every voter applying one).
    pub fn validate(&self) -> Result<(), InvalidAcl> {
        let (pattern, entry) = (&self.pattern, &self.entry);
        for (what, value) in [
            ("resource name", &pattern.name),
            ("principal", &entry.principal),
            ("host", &entry.host),
        ] {
            check_field(what, value)?;
        }
        if pattern.name.is_empty() {
            return Err(InvalidAcl("Resource name should not be empty".into()));
        }
        if pattern.resource_type == ResourceType::Cluster
            && (pattern.name != CLUSTER_NAME || pattern.pattern_type != PatternType::Literal)
        {
            return Err(InvalidAcl(format!(
                "The only valid name for the CLUSTER resource is {CLUSTER_NAME}, as a literal"
            )));
        }
        if Principal::parse(&entry.principal).is_none() {
            return Err(InvalidAcl(format!(
                "Could not parse principal from `{}` (no colon is present separating the \
                 principal type from the principal name)",
                entry.principal
            )));
        }
        if entry.host.is_empty() {
            return Err(InvalidAcl("Host should not be empty".into()));
        }
        Ok(())
    }
}

impl fmt::Display for ResourcePattern {
    /// Kafka's `ResourcePattern(resourceType=TOPIC, name=t, patternType=LITERAL)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ResourcePattern(resourceType={}, name={}, patternType={})",
            self.resource_type, self.name, self.pattern_type
        )
    }
}

impl fmt::Display for AccessControlEntry {
    /// kafka-acls.sh's `(principal=User:a, host=*, operation=READ, permissionType=ALLOW)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "(principal={}, host={}, operation={}, permissionType={})",
            self.principal, self.host, self.operation, self.permission
        )
    }
}

/// How a filter selects patterns: exactly one type, any type (names compared exactly),
/// or every pattern that applies to the filter's name (MATCH).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PatternFilter {
    Any,
    Match,
    Exactly(PatternType),
}

/// Selects bindings (Kafka's `AclBindingFilter`); `None` fields match anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclBindingFilter {
    pub resource_type: Option<ResourceType>,
    pub name: Option<String>,
    pub pattern: PatternFilter,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: Option<Operation>,
    pub permission: Option<Permission>,
}

impl AclBindingFilter {
    /// The filter matching every binding.
    pub fn any() -> Self {
        Self {
            resource_type: None,
            name: None,
            pattern: PatternFilter::Any,
            principal: None,
            host: None,
            operation: None,
            permission: None,
        }
    }

    /// A filter from a request's codes and strings; an unknown code is INVALID_REQUEST
    /// (Kafka's `UNKNOWN` values are refused alike).
    pub fn from_request(
        resource_type: i8,
        name: Option<&str>,
        pattern_type: i8,
        principal: Option<&str>,
        host: Option<&str>,
        operation: i8,
        permission: i8,
    ) -> Result<Self, InvalidAcl> {
        fn any_or<T>(
            code: i8,
            what: &str,
            parse: fn(i8) -> Option<T>,
        ) -> Result<Option<T>, InvalidAcl> {
            match code {
                ANY_CODE => Ok(None),
                code => parse(code)
                    .map(Some)
                    .ok_or_else(|| InvalidAcl(format!("Invalid {what} {code} in a filter"))),
            }
        }
        let pattern = match pattern_type {
            ANY_CODE => PatternFilter::Any,
            MATCH_CODE => PatternFilter::Match,
            code => PatternType::from_code(code)
                .map(PatternFilter::Exactly)
                .ok_or_else(|| InvalidAcl(format!("Invalid patternType {code} in a filter")))?,
        };
        Ok(Self {
            resource_type: any_or(resource_type, "resourceType", ResourceType::from_code)?,
            name: name.map(str::to_owned),
            pattern,
            principal: principal.map(str::to_owned),
            host: host.map(str::to_owned),
            operation: any_or(operation, "operation", Operation::from_code)?,
            permission: any_or(permission, "permissionType", Permission::from_code)?,
        })
    }

    /// Kafka's `ResourcePatternFilter.matches`.
    pub fn matches_pattern(&self, pattern: &ResourcePattern) -> bool {
        if self
            .resource_type
            .is_some_and(|t| t != pattern.resource_type)
        {
            return false;
        }
        if let PatternFilter::Exactly(t) = self.pattern
            && t != pattern.pattern_type
        {
            return false;
        }
        let Some(name) = &self.name else {
            return true;
        };
        match (self.pattern, pattern.pattern_type) {
            (PatternFilter::Any | PatternFilter::Exactly(_), _) => *name == pattern.name,
            (PatternFilter::Match, PatternType::Literal) => {
                *name == pattern.name || pattern.name == WILDCARD
            }
            (PatternFilter::Match, PatternType::Prefixed) => name.starts_with(&pattern.name),
        }
    }

    /// Kafka's `AccessControlEntryFilter.matches` (exact comparisons: a filter for
    /// `User:alice` does not select `User:*`).
    pub fn matches_entry(&self, entry: &AccessControlEntry) -> bool {
        self.principal
            .as_ref()
            .is_none_or(|p| *p == entry.principal)
            && self.host.as_ref().is_none_or(|h| *h == entry.host)
            && self.operation.is_none_or(|o| o == entry.operation)
            && self.permission.is_none_or(|p| p == entry.permission)
    }

    pub fn matches(&self, binding: &AclBinding) -> bool {
        self.matches_pattern(&binding.pattern) && self.matches_entry(&binding.entry)
    }
}

/// The authorizer's settings (`authorizer.enabled`, `super.users`,
/// `allow.everyone.if.no.acl.found`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthorizerSettings {
    pub enabled: bool,
    pub super_users: Vec<Principal>,
    pub allow_everyone_if_no_acl_found: bool,
}

/// Parses `super.users`: `User:a;User:b` (empty: none).
pub fn parse_super_users(text: &str) -> Result<Vec<Principal>, String> {
    text.split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| Principal::parse(p).ok_or_else(|| format!("'{p}' is not a Type:name principal")))
        .collect()
}

/// Every binding of a cluster, indexed by resource type, pattern type and name, so a
/// decision looks up the few patterns that can apply instead of scanning them all.
/// Serializes as the list of bindings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "Vec<AclBinding>", into = "Vec<AclBinding>")]
pub struct Acls {
    patterns: BTreeMap<(ResourceType, PatternType), BTreeMap<String, BTreeSet<AccessControlEntry>>>,
    count: usize,
}

impl From<Vec<AclBinding>> for Acls {
    fn from(bindings: Vec<AclBinding>) -> Self {
        let mut acls = Acls::default();
        for binding in bindings {
            acls.insert(binding);
        }
        acls
    }
}

impl From<Acls> for Vec<AclBinding> {
    fn from(acls: Acls) -> Self {
        acls.iter().collect()
    }
}

impl Acls {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds a binding; false if it was there already.
    pub fn insert(&mut self, binding: AclBinding) -> bool {
        let AclBinding { pattern, entry } = binding;
        let added = self
            .patterns
            .entry((pattern.resource_type, pattern.pattern_type))
            .or_default()
            .entry(pattern.name)
            .or_default()
            .insert(entry);
        self.count += usize::from(added);
        added
    }

    /// Every binding, in a fixed order (resource type, pattern type, name, entry).
    pub fn iter(&self) -> impl Iterator<Item = AclBinding> + '_ {
        self.patterns
            .iter()
            .flat_map(|(&(resource_type, pattern_type), names)| {
                names.iter().flat_map(move |(name, entries)| {
                    entries.iter().map(move |entry| AclBinding {
                        pattern: ResourcePattern {
                            resource_type,
                            name: name.clone(),
                            pattern_type,
                        },
                        entry: entry.clone(),
                    })
                })
            })
    }

    /// The bindings `filter` selects.
    pub fn matching<'a>(
        &'a self,
        filter: &'a AclBindingFilter,
    ) -> impl Iterator<Item = AclBinding> + 'a {
        self.iter().filter(move |b| filter.matches(b))
    }

    /// Removes the bindings `filter` selects and returns them.
    pub fn remove_matching(&mut self, filter: &AclBindingFilter) -> Vec<AclBinding> {
        let removed: Vec<AclBinding> = self.matching(filter).collect();
        for binding in &removed {
            let key = (binding.pattern.resource_type, binding.pattern.pattern_type);
            if let Some(names) = self.patterns.get_mut(&key)
                && let Some(entries) = names.get_mut(&binding.pattern.name)
            {
                entries.remove(&binding.entry);
                if entries.is_empty() {
                    names.remove(&binding.pattern.name);
                }
                if names.is_empty() {
                    self.patterns.remove(&key);
                }
            }
        }
        self.count -= removed.len();
        removed
    }

    /// The entries of every pattern that applies to resource `name` of `resource_type`: its
    /// literal name, the literal wildcard, and every prefix of it.
    fn applicable<'a>(
        &'a self,
        resource_type: ResourceType,
        name: &'a str,
    ) -> impl Iterator<Item = &'a AccessControlEntry> + 'a {
        let literal = self.patterns.get(&(resource_type, PatternType::Literal));
        let prefixed = self.patterns.get(&(resource_type, PatternType::Prefixed));
        let literals = literal.into_iter().flat_map(move |names| {
            let wildcard = (name != WILDCARD).then(|| names.get(WILDCARD)).flatten();
            names.get(name).into_iter().chain(wildcard)
        });
        let prefixes = prefixed.into_iter().flat_map(move |names| {
            name.char_indices()
                .map(|(i, c)| &name[..i + c.len_utf8()])
                .filter_map(|prefix| names.get(prefix))
        });
        literals.chain(prefixes).flatten()
    }

    /// Kafka's decision for a non-super user: a matching DENY wins; else a matching ALLOW
    /// (or one implying the operation) allows; a resource with no binding at all is
    /// `allow_if_none`.
    pub fn authorize(
        &self,
        principal: &Principal,
        host: &str,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
        allow_if_none: bool,
    ) -> bool {
        let mut any = false;
        let mut allowed = false;
        for entry in self.applicable(resource_type, name) {
            any = true;
            if !entry_applies(entry, principal, host) {
                continue;
            }
            match entry.permission {
                Permission::Deny if entry.operation.deny_implies(operation) => return false,
                Permission::Allow if entry.operation.allow_implies(operation) => allowed = true,
                _ => {}
            }
        }
        allowed || (!any && allow_if_none)
    }

    /// Kafka's `authorizeByResourceType` for a non-super user: whether some resource of
    /// `resource_type` (any pattern) allows exactly `operation` (or ALL) to the principal and
    /// is not covered by a DENY of it. `hardcoded` is the decision for an arbitrary name
    /// (Kafka checks the name `hardcode` first, for `allow.everyone.if.no.acl.found`).
    pub fn authorize_any(
        &self,
        principal: &Principal,
        host: &str,
        operation: Operation,
        resource_type: ResourceType,
        allow_if_none: bool,
    ) -> bool {
        if self.authorize(
            principal,
            host,
            operation,
            resource_type,
            "hardcode",
            allow_if_none,
        ) {
            return true;
        }
        let mut allow = [BTreeSet::new(), BTreeSet::new()];
        let mut deny = [BTreeSet::new(), BTreeSet::new()];
        for ((kind, pattern_type), names) in &self.patterns {
            if *kind != resource_type {
                continue;
            }
            let slot = usize::from(*pattern_type == PatternType::Prefixed);
            for (name, entries) in names {
                for entry in entries.iter().filter(|e| {
                    entry_applies(e, principal, host)
                        && (e.operation == operation || e.operation == Operation::All)
                }) {
                    let set = match entry.permission {
                        Permission::Deny => &mut deny[slot],
                        Permission::Allow => &mut allow[slot],
                    };
                    set.insert(name.as_str());
                }
            }
        }
        let [deny_literals, deny_prefixes] = &deny;
        let [allow_literals, allow_prefixes] = &allow;
        if deny_literals.contains(WILDCARD) {
            return false;
        }
        if allow_literals.contains(WILDCARD) {
            return true;
        }
        let prefix_denied = |name: &str| {
            name.char_indices()
                .any(|(i, c)| deny_prefixes.contains(&name[..i + c.len_utf8()]))
        };
        allow_prefixes.iter().any(|p| !prefix_denied(p))
            || allow_literals
                .iter()
                .any(|l| !deny_literals.contains(l) && !prefix_denied(l))
    }
}

/// Whether an entry names this principal (or `User:*`) and host (or `*`).
fn entry_applies(entry: &AccessControlEntry, principal: &Principal, host: &str) -> bool {
    let principal_matches = match entry.principal.split_once(':') {
        Some((kind, name)) => {
            kind == principal.principal_type && (name == WILDCARD || name == principal.name)
        }
        None => false,
    };
    principal_matches && (entry.host == WILDCARD || entry.host == host)
}

#[cfg(test)]
mod tests;
