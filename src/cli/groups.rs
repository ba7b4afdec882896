//! `corelog groups`: kafka-consumer-groups.sh's list/describe/delete, with its flag names and
//! output layout, over [`crate::client`]. Works against any Kafka broker.
//!
//! As in Kafka's tool, tables go to stdout, each preceded by an empty line; notes about a
//! group (`Consumer group 'g' has no active members.`, `... is rebalancing.`) go to stderr.
//! Unlike Kafka's tool, errors go to stderr too, and the exit status is 1 when any group
//! failed (does not exist, could not be deleted) or the command failed.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Args};
use kafka_protocol::ResponseError;

use crate::client::groups::{
    CommittedOffset, GroupDescription, GroupListing, MemberDescription, TopicPartition,
};
use crate::client::{Client, Error as ClientError};

/// Kafka's placeholder for an unknown value.
const MISSING: &str = "-";

#[derive(Args, Debug, Clone)]
#[command(group(
    ArgGroup::new("action")
        .required(true)
        .args(["list", "describe", "delete"])
))]
pub struct GroupsArgs {
    /// The Kafka server(s) to connect to: comma-separated host:port list, tried in order.
    #[arg(long, value_name = "HOST:PORT,...")]
    pub bootstrap_server: String,
    /// List all consumer groups.
    #[arg(long)]
    pub list: bool,
    /// Describe consumer group(s): offsets and lag (default), --members or --state.
    #[arg(long)]
    pub describe: bool,
    /// Delete consumer group(s) (they must have no active members).
    #[arg(long)]
    pub delete: bool,
    /// The consumer group to describe or delete (repeatable).
    #[arg(long)]
    pub group: Vec<String>,
    /// Apply to every consumer group.
    #[arg(long)]
    pub all_groups: bool,
    /// With --describe: the group's members.
    #[arg(long)]
    pub members: bool,
    /// With --describe: committed offsets, log end offsets and lag (the default).
    #[arg(long)]
    pub offsets: bool,
    /// With --describe: the group's coordinator, assignment strategy, state and member
    /// count. With --list: each group's state, optionally only those in the given
    /// comma-separated states (e.g. `--state Stable,Empty`).
    #[arg(long, value_name = "STATES", num_args = 0..=1, default_missing_value = "")]
    pub state: Option<String>,
    /// With --describe --members: each member's assigned partitions.
    #[arg(long)]
    pub verbose: bool,
    /// How long to wait for coordinators that are loading, unavailable or moving, in ms.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub timeout: u64,
}

/// An error that stops `corelog groups`, printed as `Error: {0}`.
#[derive(Debug)]
pub struct CommandError(pub String);

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Error: {}", self.0)
    }
}

impl std::error::Error for CommandError {}

type Result<T> = std::result::Result<T, CommandError>;

fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(CommandError(msg.into()))
}

fn failed_due_to(e: &ClientError) -> CommandError {
    CommandError(format!(
        "Executing consumer group command failed due to {}",
        error_text(e)
    ))
}

fn write_err(e: std::io::Error) -> CommandError {
    CommandError(format!("writing output: {e}"))
}

/// Text of a client error: Kafka's message for the error code when the broker sent none,
/// then its name, e.g. `The group is not empty. (NON_EMPTY_GROUP)`.
pub fn error_text(e: &ClientError) -> String {
    match e {
        ClientError::Broker(b) => {
            let text = b.message.clone().or_else(|| {
                let known = match b.error {
                    ResponseError::GroupIdNotFound => "The group id does not exist.",
                    ResponseError::NonEmptyGroup => "The group is not empty.",
                    ResponseError::InvalidGroupId => "The configured groupId is invalid.",
                    ResponseError::GroupAuthorizationFailed => "Group authorization failed.",
                    ResponseError::CoordinatorLoadInProgress => {
                        "The coordinator is loading and hence can't process requests."
                    }
                    ResponseError::CoordinatorNotAvailable => "The coordinator is not available.",
                    ResponseError::NotCoordinator => "This is not the correct coordinator.",
                    _ => return None,
                };
                Some(known.to_string())
            });
            match text {
                Some(t) => format!("{t} ({})", b.name()),
                None => b.to_string(),
            }
        }
        other => other.to_string(),
    }
}

