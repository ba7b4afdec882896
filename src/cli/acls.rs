//! `corelog acls`: kafka-acls.sh's `--add`, `--remove` and `--list`, with its flag names and
//! output layout, over [`crate::client`] (CreateAcls, DeleteAcls, DescribeAcls).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use clap::{ArgGroup, Args};

use crate::client::Client;
use crate::security::acl::{
    AccessControlEntry, AclBinding, AclBindingFilter, CLUSTER_NAME, Operation, PatternFilter,
    PatternType, Permission, ResourcePattern, ResourceType, WILDCARD,
};

#[derive(Args, Debug, Clone)]
#[command(group(ArgGroup::new("action").required(true).args(["add", "remove", "list"])))]
pub struct AclsArgs {
    /// The Kafka server(s) to connect to: comma-separated host:port list, tried in order.
    #[arg(long, value_name = "HOST:PORT,...")]
    pub bootstrap_server: String,
    /// Add ACLs.
    #[arg(long)]
    pub add: bool,
    /// Remove ACLs.
    #[arg(long)]
    pub remove: bool,
    /// List ACLs of the given resources (all when none is given).
    #[arg(long)]
    pub list: bool,
    /// Principal (`User:name`) allowed the operations (repeatable).
    #[arg(long)]
    pub allow_principal: Vec<String>,
    /// Principal (`User:name`) denied the operations (repeatable).
    #[arg(long)]
    pub deny_principal: Vec<String>,
    /// With --list: only ACLs of this principal (repeatable).
    #[arg(long)]
    pub principal: Vec<String>,
    /// Host the allowed principals may connect from (repeatable; default `*`).
    #[arg(long)]
    pub allow_host: Vec<String>,
    /// Host the denied principals are denied from (repeatable; default `*`).
    #[arg(long)]
    pub deny_host: Vec<String>,
    /// Operation (repeatable): Read, Write, Create, Delete, Alter, Describe, ClusterAction,
    /// DescribeConfigs, AlterConfigs, IdempotentWrite, All (default: All).
    #[arg(long)]
    pub operation: Vec<String>,
    /// Topic resource (repeatable; `*` for all topics).
    #[arg(long)]
    pub topic: Vec<String>,
    /// Consumer group resource (repeatable; `*` for all groups).
    #[arg(long)]
    pub group: Vec<String>,
    /// The cluster resource.
    #[arg(long)]
    pub cluster: bool,
    /// Transactional id resource (repeatable).
    #[arg(long)]
    pub transactional_id: Vec<String>,
    /// literal or prefixed (--add), also any or match (--list, --remove). Default: literal.
    #[arg(long, default_value = "literal")]
    pub resource_pattern_type: String,
    /// With --remove: do not ask for confirmation.
    #[arg(long)]
    pub force: bool,
}

/// An error of `corelog acls`, printed as `Error while executing ACL command: {0}`.
#[derive(Debug)]
pub struct CommandError(pub String);

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Error while executing ACL command: {}", self.0)
    }
}

impl std::error::Error for CommandError {}

type Result<T> = std::result::Result<T, CommandError>;

fn fail<T>(message: impl Into<String>) -> Result<T> {
    Err(CommandError(message.into()))
}

fn client_error(e: crate::client::Error) -> CommandError {
    CommandError(e.to_string())
}

/// The resources named on the command line: (type, name).
fn resources(args: &AclsArgs) -> Vec<(ResourceType, String)> {
    let named = |t: ResourceType, names: &[String]| -> Vec<(ResourceType, String)> {
        names.iter().map(|n| (t, n.clone())).collect()
    };
    let mut all = named(ResourceType::Topic, &args.topic);
    all.extend(named(ResourceType::Group, &args.group));
    all.extend(named(ResourceType::TransactionalId, &args.transactional_id));
    if args.cluster {
        all.push((ResourceType::Cluster, CLUSTER_NAME.to_string()));
    }
    all
}

fn pattern_filter(args: &AclsArgs) -> Result<PatternFilter> {
    match args.resource_pattern_type.to_ascii_lowercase().as_str() {
        "any" => Ok(PatternFilter::Any),
        "match" => Ok(PatternFilter::Match),
        other => PatternType::parse(other)
            .map(PatternFilter::Exactly)
            .ok_or_else(|| CommandError(format!("unknown --resource-pattern-type {other}"))),
    }
}

fn operations(args: &AclsArgs) -> Result<Vec<Operation>> {
    if args.operation.is_empty() {
        return Ok(vec![Operation::All]);
    }
    args.operation
        .iter()
        .map(|o| Operation::parse(o).ok_or_else(|| CommandError(format!("unknown operation {o}"))))
        .collect()
}

