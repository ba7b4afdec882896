//! `corelog users`: create, delete and list SCRAM users (AlterUserScramCredentials and
//! DescribeUserScramCredentials), printing what kafka-configs.sh prints for
//! `--entity-type users`. Works against any broker that serves KIP-554.

use std::io::Write;

use clap::{ArgGroup, Args};

use crate::client::{Client, ScramAlteration};
use crate::security::scram::{MIN_ITERATIONS, ScramMechanism};

#[derive(Args, Debug, Clone)]
#[command(group(
    ArgGroup::new("action")
        .required(true)
        .args(["create", "delete", "list"])
))]
pub struct UsersArgs {
    /// The Kafka server(s) to connect to: comma-separated host:port list, tried in order.
    #[arg(long, value_name = "HOST:PORT,...")]
    pub bootstrap_server: String,
    /// Create a user, or set a new password for one.
    #[arg(long)]
    pub create: bool,
    /// Delete a user's credentials.
    #[arg(long)]
    pub delete: bool,
    /// List users and their SCRAM mechanisms (all users, or the one given).
    #[arg(long)]
    pub list: bool,
    /// The user to create, delete or list.
    #[arg(long)]
    pub user: Option<String>,
    /// The password (with --create).
    #[arg(long)]
    pub password: Option<String>,
    /// SCRAM-SHA-256 or SCRAM-SHA-512 (repeatable); default: both for --create, every
    /// mechanism the user has for --delete.
    #[arg(long, value_parser = parse_mechanism)]
    pub mechanism: Vec<ScramMechanism>,
    /// PBKDF2 iterations of a new credential (4096 to 16384).
    #[arg(long, default_value_t = MIN_ITERATIONS as i32)]
    pub iterations: i32,
}

fn parse_mechanism(name: &str) -> Result<ScramMechanism, String> {
    ScramMechanism::from_name(name)
        .ok_or_else(|| format!("unknown mechanism '{name}': SCRAM-SHA-256 or SCRAM-SHA-512"))
}

pub fn run(args: &UsersArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let mut client = Client::bootstrap(&args.bootstrap_server)?;
    if args.list {
        return list(&mut client, args, out);
    }
    let user = args
        .user
        .clone()
        .ok_or_else(|| anyhow::anyhow!("--user is required with --create and --delete"))?;
    let alterations = if args.create {
        let password = args
            .password
            .clone()
            .ok_or_else(|| anyhow::anyhow!("--password is required with --create"))?;
        let mechanisms = match args.mechanism.as_slice() {
            [] => ScramMechanism::ALL.to_vec(),
            some => some.to_vec(),
        };
        mechanisms
            .into_iter()
            .map(|mechanism| ScramAlteration::Upsert {
                user: user.clone(),
                mechanism,
                password: password.clone(),
                iterations: args.iterations,
            })
            .collect::<Vec<_>>()
    } else {
        let mechanisms = match args.mechanism.as_slice() {
            [] => existing_mechanisms(&mut client, &user)?,
            some => some.to_vec(),
        };
        mechanisms
            .into_iter()
            .map(|mechanism| ScramAlteration::Delete {
                user: user.clone(),
                mechanism,
            })
            .collect()
    };
    // Kafka refuses a user named twice in one request: one request per mechanism.
    for alteration in alterations {
        for (_, result) in client.alter_scram_credentials(std::slice::from_ref(&alteration))? {
            result?;
        }
    }
    writeln!(out, "Completed updating config for user {user}.")?;
    Ok(())
}

fn existing_mechanisms(client: &mut Client, user: &str) -> anyhow::Result<Vec<ScramMechanism>> {
    let asked = [user.to_string()];
    let described = client.describe_scram_credentials(Some(&asked))?;
    let mut mechanisms = Vec::new();
    for (_, result) in described {
        mechanisms.extend(result?.credentials.into_iter().map(|(m, _)| m));
    }
    Ok(mechanisms)
}

fn list(client: &mut Client, args: &UsersArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let asked = args.user.clone().map(|u| vec![u]);
    for (user, result) in client.describe_scram_credentials(asked.as_deref())? {
        let credentials = result?.credentials;
        let configs: Vec<String> = credentials
            .iter()
            .map(|(m, iterations)| format!("{m}=iterations={iterations}"))
            .collect();
        writeln!(
            out,
            "SCRAM credential configs for user-principal '{user}' are {}",
            configs.join(", ")
        )?;
    }
    Ok(())
}
