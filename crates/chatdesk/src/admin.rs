//! `chatdesk admin …`: create tenants, agents, inboxes and API keys. Each prints one JSON object
//! whose keys are stable for scripts: `tenant_id`, `user_id`, `inbox_id`, `secret`,
//! `webhook_path`, `key`.

use std::path::Path;

use anyhow::bail;
use chatdesk_api::auth::{generate_api_key, generate_webhook_secret, hash_api_key, hash_password};
use chatdesk_store::directory::{self, InboxKind, Role};
use serde_json::json;

use crate::cli::{AdminCommand, AgentCommand, ApikeyCommand, InboxCommand, KindArg, RoleArg, TenantCommand};
use crate::settings;

fn role(arg: RoleArg) -> Role {
    match arg {
        RoleArg::Owner => Role::Owner,
        RoleArg::Admin => Role::Admin,
        RoleArg::Agent => Role::Agent,
        RoleArg::Marketer => Role::Marketer,
        RoleArg::Sre => Role::Sre,
    }
}

fn kind(arg: KindArg) -> InboxKind {
    match arg {
        KindArg::Generic => InboxKind::Generic,
        KindArg::Whatsapp => InboxKind::Whatsapp,
        KindArg::Telegram => InboxKind::Telegram,
        KindArg::Web => InboxKind::Web,
    }
}

fn check_email(flag: &str, email: &str) -> anyhow::Result<()> {
    if !chatdesk_core::auth::is_email(email) {
        bail!("{flag} {email:?} is not an e-mail address");
    }
    Ok(())
}

fn check_password(password: &str) -> anyhow::Result<()> {
    if password.chars().count() < 8 {
        bail!("--password must be at least 8 characters");
    }
    Ok(())
}

async fn connect(data_dir: &Path) -> anyhow::Result<chatdesk_store::Pool> {
    let (url, from_up) = settings::server_url("DATABASE_URL", data_dir)?;
    let pool = match chatdesk_store::connect(url.expose(), 2).await {
        Ok(pool) => pool,
        Err(_) if from_up => bail!(settings::up_not_running("DATABASE_URL", data_dir)),
        Err(error) => return Err(error.into()),
    };
    chatdesk_store::migrate(&pool).await?;
    Ok(pool)
}

fn unique_violation(error: &chatdesk_store::StoreError) -> bool {
    matches!(error, chatdesk_store::StoreError::Query(sqlx_error) if sqlx_error.as_database_error().and_then(|db| db.code()).as_deref() == Some("23505"))
}

async fn require_tenant(pool: &chatdesk_store::Pool, tenant: uuid::Uuid) -> anyhow::Result<()> {
    if !directory::tenant_exists(pool, tenant).await? {
        bail!("--tenant {tenant}: no such tenant");
    }
    Ok(())
}

