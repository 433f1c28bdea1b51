//! What each subcommand does.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command, CommonArgs, FlowsCommand, StreamsCommand};
use crate::roles::{self, Role};
use crate::servers::{self, PrivateServers};
use crate::settings::{self, Runtime, Secret};
use crate::telemetry;

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Streams { command: StreamsCommand::Check { file } } => Ok(streams_check(file)),
        Command::Flows { command: FlowsCommand::Check { path } } => Ok(flows_check(path)),
        Command::Streams { command } => {
            telemetry::init_command_logs();
            crate::ops_cli::streams(command).await
        }
        Command::Audit { command } => {
            telemetry::init_command_logs();
            crate::ops_cli::audit(command).await
        }
        Command::Admin { command, data_dir } => {
            let output = crate::admin::run(command, &data_dir).await?;
            println!("{output}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            telemetry::init_logs();
            let data_dir = settings::default_data_dir();
            let (url, from_up) = settings::server_url("DATABASE_URL", &data_dir)?;
            let pool = match chatdesk_store::connect(url.expose(), 2).await {
                Ok(pool) => pool,
                Err(_) if from_up => anyhow::bail!(settings::up_not_running("DATABASE_URL", &data_dir)),
                Err(error) => return Err(error.into()),
            };
            chatdesk_store::migrate(&pool).await?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => {
            telemetry::init_logs();
            let redis_url = settings::redis_url()
                .context("REDIS_URL is not set: `chatdesk serve` runs against existing servers (`chatdesk up` starts private ones)")?;
            let database_url = settings::database_url()
                .context("DATABASE_URL is not set: `chatdesk serve` runs against existing servers (`chatdesk up` starts private ones)")?;
            let jwt_secret = settings::jwt_secret()
                .context("CHATDESK_JWT_SECRET is not set: agent tokens need a signing key of at least 32 bytes")?;
            let cancel = CancellationToken::new();
            roles::cancel_on_signals(cancel.clone());
            run_roles(&args.common, &redis_url, &database_url, &jwt_secret, &args.roles, false, cancel).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Up(args) => {
            telemetry::init_logs();
            // Validate the configuration before starting any server.
            settings::load_streams(args.common.streams.as_deref())?;
            let cancel = CancellationToken::new();
            roles::cancel_on_signals(cancel.clone());
            // The signing key too: one that cannot be trusted stops everything before it starts.
            let jwt_secret = match settings::jwt_secret() {
                Some(secret) => secret,
                None => servers::persistent_jwt_secret(&args.data_dir)?,
            };
            let (mut servers, redis_url, database_url) =
                PrivateServers::start(&args.data_dir, settings::redis_url(), settings::database_url()).await?;
            let result = async {
                tracing::info!(url = format!("http://{}/", args.common.http), "starting chatdesk; Ctrl-C stops it");
                run_roles(&args.common, &redis_url, &database_url, &jwt_secret, &Role::all(), args.demo, cancel).await
            }
            .await;
            // Last, after every role has finished and acknowledged its work.
            servers.stop().await;
            result?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Connects, runs `roles` until cancelled, and closes connections.
async fn run_roles(
    common: &CommonArgs,
    redis_url: &Secret,
    database_url: &Secret,
    jwt_secret: &Secret,
    roles: &[Role],
    demo: bool,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = telemetry::init_metrics()?;
    let mut runtime =
        Runtime::connect(common.http, redis_url, database_url, common.streams.as_ref(), jwt_secret, metrics).await?;
    if demo {
        let mut seeded = crate::demo::seed(&runtime.db).await.context("seeding the demo tenant")?;
        // Replies to the simulated customers go to a receiver of the demo's own, on loopback:
        // the outbound policy allows exactly that address.
        let receiver = crate::demo::receiver(cancel.child_token()).await?;
        runtime.sender.outbound.allow(&receiver.to_string()).map_err(anyhow::Error::msg)?;
        crate::demo::connect_receiver(&runtime.db, &mut seeded, receiver)
            .await
            .context("setting up the demo receiver")?;
        println!("{}", crate::demo::banner(common.http, &seeded));
        tokio::spawn(crate::demo::trickle(common.http, seeded.simulated, cancel.child_token()));
    }
    let result = roles::run(&runtime, roles, cancel).await;
    runtime.close().await;
    result
}

fn flows_check(path: Option<PathBuf>) -> ExitCode {
    let path = path
        .or_else(|| settings::env_var("CHATDESK_FLOWS").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("flows"));
    let checked = if path.is_dir() {
        chatdesk_autoreply::Flows::load_dir(&path).map(|flows| flows.summaries())
    } else {
        chatdesk_autoreply::Flows::check_file(&path).map(|flow| vec![flow.summary()])
    };
    match checked {
        Ok(flows) => {
            say!("{}: ok ({} flows)", path.display(), flows.len());
            for flow in flows {
                say!("  {}: {}", flow.name, flow.states.join(" → "));
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            tell!("{errors}");
            ExitCode::FAILURE
        }
    }
}

fn streams_check(file: Option<PathBuf>) -> ExitCode {
    let file = file.unwrap_or_else(|| PathBuf::from("streams.toml"));
    match chatdesk_core::StreamsConfig::from_file(&file.display().to_string()) {
        Ok(config) => {
            let groups: usize = config.streams.values().map(|stream| stream.groups.len()).sum();
            say!("{}: ok ({} stream families, {groups} groups)", file.display(), config.streams.len());
            for stream in config.streams.values() {
                let names: Vec<&str> = stream.groups.keys().map(|group| group.as_str()).collect();
                say!("  {}: {} partitions, groups: {}", stream.name, stream.partitions, names.join(", "));
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            tell!("{error}");
            ExitCode::FAILURE
        }
    }
}