/// The entries the principal and host flags describe: every (principal, host, operation)
/// for allow, then for deny.
fn entries(args: &AclsArgs) -> Result<Vec<AccessControlEntry>> {
    let operations = operations(args)?;
    let mut entries = Vec::new();
    for (principals, hosts, permission) in [
        (&args.allow_principal, &args.allow_host, Permission::Allow),
        (&args.deny_principal, &args.deny_host, Permission::Deny),
    ] {
        let any_host = [WILDCARD.to_string()];
        let hosts = if hosts.is_empty() {
            &any_host[..]
        } else {
            &hosts[..]
        };
        for principal in principals {
            if crate::security::Principal::parse(principal).is_none() {
                return fail(format!(
                    "principal {principal} is not of the form Type:name"
                ));
            }
            for host in hosts {
                for &operation in &operations {
                    entries.push(AccessControlEntry {
                        principal: principal.clone(),
                        host: host.clone(),
                        operation,
                        permission,
                    });
                }
            }
        }
    }
    Ok(entries)
}

/// Runs the command, printing to `out` and reading --remove's confirmation from `input`.
pub fn run(args: &AclsArgs, out: &mut impl Write, input: &mut impl BufRead) -> Result<()> {
    let resources = resources(args);
    let patterns = pattern_filter(args)?;
    let entries = entries(args)?;
    if (args.add || args.remove) && resources.is_empty() {
        return fail("You must specify one of: --topic, --cluster, --group, --transactional-id");
    }
    let mut client = Client::bootstrap(&args.bootstrap_server).map_err(client_error)?;
    let w = |r: std::io::Result<()>| r.map_err(|e| CommandError(format!("writing output: {e}")));
    if args.add {
        let PatternFilter::Exactly(pattern_type) = patterns else {
            return fail(
                "A '--resource-pattern-type' value of 'any' or 'match' is not valid when adding acls.",
            );
        };
        if entries.is_empty() {
            return fail(
                "You must specify one of: --allow-principal, --deny-principal when trying to add ACLs.",
            );
        }
        for (resource_type, name) in &resources {
            let pattern = ResourcePattern {
                resource_type: *resource_type,
                name: name.clone(),
                pattern_type,
            };
            let bindings: Vec<AclBinding> = entries
                .iter()
                .map(|entry| AclBinding {
                    pattern: pattern.clone(),
                    entry: entry.clone(),
                })
                .collect();
            w(write_resource(
                out,
                "Adding ACLs for resource",
                &pattern,
                &entries,
            ))?;
            client.create_acls(&bindings).map_err(client_error)?;
        }
        return list(
            &mut client,
            out,
            &resources,
            PatternFilter::Exactly(pattern_type),
            &[],
        );
    }
    if args.remove {
        for (resource_type, name) in &resources {
            let filter = AclBindingFilter {
                resource_type: Some(*resource_type),
                name: Some(name.clone()),
                pattern: patterns,
                ..AclBindingFilter::any()
            };
            let question = match entries.is_empty() {
                true => format!(
                    "Are you sure you want to delete all ACLs for resource filter `{}`? (y/n)",
                    describe_filter(&filter)
                ),
                false => format!(
                    "Are you sure you want to remove ACLs: \n {} \n from resource filter `{}`? (y/n)",
                    entries
                        .iter()
                        .map(|e| format!("\t{e}"))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    describe_filter(&filter)
                ),
            };
            if !args.force && !confirmed(out, input, &question)? {
                continue;
            }
            let filters: Vec<AclBindingFilter> = match entries.is_empty() {
                true => vec![filter],
                false => entries
                    .iter()
                    .map(|e| AclBindingFilter {
                        principal: Some(e.principal.clone()),
                        host: Some(e.host.clone()),
                        operation: Some(e.operation),
                        permission: Some(e.permission),
                        ..filter.clone()
                    })
                    .collect(),
            };
            client.delete_acls(&filters).map_err(client_error)?;
        }
        return list(&mut client, out, &resources, patterns, &[]);
    }
    list(&mut client, out, &resources, patterns, &args.principal)
}

/// Kafka's `ResourcePatternFilter(resourceType=TOPIC, name=t, patternType=LITERAL)`.
fn describe_filter(filter: &AclBindingFilter) -> String {
    let pattern = match filter.pattern {
        PatternFilter::Any => "ANY".to_string(),
        PatternFilter::Match => "MATCH".to_string(),
        PatternFilter::Exactly(t) => t.to_string(),
    };
    format!(
        "ResourcePatternFilter(resourceType={}, name={}, patternType={pattern})",
        filter
            .resource_type
            .map_or("ANY".to_string(), |t| t.to_string()),
        filter.name.as_deref().unwrap_or("null"),
    )
}

