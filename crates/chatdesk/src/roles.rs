//! The roles a process runs, built in one `match`, and their supervision: one root
//! cancellation token (Ctrl-C / SIGTERM), every role a task; when any role exits the others are
//! cancelled and the one that exited is reported by name.

use std::time::Duration;

use anyhow::Context;
use chatdesk_api::AppState;
use chatdesk_core::config::EVENTS_STREAM;
use chatdesk_gateway::{Gateway, GatewayOptions};
use chatdesk_streams::Consumer;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::settings::Runtime;

/// Redis connections taken in turn by the sender's delivery queue and status events, whose
/// scripts carry whole messages (see `chatdesk_streams::Connections`).
const PATH_CONNECTIONS: usize = 4;

/// The same for webhook ingest: one script per webhook, each with its whole message, and
/// nothing to wait for between them, so more of them fit in one fsync of Redis's append-only
/// file over more connections (eight carried a tenth more of 5,000 new conversations a second
/// than four; the sender gained nothing past four).
const INGEST_CONNECTIONS: usize = 8;

type ConsumerTask = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

/// How long roles get to finish their work after cancellation before they are aborted.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);
/// How often streams are trimmed to their retention.
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Role {
    /// The public HTTP API: webhooks and REST, next to health, readiness and metrics.
    Ingress,
    /// Persists every durable event to PostgreSQL (group `writer` on `events`).
    Writer,
    /// The WebSocket gateway at `/v1/ws` (group `gateway.<node id>` on `events`).
    Gateway,
    /// Delivers outbound messages to the providers (group `sender` on `send`), and notification
    /// e-mails when SMTP is set (group `notifier` on `events`).
    Sender,
    /// Runs broadcast campaigns: hands recipients over at each campaign's rate and turns them
    /// into messages (group `broadcaster` on `broadcast`).
    Broadcaster,
    /// Answers customers with an AI model or a dialog flow where an inbox turned auto-reply on,
    /// and hands conversations to humans (group `autoreply` on `events`); assigns round-robin
    /// inboxes' conversations (group `router` on `events`).
    Autoreply,
}

impl Role {
    pub fn all() -> Vec<Role> {
        vec![Role::Ingress, Role::Writer, Role::Gateway, Role::Sender, Role::Broadcaster, Role::Autoreply]
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Ingress => "ingress",
            Role::Writer => "writer",
            Role::Gateway => "gateway",
            Role::Sender => "sender",
            Role::Broadcaster => "broadcaster",
            Role::Autoreply => "autoreply",
        }
    }
}

/// How long a gateway group may be idle before it counts as a gone node's and is removed.
const GONE_GATEWAY_IDLE: Duration = Duration::from_secs(3600);

