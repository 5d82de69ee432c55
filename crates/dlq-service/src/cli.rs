//! `dlq-service list|show|replay|discard`: the review actions from a terminal.
//!
//! They work on the same table, with the same rules, as the HTTP API. A replay goes into the
//! outbox; the running dlq-service publishes it within a poll interval.

use clap::{Parser, Subcommand};
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
        #[arg(long, default_value = "cli")]
        by: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Marks a pending dead letter discarded.
    Discard {
        id: Uuid,
        #[arg(long)]
        reason: String,
        #[arg(long, default_value = "cli")]
        by: String,
    },
}

/// Runs a review command against the database in `DATABASE_URL`, printing JSON.
pub async fn run(command: Command, config: &crate::Config) -> anyhow::Result<()> {
    let pool = crate::connect_database(&config.database).await?;
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
            let letter = store::replay(&pool, id, &Review { by, reason }).await?;
            eprintln!("replayed: the running dlq-service publishes it from its outbox");
            serde_json::to_string_pretty(&letter)?
        }
        Command::Discard { id, reason, by } => {
            let letter = store::discard(&pool, id, &Review { by, reason: Some(reason) }).await?;
            serde_json::to_string_pretty(&letter)?
        }
    };
    println!("{output}");
    Ok(())
}