pub async fn run(command: AdminCommand, data_dir: &Path) -> anyhow::Result<serde_json::Value> {
    match command {
        AdminCommand::Tenant { command: TenantCommand::Create { name, owner_email, password } } => {
            if name.trim().is_empty() {
                bail!("--name must not be empty");
            }
            check_email("--owner-email", &owner_email)?;
            check_password(&password)?;
            let pool = connect(data_dir).await?;
            if directory::user_by_email(&pool, &owner_email).await?.is_some() {
                bail!("--owner-email {owner_email}: a user with this e-mail already exists");
            }
            let tenant = directory::create_tenant(&pool, name.trim()).await?;
            let hash = hash_password(&password);
            let user = directory::create_user(&pool, tenant, &owner_email, Role::Owner, &hash).await?;
            Ok(json!({ "tenant_id": tenant, "user_id": user }))
        }
        AdminCommand::Tenant { command: TenantCommand::SetQuota { tenant, daily_recipients } } => {
            let pool = connect(data_dir).await?;
            if !chatdesk_store::campaigns::set_daily_recipients(&pool, tenant, daily_recipients).await? {
                bail!("--tenant {tenant}: no such tenant");
            }
            Ok(json!({ "tenant_id": tenant, "daily_recipients": daily_recipients }))
        }
        AdminCommand::Agent { command: AgentCommand::Create { tenant, email, password, role: role_arg } } => {
            check_email("--email", &email)?;
            check_password(&password)?;
            let pool = connect(data_dir).await?;
            require_tenant(&pool, tenant).await?;
            let hash = hash_password(&password);
            match directory::create_user(&pool, tenant, &email, role(role_arg), &hash).await {
                Ok(user) => Ok(json!({ "user_id": user, "tenant_id": tenant })),
                Err(error) if unique_violation(&error) => {
                    bail!("--email {email}: a user with this e-mail already exists")
                }
                Err(error) => Err(error.into()),
            }
        }
        AdminCommand::Inbox {
            command:
                InboxCommand::Create {
                    tenant,
                    kind: kind_arg,
                    name,
                    outbound_url,
                    secret,
                    phone_number_id,
                    access_token,
                    bot_token,
                },
        } => {
            if name.trim().is_empty() {
                bail!("--name must not be empty");
            }
            let provider_config = provider_config(kind_arg, phone_number_id, access_token, bot_token)?;
            if let Some(url) = &outbound_url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                bail!("--outbound-url {url:?} must be an http:// or https:// URL");
            }
            if let Some(url) = &outbound_url {
                warn_if_refused(url).await;
            }
            let pool = connect(data_dir).await?;
            require_tenant(&pool, tenant).await?;
            let secret = match secret {
                Some(secret) if secret.len() < 8 || secret.len() > 256 || secret.contains(char::is_whitespace) => {
                    bail!("--secret must be 8 to 256 characters without spaces")
                }
                Some(secret) => secret,
                None => generate_webhook_secret(),
            };
            let inbox = directory::create_inbox(
                &pool,
                tenant,
                kind(kind_arg),
                name.trim(),
                &secret,
                outbound_url.as_deref(),
                &provider_config,
            )
            .await?;
            Ok(json!({
                "inbox_id": inbox.id,
                "tenant_id": tenant,
                "kind": inbox.kind.as_str(),
                "webhook_path": kind(kind_arg).webhook_path(inbox.id),
                "secret": secret,
            }))
        }
        AdminCommand::Apikey { command: ApikeyCommand::Create { tenant, role: role_arg } } => {
            let pool = connect(data_dir).await?;
            require_tenant(&pool, tenant).await?;
            let (key, hash, prefix) = generate_api_key();
            let id = directory::create_api_key(&pool, tenant, role(role_arg), &hash, &prefix).await?;
            Ok(json!({ "key": key, "key_id": id, "tenant_id": tenant, "role": role(role_arg).as_str() }))
        }
        AdminCommand::Apikey { command: ApikeyCommand::Revoke { tenant, key } } => {
            let pool = connect(data_dir).await?;
            require_tenant(&pool, tenant).await?;
            // The key itself is looked up by its hash, an id by itself.
            let id = match uuid::Uuid::parse_str(&key) {
                Ok(id) => Some(id),
                Err(_) => directory::api_key_by_hash(&pool, &hash_api_key(&key)).await?.map(|(id, _, _)| id),
            };
            let revoked = match id {
                Some(id) => directory::revoke_api_key(&pool, tenant, id).await?,
                None => false,
            };
            if !revoked {
                bail!("no live API key {key:?} in tenant {tenant}");
            }
            Ok(json!({ "revoked": true }))
        }
    }
}

/// The sending credentials of a new inbox, checked against its kind.
fn provider_config(
    kind: KindArg,
    phone_number_id: Option<String>,
    access_token: Option<String>,
    bot_token: Option<String>,
) -> anyhow::Result<serde_json::Value> {
    let mut config = serde_json::Map::new();
    for (flag, value, allowed) in [
        ("--phone-number-id", phone_number_id, matches!(kind, KindArg::Whatsapp)),
        ("--access-token", access_token, matches!(kind, KindArg::Whatsapp)),
        ("--bot-token", bot_token, matches!(kind, KindArg::Telegram)),
    ] {
        let Some(value) = value else { continue };
        if !allowed {
            bail!("{flag} does not apply to this --kind");
        }
        if value.trim().is_empty() || value.contains(char::is_whitespace) {
            bail!("{flag} must not be empty or contain spaces");
        }
        config.insert(flag.trim_start_matches("--").replace('-', "_"), serde_json::Value::String(value));
    }
    Ok(serde_json::Value::Object(config))
}

/// The operator may set any outbound URL, but a sender refuses one the outbound policy does not
/// allow (`CHATDESK_OUTBOUND_ALLOW`): say so now rather than at the first reply.
async fn warn_if_refused(url: &str) {
    let Ok(policy) = crate::settings::outbound_policy() else { return };
    let Ok(uri) = url.parse::<axum::http::Uri>() else { return };
    let scheme = uri.scheme_str().unwrap_or_default();
    let port = uri.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
    let warn = |reason: &str| {
        // The reason may already name the setting; say what to set once.
        let reason = reason.split(" (the operator can allow it").next().unwrap_or(reason);
        eprintln!(
            "note: {url}: {reason}. Senders deliver there only when they run with CHATDESK_OUTBOUND_ALLOW naming {}:{port} (docs/security.md)",
            uri.host().unwrap_or_default()
        )
    };
    let host = match policy.check_url(scheme, uri.host(), port) {
        Ok((host, _)) => host.trim_start_matches('[').trim_end_matches(']').to_owned(),
        Err(refused) => return warn(&refused.to_string()),
    };
    if host.parse::<std::net::IpAddr>().is_ok() {
        return;
    }
    let lookup =
        tokio::time::timeout(std::time::Duration::from_secs(2), tokio::net::lookup_host((host.as_str(), port)));
    if let Ok(Ok(addresses)) = lookup.await {
        let addresses: Vec<std::net::SocketAddr> = addresses.collect();
        if !addresses.is_empty() && !addresses.iter().any(|address| policy.allows_resolved(&host, address.ip())) {
            warn(&chatdesk_core::outbound::Refused::NotPublic.to_string());
        }
    }
}