/// Runs the command with stdout and stderr; the exit status.
pub fn main(args: &GroupsArgs) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    match run(args, &mut out, &mut err) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.0.is_empty() {
                let _ = writeln!(err, "{e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Runs the command: tables to `out`, notes and per-group errors to `err`. Returns an error
/// with an empty message when every failure was already reported on `err`.
pub fn run(args: &GroupsArgs, out: &mut impl Write, err: &mut impl Write) -> Result<()> {
    check_args(args)?;
    let timeout = Duration::from_millis(args.timeout);
    let mut client = Client::bootstrap(&args.bootstrap_server).map_err(|e| failed_due_to(&e))?;
    let failures = if args.list {
        list(&mut client, args, timeout, out)?;
        0
    } else {
        let groups = selected_groups(&mut client, args, timeout)?;
        if args.delete {
            delete(&mut client, &groups, timeout, out, err)?
        } else {
            describe(&mut client, args, &groups, timeout, out, err)?
        }
    };
    out.flush().map_err(write_err)?;
    if failures > 0 {
        return fail("");
    }
    Ok(())
}

/// kafka-consumer-groups.sh's option rules, checked before connecting.
fn check_args(args: &GroupsArgs) -> Result<()> {
    if !args.describe && (args.members || args.offsets || args.verbose) {
        return fail("--members, --offsets and --verbose are only valid with --describe");
    }
    if args.list {
        if args.all_groups || !args.group.is_empty() {
            return fail("Option --list takes neither --group nor --all-groups");
        }
        return Ok(());
    }
    let action = if args.describe {
        "--describe"
    } else {
        "--delete"
    };
    if args.all_groups && !args.group.is_empty() {
        return fail("Option --all-groups is not valid with --group");
    }
    if !args.all_groups && args.group.is_empty() {
        return fail(format!(
            "Option {action} takes one of these options: --all-groups, --group"
        ));
    }
    if args.delete && args.state.is_some() {
        return fail("--state is only valid with --describe or --list");
    }
    let views = [args.members, args.offsets, args.state.is_some()];
    if views.iter().filter(|v| **v).count() > 1 {
        return fail(
            "Option --describe takes at most one of these options: --members, --offsets, --state",
        );
    }
    if args.describe && args.state.as_deref().is_some_and(|s| !s.is_empty()) {
        return fail("Option --describe does not take a value for --state");
    }
    Ok(())
}

/// Consumer groups of the cluster (those of protocol type `consumer`, or none).
fn consumer_groups(client: &mut Client, timeout: Duration) -> Result<Vec<GroupListing>> {
    let all = client.list_groups(timeout).map_err(|e| failed_due_to(&e))?;
    Ok(all
        .into_iter()
        .filter(GroupListing::is_consumer_group)
        .collect())
}

/// The groups named by --group (sorted, each once) or, with --all-groups, every consumer group.
fn selected_groups(
    client: &mut Client,
    args: &GroupsArgs,
    timeout: Duration,
) -> Result<Vec<String>> {
    let mut groups = if args.all_groups {
        consumer_groups(client, timeout)?
            .into_iter()
            .map(|g| g.group_id)
            .collect()
    } else {
        args.group.clone()
    };
    groups.sort();
    groups.dedup();
    Ok(groups)
}

fn list(
    client: &mut Client,
    args: &GroupsArgs,
    timeout: Duration,
    out: &mut impl Write,
) -> Result<()> {
    let groups = consumer_groups(client, timeout)?;
    let text = match &args.state {
        None => groups.iter().map(|g| format!("{}\n", g.group_id)).collect(),
        Some(filter) => render_list_states(&groups, &parse_states(filter)),
    };
    out.write_all(text.as_bytes()).map_err(write_err)
}

/// The states of a `--state` filter, lower-cased; empty means all.
fn parse_states(filter: &str) -> Vec<String> {
    filter
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `--list --state`: Kafka's `GROUP STATE` table (the group column 10 wider than the
/// longest id, at least 25), groups in a state of `states` (all if empty).
pub fn render_list_states(groups: &[GroupListing], states: &[String]) -> String {
    let state = |g: &GroupListing| g.state.clone().unwrap_or_else(|| "Unknown".into());
    let shown: Vec<&GroupListing> = groups
        .iter()
        .filter(|g| states.is_empty() || states.contains(&state(g).to_ascii_lowercase()))
        .collect();
    let width = shown.iter().map(|g| g.group_id.len()).fold(15, usize::max) + 10;
    let mut s = format!("{:<width$} {:<20}\n", "GROUP", "STATE");
    for g in shown {
        s.push_str(&format!("{:<width$} {:<20}\n", g.group_id, state(g)));
    }
    s
}

fn delete(
    client: &mut Client,
    groups: &[String],
    timeout: Duration,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<usize> {
    let results = client
        .delete_groups(groups, timeout)
        .map_err(|e| failed_due_to(&e))?;
    let quoted = |gs: &[&str]| {
        gs.iter()
            .map(|g| format!("'{g}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let deleted: Vec<&str> = results
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(g, _)| g.as_str())
        .collect();
    let failed: Vec<(&str, &ClientError)> = results
        .iter()
        .filter_map(|(g, r)| r.as_ref().err().map(|e| (g.as_str(), e)))
        .collect();
    if failed.is_empty() {
        writeln!(
            out,
            "Deletion of requested consumer groups ({}) was successful.",
            quoted(&deleted)
        )
        .map_err(write_err)?;
        return Ok(0);
    }
    let mut text = "\nError: Deletion of some consumer groups failed:\n".to_string();
    for (g, e) in &failed {
        text.push_str(&format!(
            "* Group '{g}' could not be deleted due to: {}\n",
            error_text(e)
        ));
    }
    err.write_all(text.as_bytes()).map_err(write_err)?;
    if !deleted.is_empty() {
        writeln!(
            out,
            "\nThese consumer groups were deleted successfully: {}",
            quoted(&deleted)
        )
        .map_err(write_err)?;
    }
    Ok(failed.len())
}

/// What `--describe` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum View {
    Offsets,
    Members,
    State,
}

/// Committed offsets per group, and log end offsets of every partition involved.
type OffsetData = (
    HashMap<String, std::result::Result<BTreeMap<TopicPartition, CommittedOffset>, ClientError>>,
    HashMap<TopicPartition, i64>,
);

fn describe(
    client: &mut Client,
    args: &GroupsArgs,
    groups: &[String],
    timeout: Duration,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<usize> {
    let view = match (args.members, args.state.is_some()) {
        (true, _) => View::Members,
        (_, true) => View::State,
        _ => View::Offsets,
    };
    let described = client
        .describe_groups(groups, timeout)
        .map_err(|e| failed_due_to(&e))?;
    let existing: Vec<&GroupDescription> = described
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().filter(|d| d.exists()))
        .collect();
    let (mut committed, log_ends) = match view {
        View::Offsets => offset_data(client, &existing, timeout)?,
        _ => Default::default(),
    };
    let mut failures = 0;
    for (group, result) in &described {
        let desc = match result {
            Ok(d) if d.exists() => d,
            Ok(_) => {
                failures += 1;
                report_missing(group, err)?;
                continue;
            }
            Err(e) => {
                failures += 1;
                if e.kafka() == Some(ResponseError::GroupIdNotFound) {
                    report_missing(group, err)?;
                } else {
                    writeln!(err, "\n{}", failed_due_to(e)).map_err(write_err)?;
                }
                continue;
            }
        };
        let text = match view {
            View::Members => (!desc.members.is_empty()).then(|| render_members(desc, args.verbose)),
            View::State => Some(render_state(desc)),
            View::Offsets => match committed.remove(group) {
                Some(Ok(offsets)) => {
                    let rows = offset_rows(desc, &offsets, &log_ends);
                    (!rows.is_empty()).then(|| render_offsets(group, &rows))
                }
                Some(Err(e)) => {
                    failures += 1;
                    writeln!(err, "\n{}", failed_due_to(&e)).map_err(write_err)?;
                    continue;
                }
                None => None,
            },
        };
        if let Some(note) = state_note(desc) {
            writeln!(err, "\n{note}").map_err(write_err)?;
        }
        if let Some(text) = text {
            out.write_all(text.as_bytes()).map_err(write_err)?;
        }
    }
    Ok(failures)
}

fn report_missing(group: &str, err: &mut impl Write) -> Result<()> {
    writeln!(err, "\nError: Consumer group '{group}' does not exist.").map_err(write_err)
}

/// What Kafka's tool says on stderr about a group's state before its table.
pub fn state_note(group: &GroupDescription) -> Option<String> {
    let g = &group.group_id;
    match group.state.as_str() {
        "Empty" => Some(format!("Consumer group '{g}' has no active members.")),
        "PreparingRebalance" | "CompletingRebalance" | "Assigning" | "Reconciling" => {
            Some(format!("Warning: Consumer group '{g}' is rebalancing."))
        }
        _ => None,
    }
}

/// OffsetFetch of every group, then ListOffsets (latest) of every partition a row will
/// show: assigned to a member or with a committed offset.
fn offset_data(
    client: &mut Client,
    groups: &[&GroupDescription],
    timeout: Duration,
) -> Result<OffsetData> {
    if groups.is_empty() {
        return Ok(Default::default());
    }
    let ids: Vec<String> = groups.iter().map(|g| g.group_id.clone()).collect();
    let committed: HashMap<_, _> = client
        .committed_offsets(&ids, timeout)
        .map_err(|e| failed_due_to(&e))?
        .into_iter()
        .collect();
    let mut partitions: Vec<TopicPartition> = groups
        .iter()
        .flat_map(|g| g.members.iter().flat_map(|m| m.assignment.iter().cloned()))
        .collect();
    for offsets in committed.values().flatten() {
        partitions.extend(offsets.keys().cloned());
    }
    let log_ends = client
        .log_end_offsets(&partitions, timeout)
        .map_err(|e| failed_due_to(&e))?;
    Ok((committed, log_ends))
}

/// One line of the `--describe` (offsets) table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetRow {
    pub topic: String,
    pub partition: i32,
    pub offset: Option<i64>,
    pub log_end: Option<i64>,
    /// `None` when the row has no member (a committed offset nobody is assigned).
    pub member: Option<(String, String, String)>,
}

impl OffsetRow {
    pub fn lag(&self) -> Option<i64> {
        Some(self.log_end? - self.offset?)
    }
}

/// The offsets rows of a group as Kafka orders them: members with partitions (most
/// partitions first), each member's partitions sorted; then committed offsets of
/// partitions no member has.
pub fn offset_rows(
    group: &GroupDescription,
    committed: &BTreeMap<TopicPartition, CommittedOffset>,
    log_ends: &HashMap<TopicPartition, i64>,
) -> Vec<OffsetRow> {
    let row = |tp: &TopicPartition, member: Option<&MemberDescription>| OffsetRow {
        topic: tp.topic.clone(),
        partition: tp.partition,
        offset: committed.get(tp).map(|c| c.offset),
        log_end: log_ends.get(tp).copied(),
        member: member.map(|m| (m.member_id.clone(), m.host.clone(), m.client_id.clone())),
    };
    let mut members: Vec<&MemberDescription> = group
        .members
        .iter()
        .filter(|m| !m.assignment.is_empty())
        .collect();
    members.sort_by_key(|m| std::cmp::Reverse(m.assignment.len()));
    let mut rows: Vec<OffsetRow> = members
        .iter()
        .flat_map(|m| m.assignment.iter().map(|tp| row(tp, Some(m))))
        .collect();
    let assigned = |tp: &TopicPartition| members.iter().any(|m| m.assignment.contains(tp));
    rows.extend(
        committed
            .keys()
            .filter(|tp| !assigned(tp))
            .map(|tp| row(tp, None)),
    );
    rows
}

/// Kafka's `--describe` table: a header, then one line per row, columns at least 15 wide
/// (group, topic, consumer id and host as wide as their longest value).
pub fn render_offsets(group: &str, rows: &[OffsetRow]) -> String {
    let member = |r: &OffsetRow, i: usize| -> String {
        r.member.as_ref().map_or(MISSING.to_string(), |m| match i {
            0 => m.0.clone(),
            1 => m.1.clone(),
            _ => m.2.clone(),
        })
    };
    let g = group.len().max(15);
    let t = rows.iter().map(|r| r.topic.len()).fold(15, usize::max);
    let c = rows.iter().map(|r| member(r, 0).len()).fold(15, usize::max);
    let h = rows.iter().map(|r| member(r, 1).len()).fold(15, usize::max);
    let opt = |v: Option<i64>| v.map_or(MISSING.to_string(), |v| v.to_string());
    let line = |cols: [&str; 9]| {
        format!(
            "{:<g$} {:<t$} {:<10} {:<15} {:<15} {:<15} {:<c$} {:<h$} {}\n",
            cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6], cols[7], cols[8]
        )
    };
    let mut s = String::from("\n");
    s.push_str(&line([
        "GROUP",
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
        "CONSUMER-ID",
        "HOST",
        "CLIENT-ID",
    ]));
    for r in rows {
        s.push_str(&line([
            group,
            &r.topic,
            &r.partition.to_string(),
            &opt(r.offset),
            &opt(r.log_end),
            &opt(r.lag()),
            &member(r, 0),
            &member(r, 1),
            &member(r, 2),
        ]));
    }
    s
}

/// Kafka's `--describe --members` table (`GROUP-INSTANCE-ID` when a member has one;
/// `ASSIGNMENT` as `topic(0,1), other(2)` with --verbose).
pub fn render_members(group: &GroupDescription, verbose: bool) -> String {
    let ms = &group.members;
    let instance = |m: &MemberDescription| m.group_instance_id.clone().unwrap_or_default();
    let with_instance = ms.iter().any(|m| m.group_instance_id.is_some());
    let g = group.group_id.len().max(15);
    let c = ms.iter().map(|m| m.member_id.len()).fold(15, usize::max);
    let i = ms.iter().map(|m| instance(m).len()).fold(17, usize::max);
    let h = ms.iter().map(|m| m.host.len()).fold(15, usize::max);
    let cl = ms.iter().map(|m| m.client_id.len()).fold(15, usize::max);
    let line = |cols: [&str; 6], last: &str| {
        let mut s = format!("{:<g$} {:<c$} ", cols[0], cols[1]);
        if with_instance {
            s.push_str(&format!("{:<i$} ", cols[2]));
        }
        s.push_str(&format!(
            "{:<h$} {:<cl$} {:<15} ",
            cols[3], cols[4], cols[5]
        ));
        s.push_str(last);
        s.push('\n');
        s
    };
    let mut s = String::from("\n");
    let header = [
        "GROUP",
        "CONSUMER-ID",
        "GROUP-INSTANCE-ID",
        "HOST",
        "CLIENT-ID",
        "#PARTITIONS",
    ];
    s.push_str(&line(header, if verbose { "ASSIGNMENT" } else { "" }));
    for m in ms {
        let assignment = if verbose {
            assignment_text(&m.assignment)
        } else {
            String::new()
        };
        let cols = [
            group.group_id.as_str(),
            &m.member_id,
            &instance(m),
            &m.host,
            &m.client_id,
            &m.assignment.len().to_string(),
        ];
        s.push_str(&line(cols, &assignment));
    }
    s
}

/// `topic(0,1,2), other(0)`, topics sorted; `-` for none.
pub fn assignment_text(assignment: &[TopicPartition]) -> String {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in assignment {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    if by_topic.is_empty() {
        return MISSING.to_string();
    }
    by_topic
        .into_iter()
        .map(|(topic, mut ps)| {
            ps.sort_unstable();
            let ps: Vec<String> = ps.iter().map(i32::to_string).collect();
            format!("{topic}({})", ps.join(","))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Kafka's `--describe --state` table: `host:port (id)` of the coordinator, the assignor
/// (`-` if none), the state and the member count.
pub fn render_state(group: &GroupDescription) -> String {
    let c = &group.coordinator;
    let coordinator = format!("{}:{} ({})", c.host, c.port, c.id);
    let g = group.group_id.len().max(15);
    let co = coordinator.len().max(25);
    let strategy = if group.assignment_strategy.is_empty() {
        MISSING
    } else {
        &group.assignment_strategy
    };
    let members = group.members.len().to_string();
    let line = |cols: [&str; 5]| {
        format!(
            "\n{:<g$} {:<co$} {:<20} {:<20} {}",
            cols[0], cols[1], cols[2], cols[3], cols[4]
        )
    };
    let mut s = line([
        "GROUP",
        "COORDINATOR (ID)",
        "ASSIGNMENT-STRATEGY",
        "STATE",
        "#MEMBERS",
    ]);
    s.push_str(&line([
        &group.group_id,
        &coordinator,
        strategy,
        &group.state,
        &members,
    ]));
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::client::BrokerError;
    use crate::client::groups::Node;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: GroupsArgs,
    }

    fn parse(line: &str) -> std::result::Result<GroupsArgs, clap::Error> {
        let argv = std::iter::once("groups").chain(line.split_whitespace());
        Cli::try_parse_from(argv).map(|c| c.args)
    }

    fn member(id: &str, host: &str, client: &str, parts: &[(&str, i32)]) -> MemberDescription {
        MemberDescription {
            member_id: id.into(),
            group_instance_id: None,
            client_id: client.into(),
            host: host.into(),
            assignment: parts
                .iter()
                .map(|&(t, p)| TopicPartition::new(t, p))
                .collect(),
        }
    }

    fn group(state: &str, members: Vec<MemberDescription>) -> GroupDescription {
        GroupDescription {
            group_id: "g1".into(),
            state: state.into(),
            protocol_type: "consumer".into(),
            assignment_strategy: "range".into(),
            members,
            coordinator: Node {
                id: 1,
                host: "localhost".into(),
                port: 9092,
            },
        }
    }

    fn offset(offset: i64) -> CommittedOffset {
        CommittedOffset {
            offset,
            leader_epoch: None,
            metadata: None,
        }
    }

    #[test]
    fn offsets_rows_in_kafkas_order() {
        let g = group(
            "Stable",
            vec![
                member("small", "/h", "c", &[("x", 0)]),
                member("none", "/h", "c", &[]),
                member("big", "/h", "c", &[("t", 0), ("t", 1)]),
            ],
        );
        let tp = TopicPartition::new;
        let committed = [
            (tp("t", 0), offset(5)),
            (tp("x", 0), offset(1)),
            (tp("z", 3), offset(4)),
        ];
        let ends = [
            (tp("t", 0), 7),
            (tp("t", 1), 3),
            (tp("x", 0), 1),
            (tp("z", 3), 4),
        ];
        let rows = offset_rows(
            &g,
            &committed.into_iter().collect(),
            &ends.into_iter().collect(),
        );
        let show = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
        let got: Vec<String> = rows
            .iter()
            .map(|r| {
                let m = r.member.as_ref().map_or("-", |m| m.0.as_str());
                let (o, e, l) = (show(r.offset), show(r.log_end), show(r.lag()));
                format!("{} {} {o} {e} {l} {m}", r.topic, r.partition)
            })
            .collect();
        assert_eq!(
            got,
            [
                "t 0 5 7 2 big",
                "t 1 - 3 - big",
                "x 0 1 1 0 small",
                "z 3 4 4 0 -"
            ]
        );
    }

    #[test]
    fn offsets_layout() {
        let m = Some((
            "consumer-g1-1-3f2a".to_string(),
            "/127.0.0.1".to_string(),
            "consumer-g1-1".to_string(),
        ));
        let row = |topic: &str, partition, offset, log_end, member: &Option<_>| OffsetRow {
            topic: topic.into(),
            partition,
            offset,
            log_end,
            member: member.clone(),
        };
        let rows = [
            row("t", 0, Some(5), Some(7), &m),
            row("t", 1, None, Some(3), &m),
            row("a-longer-topic-name", 0, Some(4), Some(4), &None),
        ];
        assert_eq!(
            render_offsets("g1", &rows),
            "\nGROUP           TOPIC               PARTITION  CURRENT-OFFSET  LOG-END-OFFSET  LAG             CONSUMER-ID        HOST            CLIENT-ID\n\
             g1              t                   0          5               7               2               consumer-g1-1-3f2a /127.0.0.1      consumer-g1-1\n\
             g1              t                   1          -               3               -               consumer-g1-1-3f2a /127.0.0.1      consumer-g1-1\n\
             g1              a-longer-topic-name 0          4               4               0               -                  -               -\n"
        );
    }

    #[test]
    fn members_layout() {
        let g = group(
            "Stable",
            vec![
                member(
                    "consumer-g1-1-3f2a",
                    "/127.0.0.1",
                    "consumer-g1-1",
                    &[("u", 0), ("t", 1), ("t", 0)],
                ),
                member("m2", "/10.0.0.2", "c2", &[]),
            ],
        );
        assert_eq!(
            render_members(&g, true),
            "\nGROUP           CONSUMER-ID        HOST            CLIENT-ID       #PARTITIONS     ASSIGNMENT\n\
             g1              consumer-g1-1-3f2a /127.0.0.1      consumer-g1-1   3               t(0,1), u(0)\n\
             g1              m2                 /10.0.0.2       c2              0               -\n"
        );
        let plain = render_members(&g, false);
        assert!(plain.starts_with("\nGROUP           CONSUMER-ID        HOST            CLIENT-ID       #PARTITIONS     \n"), "{plain:?}");
        let mut with_instance = g.clone();
        with_instance.members[1].group_instance_id = Some("instance-2".into());
        let text = render_members(&with_instance, false);
        assert!(text.contains(" GROUP-INSTANCE-ID "), "{text}");
        assert!(text.contains(" instance-2        /10.0.0.2 "), "{text}");
    }

    #[test]
    fn state_layout_and_notes() {
        let g = group(
            "Stable",
            vec![member("a", "/h", "c", &[]), member("b", "/h", "c", &[])],
        );
        assert_eq!(
            render_state(&g),
            "\nGROUP           COORDINATOR (ID)          ASSIGNMENT-STRATEGY  STATE                #MEMBERS\n\
             g1              localhost:9092 (1)        range                Stable               2\n"
        );
        assert_eq!(state_note(&g), None);
        let empty = group("Empty", vec![]);
        assert_eq!(
            state_note(&empty).as_deref(),
            Some("Consumer group 'g1' has no active members.")
        );
        assert!(
            render_state(&GroupDescription {
                assignment_strategy: String::new(),
                ..empty
            })
            .contains(" -                    Empty                0\n")
        );
        let rebalancing = group("PreparingRebalance", vec![]);
        assert_eq!(
            state_note(&rebalancing).as_deref(),
            Some("Warning: Consumer group 'g1' is rebalancing.")
        );
    }

    #[test]
    fn list_with_states() {
        let listed = |id: &str, state: Option<&str>| GroupListing {
            group_id: id.into(),
            protocol_type: "consumer".into(),
            state: state.map(str::to_string),
        };
        let groups = [
            listed("a", Some("Stable")),
            listed("b", Some("Empty")),
            listed("c", None),
        ];
        let all = render_list_states(&groups, &[]);
        assert_eq!(
            all,
            format!(
                "{:<25} {:<20}\n{:<25} {:<20}\n{:<25} {:<20}\n{:<25} {:<20}\n",
                "GROUP", "STATE", "a", "Stable", "b", "Empty", "c", "Unknown"
            )
        );
        let stable = render_list_states(&groups, &parse_states("stable, "));
        assert_eq!(stable.lines().count(), 2, "{stable}");
    }

    #[test]
    fn flags_follow_kafka_consumer_groups() {
        let ok = |line: &str| check_args(&parse(line).unwrap()).unwrap();
        let bad = |line: &str| check_args(&parse(line).unwrap()).unwrap_err().to_string();
        ok("--bootstrap-server b --list");
        ok("--bootstrap-server b --list --state");
        ok("--bootstrap-server b --list --state Stable,Empty");
        ok("--bootstrap-server b --describe --group g --group h");
        ok("--bootstrap-server b --describe --all-groups --members --verbose");
        ok("--bootstrap-server b --describe --group g --state");
        ok("--bootstrap-server b --delete --group g");
        assert!(
            parse("--bootstrap-server b").is_err(),
            "an action is required"
        );
        assert!(parse("--bootstrap-server b --list --describe").is_err());
        assert!(bad("--bootstrap-server b --describe").contains("--all-groups, --group"));
        assert!(bad("--bootstrap-server b --delete").contains("--all-groups, --group"));
        assert!(
            bad("--bootstrap-server b --describe --group g --all-groups").contains("not valid")
        );
        assert!(
            bad("--bootstrap-server b --describe --group g --members --state")
                .contains("at most one")
        );
        assert!(
            bad("--bootstrap-server b --describe --group g --state Stable")
                .contains("does not take a value")
        );
        assert!(
            bad("--bootstrap-server b --list --members").contains("only valid with --describe")
        );
        assert!(bad("--bootstrap-server b --list --group g").contains("--list"));
        assert!(bad("--bootstrap-server b --delete --group g --state").contains("--state"));
    }

    #[test]
    fn error_texts_name_the_kafka_error() {
        let e = ClientError::Broker(BrokerError::from_code(68, None, Some("g".into())).unwrap());
        assert_eq!(error_text(&e), "The group is not empty. (NON_EMPTY_GROUP)");
        let e = ClientError::Broker(BrokerError::from_code(3, None, Some("t".into())).unwrap());
        assert_eq!(error_text(&e), "t: UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(CommandError("m".into()).to_string(), "Error: m");
    }

    /// Runs the command against the fake Kafka 3.x broker of the client's tests; returns
    /// (success, stdout, stderr).
    fn run_fake(line: &str) -> (bool, String, String) {
        use crate::client::groups::tests::{KAFKA3, fake_broker, kafka3_handler};
        let (addr, _) = fake_broker(KAFKA3, kafka3_handler);
        let args = parse(&format!("--bootstrap-server {addr} {line}")).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let ok = run(&args, &mut out, &mut err).is_ok();
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        (ok, text(out), text(err))
    }

    #[test]
    fn commands_against_a_fake_broker() {
        let (ok, out, err) = run_fake("--describe --group gone --group g");
        assert!(!ok, "an unknown group fails the command");
        assert_eq!(err, "\nError: Consumer group 'gone' does not exist.\n");
        let lines: Vec<Vec<&str>> = out
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines,
            vec![
                vec![],
                vec![
                    "GROUP",
                    "TOPIC",
                    "PARTITION",
                    "CURRENT-OFFSET",
                    "LOG-END-OFFSET",
                    "LAG",
                    "CONSUMER-ID",
                    "HOST",
                    "CLIENT-ID"
                ],
                vec!["g", "t", "0", "5", "7", "2", "m1", "/127.0.0.1", "c1"],
                vec!["g", "t", "1", "-", "3", "-", "m1", "/127.0.0.1", "c1"],
                vec!["g", "u", "0", "-", "9", "-", "m1", "/127.0.0.1", "c1"],
            ]
        );

        let (ok, out, _) = run_fake("--describe --group g --members --verbose");
        assert!(ok);
        assert!(out.ends_with(" 3               t(0,1), u(0)\n"), "{out}");
        let (ok, out, err) = run_fake("--describe --all-groups --state");
        assert!(ok);
        assert_eq!(err, "\nConsumer group 'o' has no active members.\n");
        assert!(out.contains("\no  "), "{out}");
        assert!(
            out.contains(" -                    Empty                0\n"),
            "{out}"
        );
        assert!(out.contains("\ng  "), "{out}");
        assert!(
            out.contains(" range                Stable               1\n"),
            "{out}"
        );

        let (ok, out, _) = run_fake("--list");
        assert!(ok);
        assert_eq!(out, "g\no\n", "consumer groups only");

        let (ok, out, err) = run_fake("--delete --group g --group o");
        assert!(!ok);
        assert_eq!(
            out,
            "\nThese consumer groups were deleted successfully: 'o'\n"
        );
        assert_eq!(
            err,
            "\nError: Deletion of some consumer groups failed:\n\
             * Group 'g' could not be deleted due to: The group is not empty. (NON_EMPTY_GROUP)\n"
        );
    }
}