/// Removes the consumer groups of gateway nodes that are gone, every few minutes.
fn remove_gone_gateways(
    runtime: &Runtime,
    own_group: String,
    cancel: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let ops = runtime.ops();
    async move {
        let Some(events) = ops.streams.stream(EVENTS_STREAM) else { return };
        loop {
            // This node's group, and those of nodes that report themselves alive, stay.
            let mut keep = vec![own_group.clone()];
            if let Ok(live) = ops.live_nodes().await {
                keep.extend(live.iter().map(|node| format!("gateway.{node}")));
            }
            let removed = chatdesk_streams::retention::remove_idle_groups(
                &ops.redis,
                &ops.keys,
                events,
                "gateway.",
                &keep,
                GONE_GATEWAY_IDLE,
            )
            .await;
            match removed {
                Ok(removed) if !removed.is_empty() => {
                    tracing::info!(groups = ?removed, "removed the groups of gone gateway nodes")
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(error = %error, "cannot look for idle gateway groups"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(300)) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }
}

/// Fires `cancel` on Ctrl-C or SIGTERM.
pub fn cancel_on_signals(cancel: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let sigterm = async {
            match terminate.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = ctrl_c => tracing::info!("interrupt received, shutting down"),
            _ = sigterm => tracing::info!("SIGTERM received, shutting down"),
        }
        cancel.cancel();
    });
}

/// Runs the HTTP server and `roles` until `cancel` fires or one of them exits.
pub async fn run(runtime: &Runtime, roles: &[Role], cancel: CancellationToken) -> anyhow::Result<()> {
    // Webhooks arrive only where the ingress role runs.
    let ingest = if roles.contains(&Role::Ingress) {
        Some(runtime.connector.connections(INGEST_CONNECTIONS).await.context("cannot connect ingress to Redis")?)
    } else {
        None
    };
    let mut state = AppState::new(
        runtime.redis.clone(),
        runtime.db.clone(),
        runtime.metrics.clone(),
        runtime.token_key.clone(),
        runtime.keys.clone(),
        runtime.streams.clone(),
        runtime.ingress.clone(),
    )
    .with_bot(&runtime.autoreply);
    if let Some(ingest) = &ingest {
        state = state.with_ingest_connections(ingest.clone());
    }
    let state = state.with_ops_tenant(runtime.gateway.ops_tenant).with_metrics_token(
        crate::settings::env_var("CHATDESK_METRICS_TOKEN").map(|token| std::sync::Arc::from(token.as_str())),
    );
    // Every process serves health, readiness and metrics; roles add their routes.
    let mut router = chatdesk_api::ops_router(state.clone());
    let mut consumers: Vec<(&'static str, ConsumerTask)> = Vec::new();
    // Connections a role opened for itself, closed once every role has stopped.
    let mut own_connections: Vec<chatdesk_streams::Connections> = ingest.into_iter().collect();
    for role in roles {
        match role {
            Role::Ingress => {
                router = router.merge(chatdesk_api::api_router(state.clone()));
                let changes = state.inboxes.clone().listen(runtime.connector.clone(), cancel.clone());
                consumers.push(("inbox-changes", Box::pin(async move { changes.await.map_err(Into::into) })));
            }
            Role::Writer => {
                let stream =
                    runtime.streams.stream(EVENTS_STREAM).context("streams.toml declares no `events` stream")?;
                let writer = Consumer::new(
                    runtime.consumer_options(stream),
                    chatdesk_workers::writer::Writer::with_rules(runtime.db.clone(), runtime.writer.clone()),
                )?;
                let cancel = cancel.clone();
                consumers.push(("writer", Box::pin(async move { writer.run(cancel).await.map_err(Into::into) })));
            }
            Role::Gateway => {
                let options = GatewayOptions {
                    connector: runtime.connector.clone(),
                    redis: runtime.redis.clone(),
                    db: runtime.db.clone(),
                    keys: runtime.keys.clone(),
                    streams: runtime.streams.clone(),
                    tokens: runtime.token_key.clone(),
                    node: runtime.node_id.clone(),
                    settings: runtime.gateway.clone(),
                };
                let gateway = Gateway::new(options, cancel.clone())?;
                router = router.merge(gateway.router());
                let cleanup = remove_gone_gateways(runtime, gateway.group().to_string(), cancel.clone());
                consumers.push((
                    "gateway-cleanup",
                    Box::pin(async move {
                        cleanup.await;
                        Ok(())
                    }),
                ));
                let signals =
                    chatdesk_gateway::ephemeral::listen(gateway.clone(), runtime.connector.clone(), cancel.clone());
                consumers.push(("gateway-signals", Box::pin(async move { signals.await.map_err(Into::into) })));
                consumers.push(("gateway", Box::pin(async move { gateway.run_readers().await.map_err(Into::into) })));
            }
            Role::Sender => {
                let stream = runtime
                    .streams
                    .stream(chatdesk_sender::STREAM)
                    .context("streams.toml declares no `send` stream")?;
                let sender_redis = runtime
                    .connector
                    .connections(PATH_CONNECTIONS)
                    .await
                    .context("cannot connect the sender to Redis")?;
                own_connections.push(sender_redis.clone());
                let sender = chatdesk_sender::Sender::over(
                    sender_redis,
                    runtime.db.clone(),
                    runtime.keys.clone(),
                    runtime.streams.clone(),
                    runtime.node_id.clone(),
                    runtime.sender.clone(),
                )?;
                // E-mail is one more way out: the sender role sends notifications when SMTP is set.
                if let Some(settings) = runtime.notify.clone() {
                    let events =
                        runtime.streams.stream(EVENTS_STREAM).context("streams.toml declares no `events` stream")?;
                    let notifier = chatdesk_notify::Notifier::new(
                        runtime.redis.clone(),
                        runtime.db.clone(),
                        runtime.keys.clone(),
                        settings,
                    )?;
                    let recorder = Consumer::new(runtime.consumer_options(events), notifier.handler())?;
                    let recorder_cancel = cancel.clone();
                    consumers.push((
                        "notifier",
                        Box::pin(async move { recorder.run(recorder_cancel).await.map_err(Into::into) }),
                    ));
                    let mail_cancel = cancel.clone();
                    consumers.push((
                        "notify-mail",
                        Box::pin(async move {
                            notifier.run(mail_cancel).await;
                            Ok(())
                        }),
                    ));
                }
                let admission = Consumer::new(runtime.consumer_options(stream), sender.admission())?;
                let admission_cancel = cancel.clone();
                consumers.push((
                    "sender-admission",
                    Box::pin(async move { admission.run(admission_cancel).await.map_err(Into::into) }),
                ));
                let dispatch_cancel = cancel.clone();
                consumers.push((
                    "sender",
                    Box::pin(async move {
                        sender.dispatch(dispatch_cancel).await;
                        Ok(())
                    }),
                ));
            }
            Role::Broadcaster => {
                let stream = runtime
                    .streams
                    .stream(chatdesk_broadcast::STREAM)
                    .context("streams.toml declares no `broadcast` stream")?;
                let broadcaster = chatdesk_broadcast::Broadcaster::new(
                    runtime.redis.clone(),
                    runtime.db.clone(),
                    runtime.keys.clone(),
                    runtime.streams.clone(),
                    &runtime.node_id,
                    runtime.broadcast.clone(),
                )?;
                let handoff = Consumer::new(runtime.consumer_options(stream), broadcaster.handler())?;
                let handoff_cancel = cancel.clone();
                consumers.push((
                    "broadcaster-handoff",
                    Box::pin(async move { handoff.run(handoff_cancel).await.map_err(Into::into) }),
                ));
                let runner_cancel = cancel.clone();
                consumers.push((
                    "broadcaster",
                    Box::pin(async move {
                        broadcaster.run(runner_cancel).await;
                        Ok(())
                    }),
                ));
            }
            Role::Autoreply => {
                let stream =
                    runtime.streams.stream(EVENTS_STREAM).context("streams.toml declares no `events` stream")?;
                let autoreply = chatdesk_autoreply::AutoReply::new(
                    runtime.redis.clone(),
                    runtime.db.clone(),
                    runtime.keys.clone(),
                    runtime.streams.clone(),
                    &runtime.node_id,
                    runtime.autoreply.clone(),
                )?;
                // Routing is the other automation on conversations: the same role runs it.
                let routing = chatdesk_workers::routing::Router::new(
                    runtime.redis.clone(),
                    runtime.db.clone(),
                    runtime.keys.clone(),
                    chatdesk_streams::Producer::new(
                        runtime.redis.clone(),
                        runtime.keys.clone(),
                        runtime.streams.clone(),
                    ),
                );
                let router = Consumer::new(runtime.consumer_options(stream), routing.clone())?;
                let router_cancel = cancel.clone();
                consumers
                    .push(("router", Box::pin(async move { router.run(router_cancel).await.map_err(Into::into) })));
                let changes = routing.clone().listen(runtime.connector.clone(), cancel.clone());
                consumers.push(("router-inbox-changes", Box::pin(async move { changes.await.map_err(Into::into) })));
                let sweep_cancel = cancel.clone();
                consumers.push((
                    "router-sweep",
                    Box::pin(async move {
                        routing.sweep(sweep_cancel).await;
                        Ok(())
                    }),
                ));
                let watcher = Consumer::new(runtime.consumer_options(stream), autoreply.watcher())?;
                let watcher_cancel = cancel.clone();
                consumers.push((
                    "autoreply-watcher",
                    Box::pin(async move { watcher.run(watcher_cancel).await.map_err(Into::into) }),
                ));
                let changes = autoreply.inboxes().listen(runtime.connector.clone(), cancel.clone());
                consumers.push(("autoreply-inbox-changes", Box::pin(async move { changes.await.map_err(Into::into) })));
                let answer_cancel = cancel.clone();
                consumers.push((
                    "autoreply",
                    Box::pin(async move {
                        autoreply.run(answer_cancel).await;
                        Ok(())
                    }),
                ));
            }
        }
    }
    let router = chatdesk_api::finish(router);
    let listener =
        TcpListener::bind(runtime.http).await.with_context(|| format!("cannot listen on {}", runtime.http))?;
    tracing::info!(
        http = %runtime.http,
        roles = ?roles.iter().map(|role| role.name()).collect::<Vec<_>>(),
        "chatdesk running"
    );

    let mut tasks: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
    let http_cancel = cancel.clone();
    let serve_limits = runtime.serve.clone();
    tasks.spawn(async move {
        ("http", chatdesk_api::serve_with(listener, router, http_cancel, serve_limits).await.map_err(Into::into))
    });
    for (name, consumer) in consumers {
        tasks.spawn(async move { (name, consumer.await) });
    }
    // Every process applies retention: trimming is idempotent and never passes what a durable
    // group still needs, so several processes doing it at once is harmless.
    let retention = chatdesk_streams::retention::run(
        runtime.redis.clone(),
        runtime.keys.clone(),
        (*runtime.streams).clone(),
        RETENTION_INTERVAL,
        cancel.clone(),
    );
    tasks.spawn(async move {
        retention.await;
        ("retention", Ok(()))
    });
    // The gauges alert rules read (oldest pending age, dead letters, retention held back,
    // estimated lags) and the Streams page's hour of history; one process samples each slot.
    let sampler = runtime.ops().sample(runtime.node_id.clone(), cancel.clone());
    tasks.spawn(async move {
        sampler.await;
        ("ops-sampler", Ok(()))
    });

    let mut failure = None;
    if let Some(joined) = tasks.join_next().await {
        let (name, result) = joined.context("a role task panicked")?;
        if !cancel.is_cancelled() {
            tracing::error!(role = name, "role exited unexpectedly, stopping the others");
            failure = Some(
                result.err().unwrap_or_else(|| anyhow::anyhow!("role {name} exited")).context(format!("role {name}")),
            );
        } else if let Err(error) = result {
            failure = Some(error.context(format!("role {name}")));
        }
        cancel.cancel();
    }
    let drained = tokio::time::timeout(SHUTDOWN_DEADLINE, async {
        while let Some(joined) = tasks.join_next().await {
            if let Ok((name, Err(error))) = joined {
                tracing::warn!(role = name, error = format!("{error:#}"), "role stopped with an error");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(deadline = ?SHUTDOWN_DEADLINE, "roles did not stop in time, aborting them");
        tasks.abort_all();
    }
    for connections in own_connections {
        connections.quit().await;
    }
    failure.map_or(Ok(()), Err)
}
