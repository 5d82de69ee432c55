//! `dlq-service list|show|replay|discard`: the review actions from a terminal.
//!
//! They work on the same table, with the same rules, as the HTTP API. A replay goes into the
//! outbox; the running dlq-service publishes it within a poll interval.
//!
//! # Who may run them
//! The command line does not go through the HTTP API and needs no operator token: it talks to
//! Postgres directly, with the service's own `DATABASE_URL`, so whoever can run it already holds
//! the service's database rights (and could change the table by hand). The reviewer it records
//! is `cli:<name>`, the name from `--by` (default: `$USER`, else `cli`): the prefix tells a
//! review made at a terminal from one made with a token, whose names cannot contain `:`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shared::{config::Env, telemetry};
use uuid::Uuid;

use crate::store::{self, Review, Status};

#[derive(Debug, Parser)]
#[command(
    name = "dlq-service",
    about = "Dead-lettered orders: capture and review. Without a command, runs the service."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Lists dead letters, newest first.
    List {
        /// pending, replayed or discarded.
        #[arg(long)]
        status: Option<Status>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// The `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<Uuid>,
    },
    /// Shows one dead letter, with its payload and headers.
    Show { id: Uuid },
    /// Republishes a pending dead letter's message (same logical ID, fresh broker dedupe key).
    Replay {
        id: Uuid,
        /// Who is reviewing; recorded as `cli:<name>`.
        #[arg(long, env = "USER", default_value = "cli")]
        by: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Marks a pending dead letter discarded.
    Discard {
        id: Uuid,
        #[arg(long)]
        reason: String,
        /// Who is reviewing; recorded as `cli:<name>`.
        #[arg(long, env = "USER", default_value = "cli")]
        by: String,
    },
}

/// A review command's whole `main`: it talks to a person at a terminal, so its error is a plain
/// line with each cause once (not a log line), and a configuration error exits 2, as the
/// service's does.
pub async fn main(command: Command) -> ExitCode {
    let telemetry = match telemetry::init(crate::SERVICE.name) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    let result = match crate::Config::from_env(&Env::from_process()) {
        Ok(config) => run(command, &config).await,
        Err(err) => {
            eprintln!("{err}");
            telemetry.shutdown().await;
            return ExitCode::from(2);
        }
    };
    if let Err(err) = &result {
        eprintln!("error: {}", telemetry::error_chain(err));
    }
    telemetry.shutdown().await;
    if result.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Runs a review command against the database in `DATABASE_URL`, printing JSON.
pub async fn run(command: Command, config: &crate::Config) -> anyhow::Result<()> {
    let pool = crate::SERVICE.connect_database(&config.service.database).await?;
    let output = match command {
        Command::List { status, limit, cursor } => {
            let items = store::list(&pool, status, cursor, limit.clamp(1, crate::routes::MAX_PAGE)).await?;
            serde_json::to_string_pretty(&items)?
        }
        Command::Show { id } => match store::get(&pool, id).await? {
            Some(letter) => serde_json::to_string_pretty(&letter)?,
            None => anyhow::bail!("there is no dead letter {id}"),
        },
        Command::Replay { id, by, reason } => {
            let letter = store::replay(&pool, id, &review(&by, reason)?).await?;
            eprintln!("replayed: the running dlq-service publishes it from its outbox");
            serde_json::to_string_pretty(&letter)?
        }
        Command::Discard { id, reason, by } => {
            let letter = store::discard(&pool, id, &review(&by, Some(reason))?).await?;
            serde_json::to_string_pretty(&letter)?
        }
    };
    println!("{output}");
    Ok(())
}

/// The longest name `--by` takes.
pub const MAX_BY_LEN: usize = 64;

/// A review by `cli:<by>`, with the API's rules for the reason: no NUL (Postgres text cannot
/// hold it), at most [`MAX_REASON_LEN`](crate::routes::MAX_REASON_LEN) characters.
pub fn review(by: &str, reason: Option<String>) -> anyhow::Result<Review> {
    let by = by.trim();
    if by.is_empty() || by.chars().count() > MAX_BY_LEN || by.chars().any(char::is_control) {
        anyhow::bail!("--by must be 1 to {MAX_BY_LEN} characters, none of them control characters");
    }
    let reason = reason.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty());
    if let Some(reason) = &reason {
        if reason.contains('\0') {
            anyhow::bail!("--reason must not contain the NUL character");
        }
        if reason.chars().count() > crate::routes::MAX_REASON_LEN {
            anyhow::bail!("--reason must be at most {} characters", crate::routes::MAX_REASON_LEN);
        }
    }
    Ok(Review { by: format!("cli:{by}"), reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_review_at_the_terminal_is_recorded_as_cli_and_the_name() {
        let review = review(" alice ", Some(" fixed ".into())).unwrap();
        assert_eq!((review.by.as_str(), review.reason.as_deref()), ("cli:alice", Some("fixed")));
        assert!(super::review("", None).is_err());
        assert!(super::review("a\nb", None).is_err());
        assert!(super::review("alice", Some("a\0b".into())).is_err());
    }

    #[test]
    fn by_is_read_from_the_command_line() {
        let parsed = Cli::try_parse_from([
            "dlq-service",
            "discard",
            "0193f1b2-0000-7000-8000-000000000000",
            "--reason",
            "r",
            "--by",
            "bob",
        ])
        .unwrap();
        let Some(Command::Discard { by, .. }) = parsed.command else { panic!("a discard") };
        assert_eq!(by, "bob");
    }
}