fn confirmed(out: &mut impl Write, input: &mut impl BufRead, question: &str) -> Result<bool> {
    let io = |e: std::io::Error| CommandError(e.to_string());
    writeln!(out, "{question}").map_err(io)?;
    out.flush().map_err(io)?;
    let mut answer = String::new();
    input.read_line(&mut answer).map_err(io)?;
    Ok(answer.trim().eq_ignore_ascii_case("y"))
}

/// kafka-acls.sh's block: a heading naming the resource, then one entry per line.
fn write_resource(
    out: &mut impl Write,
    heading: &str,
    pattern: &ResourcePattern,
    entries: &[AccessControlEntry],
) -> std::io::Result<()> {
    let lines: Vec<String> = entries.iter().map(|e| format!("\t{e}")).collect();
    writeln!(out, "{heading} `{pattern}`: \n {} \n", lines.join("\n"))
}

/// Prints the ACLs of `resources` (all when empty), by resource, optionally only those of
/// `principals`.
fn list(
    client: &mut Client,
    out: &mut impl Write,
    resources: &[(ResourceType, String)],
    patterns: PatternFilter,
    principals: &[String],
) -> Result<()> {
    let filters: Vec<AclBindingFilter> = match resources.is_empty() {
        true => vec![AclBindingFilter::any()],
        false => resources
            .iter()
            .map(|(t, name)| AclBindingFilter {
                resource_type: Some(*t),
                name: Some(name.clone()),
                pattern: patterns,
                ..AclBindingFilter::any()
            })
            .collect(),
    };
    let mut by_pattern: BTreeMap<ResourcePattern, Vec<AccessControlEntry>> = BTreeMap::new();
    for filter in &filters {
        for binding in client.describe_acls(filter).map_err(client_error)? {
            if principals.is_empty() || principals.contains(&binding.entry.principal) {
                by_pattern
                    .entry(binding.pattern)
                    .or_default()
                    .push(binding.entry);
            }
        }
    }
    for (pattern, mut entries) in by_pattern {
        entries.dedup();
        write_resource(out, "Current ACLs for resource", &pattern, &entries)
            .map_err(|e| CommandError(format!("writing output: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: AclsArgs,
    }

    fn parse(flags: &[&str]) -> AclsArgs {
        let argv = ["acls", "--bootstrap-server", "127.0.0.1:1"]
            .iter()
            .chain(flags);
        Cli::try_parse_from(argv).expect("flags").args
    }

    #[test]
    fn flags_make_one_entry_per_principal_host_and_operation() {
        let args = parse(&[
            "--add",
            "--allow-principal",
            "User:a",
            "--deny-principal",
            "User:b",
            "--deny-host",
            "10.0.0.1",
            "--operation",
            "Read",
            "--operation",
            "DescribeConfigs",
            "--topic",
            "t",
        ]);
        let printed: Vec<String> = entries(&args)
            .unwrap()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            printed,
            [
                "(principal=User:a, host=*, operation=READ, permissionType=ALLOW)",
                "(principal=User:a, host=*, operation=DESCRIBE_CONFIGS, permissionType=ALLOW)",
                "(principal=User:b, host=10.0.0.1, operation=READ, permissionType=DENY)",
                "(principal=User:b, host=10.0.0.1, operation=DESCRIBE_CONFIGS, permissionType=DENY)",
            ]
        );
        assert_eq!(
            pattern_filter(&args).unwrap(),
            PatternFilter::Exactly(PatternType::Literal)
        );
        let all = parse(&["--list", "--cluster", "--resource-pattern-type", "MATCH"]);
        assert_eq!(operations(&all).unwrap(), vec![Operation::All]);
        assert_eq!(pattern_filter(&all).unwrap(), PatternFilter::Match);
        assert_eq!(
            resources(&all),
            vec![(ResourceType::Cluster, CLUSTER_NAME.to_string())]
        );
        assert!(operations(&parse(&["--list", "--operation", "Fly"])).is_err());
        assert!(entries(&parse(&["--add", "--allow-principal", "alice"])).is_err());
    }

    #[test]
    fn blocks_print_in_kafka_acls_layout() {
        let pattern = ResourcePattern {
            resource_type: ResourceType::Topic,
            name: "t".into(),
            pattern_type: PatternType::Prefixed,
        };
        let entry = |p: &str| AccessControlEntry {
            principal: p.into(),
            host: "*".into(),
            operation: Operation::Write,
            permission: Permission::Allow,
        };
        let mut out = Vec::new();
        write_resource(
            &mut out,
            "Current ACLs for resource",
            &pattern,
            &[entry("User:a"), entry("User:b")],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Current ACLs for resource `ResourcePattern(resourceType=TOPIC, name=t, \
             patternType=PREFIXED)`: \n \t(principal=User:a, host=*, operation=WRITE, \
             permissionType=ALLOW)\n\t(principal=User:b, host=*, operation=WRITE, \
             permissionType=ALLOW) \n\n"
        );
    }
}
