//! Message search at scale: `GET /v1/search` of a `chatdesk serve --roles ingress` over private
//! Redis and PostgreSQL servers holding `--messages` messages of two tenants (90 % and 10 %),
//! 20 to a conversation, with bodies whose words follow a Zipf-like law (a few words in most
//! messages, most words in few), a long tail of names and references, and common two-word
//! phrases.
//!
//! ```text
//! cargo build --release -p chatdesk -p chatdesk-load-tests
//! cargo run --release -p chatdesk-load-tests --bin search-bench -- [--messages 1000000]
//! ```
//!
//! The rows go straight into PostgreSQL (contacts and conversations by `generate_series`, the
//! messages by one `COPY` with every index in place, then `VACUUM ANALYZE`); the bodies
//! are generated here, so each word's and phrase's exact number of matching messages is known.
//! For each tenant it then picks query words of four classes by that count (a rare word of
//! about 10 messages, a medium one of about 1 %, a common one of about 10 %, a quoted two-word
//! phrase of about 1 %), five queries per class, and times them one at a time over HTTP with the
//! tenant owner's token: client latency percentiles, the server's own request histogram, and
//! the two store queries behind the endpoint timed alone. Each figure is printed next to the
//! 100 ms goal; nothing fails on a timing. It fails when a query is answered with an error,
//! with another tenant's message, conversation or contact, or with a different number of hits
//! than the data holds.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use chatdesk_core::events::MessageStatus;
use chatdesk_load_tests::{
    Histogram, SplitMix64 as Rng, admin, chatdesk_binary, cpu_seconds, cpu_shares, histogram, percentile, scrape,
    tree_cpu_seconds,
};
use chatdesk_local::{PostgresOptions, PostgresServer, RedisOptions, RedisServer};
use clap::Parser;
use serde_json::Value;
use uuid::Uuid;

#[derive(Parser)]
#[command(about = "Latency of GET /v1/search over a million messages, next to the 100 ms goal")]
struct Args {
    /// Messages stored before the queries, over both tenants.
    #[arg(long, default_value_t = 1_000_000)]
    messages: usize,
    /// Messages per conversation.
    #[arg(long, default_value_t = 20)]
    per_conversation: usize,
    /// Timed runs of each query (five queries per class and tenant).
    #[arg(long, default_value_t = 10)]
    repeats: usize,
    /// Seeds the generated text.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// After the run, keep the servers up (their URLs printed) until Enter, to read plans by hand.
    #[arg(long)]
    hold: bool,
    /// The chatdesk binary; defaults to the one next to this benchmark (same build profile).
    #[arg(long)]
    chatdesk: Option<PathBuf>,
}

/// The issue's goal for one search request.
const GOAL_MS: f64 = 100.0;
/// Every tenth conversation is the smaller tenant's.
const SMALL_EVERY: i64 = 10;
/// The endpoint's default page: what a user sees first.
const PAGE: usize = 20;
const QUERIES_PER_CLASS: usize = 5;

/// Distinct words the bulk of the text is drawn from, most frequent first.
const VOCABULARY: usize = 4_000;
/// Word frequencies fall as 1 / rank^s: s = 1 is Zipf's law for natural language.
const ZIPF_EXPONENT: f64 = 1.0;
/// The share of messages that name something rare (a person, a product, a reference), and how
/// many messages of the whole set each of those names appears in on average: real text has
/// far more distinct rare words than a vocabulary, and they are what a rare query finds.
const TAIL_SHARE: f64 = 0.3;
const TAIL_HITS: usize = 10;
/// The share of messages that hold one of the set phrases below.
const PHRASE_SHARE: f64 = 0.06;

/// The most frequent words of customer conversations, roughly by frequency: the head of the
/// Zipf distribution. Made-up, word-shaped tokens fill the vocabulary after them.
const COMMON_WORDS: &str = "\
    i the to my you a and is it for of order in have not me on this can please with we your be was \
    that thanks hi hello but do will are at so if what when just from help need still get delivery \
    package no yes an as there they our how did would could has had been out up about all one \
    received today time now know want payment thank refund account number back like see check email \
    sent any days new card some here again why which week status tracking address item return phone \
    problem more only ok call also very go make us who sure soon store app where after before \
    product price service customer code shipping cancel change wrong size box money update confirm \
    message reply day hours login password issue shop online website working doesnt cant error \
    arrived missing damaged broken paid charged twice invoice receipt bank transfer credit debit \
    gift promo discount voucher coupon sale free cost fee extra tax total amount balance \
    subscription plan monthly yearly renew expired trial upgrade downgrade cancelled pending \
    shipped dispatched courier driver van warehouse stock available colour color black white blue \
    red green small medium large label print pickup collect locker tomorrow yesterday morning \
    evening afternoon night monday tuesday wednesday thursday friday saturday sunday weekend month \
    year ago late early fast slow quick asap urgent waiting wait waited long since never always \
    already yet another other same different first last next previous original replacement exchange \
    swap refunded approved declined rejected verified link click open closed team manager agent \
    person someone anyone chat support contact name surname postcode city street house flat floor \
    door building office home work mobile laptop tablet charger cable battery screen camera \
    headphones shoes shirt dress jacket jeans bag watch ring book table chair lamp bed sofa kitchen \
    fridge oven machine parts pieces manual instructions warranty guarantee repair fix replace \
    install setup reset restart version download upload file photo picture attached screenshot \
    video form field button page cart basket checkout apply applied used use using tried try trying \
    sorry apologies understand explain tell told said say ask asked asking question answer \
    information details info reference note notes request requested complaint feedback review \
    rating stars happy unhappy disappointed angry great good bad better worse best worst fine thing \
    things something nothing everything way ways really actually maybe probably kindly regards \
    wishes cheers bye goodbye possible able unable allowed";

/// Phrases customers write as one, chosen by weight 1 / (place + 1) when a message holds one.
const PHRASES: &[(&str, &str)] = &[
    ("tracking", "number"),
    ("order", "status"),
    ("credit", "card"),
    ("phone", "number"),
    ("delivery", "address"),
    ("customer", "service"),
    ("gift", "card"),
    ("promo", "code"),
    ("return", "label"),
    ("account", "password"),
    ("shipping", "cost"),
    ("wrong", "size"),
];

/// A pronounceable made-up word for `index` (the same index, the same word).
fn coined(index: u64) -> String {
    const ONSETS: &[&str] = &[
        "b", "br", "c", "ch", "d", "dr", "f", "g", "gr", "h", "j", "k", "l", "m", "n", "p", "pl", "r", "s", "sh", "st",
        "t", "tr", "v", "w", "z",
    ];
    const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "ai", "ea", "ou"];
    const CODAS: &[&str] = &["", "", "n", "r", "l", "s", "t", "nd", "rk", "x"];
    let mut rng = Rng(index.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5EED);
    let syllables = 2 + rng.below(2);
    let mut word = String::new();
    for _ in 0..syllables {
        word.push_str(ONSETS[rng.below(ONSETS.len())]);
        word.push_str(VOWELS[rng.below(VOWELS.len())]);
    }
    word.push_str(CODAS[rng.below(CODAS.len())]);
    word
}

/// The words messages are made of: the vocabulary (real words, then coined ones), then the tail.
struct Corpus {
    words: Vec<String>,
    /// Cumulative Zipf weights over the vocabulary.
    cumulative: Vec<f64>,
    tail: usize,
    phrases: Vec<(u32, u32)>,
    phrase_cumulative: Vec<f64>,
}

impl Corpus {
    fn new(messages: usize) -> anyhow::Result<Self> {
        let mut words: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        for word in COMMON_WORDS.split_whitespace() {
            if seen.insert(word.to_owned()) {
                words.push(word.to_owned());
            }
        }
        let tail = (messages as f64 * TAIL_SHARE / TAIL_HITS as f64).ceil().max(1.0) as usize;
        let mut index = 0u64;
        while words.len() < VOCABULARY + tail {
            let word = coined(index);
            index += 1;
            if seen.insert(word.clone()) {
                words.push(word);
            }
        }
        let mut total = 0.0;
        let cumulative = (0..VOCABULARY)
            .map(|rank| {
                total += 1.0 / ((rank + 1) as f64).powf(ZIPF_EXPONENT);
                total
            })
            .collect();
        let id = |word: &str| words.iter().position(|known| known == word).map(|place| place as u32);
        let mut phrases = Vec::new();
        for (first, second) in PHRASES {
            phrases.push((
                id(first).with_context(|| format!("{first} is not in the vocabulary"))?,
                id(second).with_context(|| format!("{second} is not in the vocabulary"))?,
            ));
        }
        let mut total = 0.0;
        let phrase_cumulative = (0..PHRASES.len())
            .map(|place| {
                total += 1.0 / (place + 1) as f64;
                total
            })
            .collect();
        Ok(Self { words, cumulative, tail, phrases, phrase_cumulative })
    }

    fn pick(cumulative: &[f64], rng: &mut Rng) -> usize {
        let target = rng.unit() * cumulative.last().copied().unwrap_or(0.0);
        cumulative.partition_point(|weight| *weight <= target).min(cumulative.len() - 1)
    }

    /// One message's words, as ids into `words`.
    fn message(&self, rng: &mut Rng, tokens: &mut Vec<u32>) {
        tokens.clear();
        let length = 4 + rng.below(17);
        for _ in 0..length {
            tokens.push(Self::pick(&self.cumulative, rng) as u32);
        }
        if rng.unit() < PHRASE_SHARE {
            let (first, second) = self.phrases[Self::pick(&self.phrase_cumulative, rng)];
            let at = rng.below(tokens.len() + 1);
            tokens.splice(at..at, [first, second]);
        }
        if rng.unit() < TAIL_SHARE {
            let at = rng.below(tokens.len() + 1);
            tokens.insert(at, (VOCABULARY + rng.below(self.tail)) as u32);
        }
    }

    fn text(&self, tokens: &[u32], question: bool, into: &mut String) {
        for (place, token) in tokens.iter().enumerate() {
            let word = &self.words[*token as usize];
            if place == 0 {
                let mut letters = word.chars();
                if let Some(first) = letters.next() {
                    into.extend(first.to_uppercase());
                    into.push_str(letters.as_str());
                }
            } else {
                into.push(' ');
                into.push_str(word);
            }
        }
        into.push(if question { '?' } else { '.' });
    }
}

/// How many messages of one tenant hold each word and each phrase (a message counts once).
struct Counts {
    messages: usize,
    words: Vec<u32>,
    phrases: Vec<u32>,
    last_seen: Vec<u32>,
}

impl Counts {
    fn new(corpus: &Corpus) -> Self {
        Self {
            messages: 0,
            words: vec![0; corpus.words.len()],
            phrases: vec![0; corpus.phrases.len()],
            last_seen: vec![0; corpus.words.len()],
        }
    }

    fn add(&mut self, corpus: &Corpus, tokens: &[u32]) {
        self.messages += 1;
        let stamp = self.messages as u32;
        for token in tokens {
            let seen = &mut self.last_seen[*token as usize];
            if *seen != stamp {
                *seen = stamp;
                self.words[*token as usize] += 1;
            }
        }
        // Whether a phrase's words stand next to each other, as `"first second"` asks.
        let mut found = 0u32;
        for pair in tokens.windows(2) {
            for (place, phrase) in corpus.phrases.iter().enumerate() {
                if (pair[0], pair[1]) == *phrase {
                    found |= 1 << place;
                }
            }
        }
        for (place, count) in self.phrases.iter_mut().enumerate() {
            if found & (1 << place) != 0 {
                *count += 1;
            }
        }
    }

    /// The `QUERIES_PER_CLASS` words whose counts are nearest `target` (by ratio).
    fn words_near(&self, corpus: &Corpus, target: f64) -> Vec<Query> {
        let mut candidates: Vec<(f64, usize)> = self
            .words
            .iter()
            .enumerate()
            // `or` is an operator of the web search syntax, not a word to find.
            .filter(|(id, count)| **count > 0 && corpus.words[*id] != "or")
            .map(|(id, count)| (((*count as f64) / target).ln().abs(), id))
            .collect();
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        candidates
            .into_iter()
            .take(QUERIES_PER_CLASS)
            .map(|(_, id)| Query { text: corpus.words[id].clone(), hits: self.words[id] })
            .collect()
    }

    fn phrases_near(&self, corpus: &Corpus, target: f64) -> Vec<Query> {
        let mut candidates: Vec<(f64, usize)> = self
            .phrases
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .map(|(place, count)| (((*count as f64) / target).ln().abs(), place))
            .collect();
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        candidates
            .into_iter()
            .take(QUERIES_PER_CLASS)
            .map(|(_, place)| {
                let (first, second) = corpus.phrases[place];
                Query {
                    text: format!("\"{} {}\"", corpus.words[first as usize], corpus.words[second as usize]),
                    hits: self.phrases[place],
                }
            })
            .collect()
    }
}

struct Query {
    text: String,
    /// Messages of the tenant that match.
    hits: u32,
}

struct Class {
    name: &'static str,
    queries: Vec<Query>,
}

struct Tenant {
    label: &'static str,
    id: Uuid,
    owner: Uuid,
    inbox: Uuid,
    email: String,
    token: String,
    counts: Counts,
    /// Everything the searches returned, checked against the tenant afterwards.
    messages: HashSet<Uuid>,
    conversations: HashSet<Uuid>,
    contacts: HashSet<Uuid>,
}

/// `ms` since the epoch as a timestamptz literal (UTC), for `COPY`.
fn timestamp(ms: i64) -> String {
    // Days to a civil date: Howard Hinnant's `civil_from_days`.
    let (days, rest) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}+00",
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1_000 % 60,
        rest % 1_000
    )
}

struct Seeded {
    conversations: usize,
    setup: Duration,
    copy: Duration,
    vacuum: Duration,
}

/// Contacts and conversations by `generate_series`, then every message by one `COPY`.
async fn seed(
    pool: &chatdesk_store::Pool,
    args: &Args,
    corpus: &Corpus,
    tenants: &mut [Tenant; 2],
) -> anyhow::Result<Seeded> {
    let conversations = args.messages.div_ceil(args.per_conversation);
    // A year of conversations, one starting every few minutes, a minute between messages.
    let start_ms: i64 = 1_735_689_600_000; // 2025-01-01
    let step_ms = 365 * 86_400_000 / conversations.max(1) as i64;
    let started = Instant::now();
    let (large, small) = (&tenants[0], &tenants[1]);
    sqlx::query(
        "INSERT INTO contacts (id, tenant_id, inbox_id, external_id, name, created_at, updated_at) \
         SELECT gen_random_uuid(), \
                CASE WHEN g % $5 = 0 THEN $2 ELSE $1 END, CASE WHEN g % $5 = 0 THEN $4 ELSE $3 END, \
                'customer-' || g, 'Customer ' || g, at, at \
         FROM generate_series(0, $6 - 1) AS g, \
              LATERAL (SELECT to_timestamp(($7 + g * $8) / 1000.0) AS at) t",
    )
    .bind(large.id)
    .bind(small.id)
    .bind(large.inbox)
    .bind(small.inbox)
    .bind(SMALL_EVERY)
    .bind(conversations as i64)
    .bind(start_ms)
    .bind(step_ms)
    .execute(pool)
    .await?;
    // The newest conversations are still open; the rest were resolved.
    sqlx::query(
        "INSERT INTO conversations (id, tenant_id, inbox_id, contact_id, status, last_message_at, \
                                    last_activity_at, created_at, updated_at) \
         SELECT gen_random_uuid(), tenant_id, inbox_id, id, \
                CASE WHEN substr(external_id, 10)::int8 >= $1 - 500 THEN 'open' ELSE 'resolved' END, \
                created_at + ($2 - 1) * interval '1 minute', created_at + ($2 - 1) * interval '1 minute', \
                created_at, created_at \
         FROM contacts WHERE tenant_id IN ($3, $4)",
    )
    .bind(conversations as i64)
    .bind(args.per_conversation as i32)
    .bind(large.id)
    .bind(small.id)
    .execute(pool)
    .await?;
    let rows: Vec<(i64, Uuid, Uuid, Uuid, i64)> = sqlx::query_as(
        "SELECT substr(ct.external_id, 10)::int8, cv.id, ct.id, cv.tenant_id, \
                (extract(epoch FROM cv.created_at) * 1000)::int8 \
         FROM conversations cv JOIN contacts ct ON ct.id = cv.contact_id ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    ensure!(rows.len() == conversations, "{} conversations stored, {conversations} meant", rows.len());
    let setup = started.elapsed();

    let started = Instant::now();
    let mut connection = pool.acquire().await?;
    let mut copy = connection
        .copy_in_raw(
            "COPY messages (event_id, tenant_id, conversation_id, stream_offset, offset_ms, offset_seq, direction, \
             sender_kind, sender_id, body, provider_message_id, status, status_rank, created_at) FROM STDIN",
        )
        .await?;
    let mut rng = Rng(args.seed);
    let mut tokens = Vec::new();
    let mut chunk = String::with_capacity(4 << 20);
    let mut stored = 0usize;
    let delivered = (MessageStatus::Delivered.as_str(), MessageStatus::Delivered.rank());
    for (_, conversation, contact, tenant_id, begun_ms) in &rows {
        let tenant = if *tenant_id == tenants[0].id { 0 } else { 1 };
        let count = args.per_conversation.min(args.messages - stored);
        for place in 0..count {
            corpus.message(&mut rng, &mut tokens);
            tenants[tenant].counts.add(corpus, &tokens);
            let at_ms = begun_ms + place as i64 * 60_000;
            let inbound = place % 2 == 0;
            let sender = if inbound { *contact } else { tenants[tenant].owner };
            use std::fmt::Write;
            write!(
                chunk,
                "{}\t{tenant_id}\t{conversation}\t{at_ms}-0\t{at_ms}\t0\t{}\t{}\t{sender}\t",
                Uuid::now_v7(),
                if inbound { "inbound" } else { "outbound" },
                if inbound { "customer" } else { "agent" },
            )?;
            corpus.text(&tokens, rng.below(4) == 0, &mut chunk);
            if inbound {
                write!(chunk, "\tprovider-{stored}\t\\N\t-1\t")?;
            } else {
                write!(chunk, "\t\\N\t{}\t{}\t", delivered.0, delivered.1)?;
            }
            chunk.push_str(&timestamp(at_ms));
            chunk.push('\n');
            stored += 1;
        }
        if chunk.len() > 4 << 20 {
            copy.send(chunk.as_bytes()).await?;
            chunk.clear();
        }
    }
    copy.send(chunk.as_bytes()).await?;
    let copied = copy.finish().await?;
    ensure!(copied as usize == args.messages, "{copied} messages copied, {} meant", args.messages);
    drop(connection);
    let copy = started.elapsed();

    // What autovacuum would do after a bulk load: statistics for the planner, and the GIN
    // index's pending list merged, so queries do not scan it.
    let started = Instant::now();
    sqlx::raw_sql("VACUUM (ANALYZE) messages").execute(pool).await?;
    sqlx::raw_sql("ANALYZE contacts, conversations").execute(pool).await?;
    Ok(Seeded { conversations, setup, copy, vacuum: started.elapsed() })
}

/// A `chatdesk serve --roles ingress` against the private servers, stopped by [`stop`].
async fn serve(
    binary: &Path,
    redis_url: &str,
    database_url: &str,
    dir: &Path,
) -> anyhow::Result<(tokio::process::Child, SocketAddr)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let address: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let log = std::fs::File::create(dir.join("chatdesk.log"))?;
    let child = tokio::process::Command::new(binary)
        .args(["serve", "--roles", "ingress", "--http", &address.to_string()])
        .env("REDIS_URL", redis_url)
        .env("DATABASE_URL", database_url)
        .env("CHATDESK_JWT_SECRET", chatdesk_core::auth::TokenKey::generate_secret())
        .env("CHATDESK_STREAMS", concat!(env!("CARGO_MANIFEST_DIR"), "/../streams.toml"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start chatdesk serve")?;
    let http = chatdesk_outbound::http_client(Duration::from_secs(2))?;
    let started = Instant::now();
    while !http.get(format!("http://{address}/readyz")).send().await.is_ok_and(|answer| answer.status() == 200) {
        if started.elapsed() > Duration::from_secs(90) {
            bail!("chatdesk serve did not become ready (see {})", dir.join("chatdesk.log").display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((child, address))
}

async fn stop(mut child: tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill").args(["-s", "INT", &pid.to_string()]).status();
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
}

/// One class's figures for one tenant.
struct Measured {
    tenant: &'static str,
    class: &'static str,
    client: Vec<Duration>,
    server: Histogram,
    store_messages: Vec<Duration>,
    store_contacts: Vec<Duration>,
    timeouts: usize,
}

/// Runs `query` as `tenant` and checks the answer against the data: status, hit count, paging.
/// Returns the latency and whether the server gave up on the query (its statement timeout, a
/// figure to print rather than a failure).
async fn search(
    http: &reqwest::Client,
    address: SocketAddr,
    tenant: &mut Tenant,
    query: &Query,
) -> anyhow::Result<(Duration, bool)> {
    let url = reqwest::Url::parse_with_params(&format!("http://{address}/v1/search"), [("q", query.text.as_str())])?;
    let started = Instant::now();
    let response = http.get(url).bearer_auth(&tenant.token).send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    let elapsed = started.elapsed();
    if status == 503 && String::from_utf8_lossy(&body).contains("took too long") {
        return Ok((elapsed, true));
    }
    if status != 200 {
        bail!("{} tenant, q={}: HTTP {status}: {}", tenant.label, query.text, String::from_utf8_lossy(&body));
    }
    let answer: Value = serde_json::from_slice(&body)?;
    let messages = answer["messages"].as_array().context("no messages in the answer")?;
    let expected = (query.hits as usize).min(PAGE);
    ensure!(
        messages.len() == expected && answer["next_cursor"].is_string() == (query.hits as usize > PAGE),
        "{} tenant, q={}: {} messages (next_cursor {}) where the data holds {} matches",
        tenant.label,
        query.text,
        messages.len(),
        answer["next_cursor"],
        query.hits
    );
    for message in messages {
        tenant.messages.insert(message["message_id"].as_str().context("message_id")?.parse()?);
        tenant.conversations.insert(message["conversation_id"].as_str().context("conversation_id")?.parse()?);
    }
    for contact in answer["contacts"].as_array().context("no contacts in the answer")? {
        tenant.contacts.insert(contact["id"].as_str().context("contact id")?.parse()?);
    }
    Ok((elapsed, false))
}

/// Every message, conversation and contact a tenant's searches returned is that tenant's.
async fn check_isolation(pool: &chatdesk_store::Pool, tenant: &Tenant) -> anyhow::Result<()> {
    for (table, ids, sql) in [
        (
            "messages",
            &tenant.messages,
            "SELECT count(*) FILTER (WHERE tenant_id = $2), count(*) FILTER (WHERE tenant_id <> $2) \
             FROM messages WHERE event_id = ANY($1)",
        ),
        (
            "conversations",
            &tenant.conversations,
            "SELECT count(*) FILTER (WHERE tenant_id = $2), count(*) FILTER (WHERE tenant_id <> $2) \
             FROM conversations WHERE id = ANY($1)",
        ),
        (
            "contacts",
            &tenant.contacts,
            "SELECT count(*) FILTER (WHERE tenant_id = $2), count(*) FILTER (WHERE tenant_id <> $2) \
             FROM contacts WHERE id = ANY($1)",
        ),
    ] {
        let ids: Vec<Uuid> = ids.iter().copied().collect();
        let (own, other): (i64, i64) = sqlx::query_as(sql).bind(&ids).bind(tenant.id).fetch_one(pool).await?;
        ensure!(other == 0, "the {} tenant's searches returned {other} {table} of the other tenant", tenant.label);
        ensure!(own as usize == ids.len(), "the {} tenant's searches returned {table} that do not exist", tenant.label);
    }
    Ok(())
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn thousands(value: usize) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (place, digit) in digits.chars().enumerate() {
        if place > 0 && (digits.len() - place).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn mib(bytes: i64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.messages >= 1_000, "--messages must be at least 1000");
    ensure!(args.per_conversation >= 1, "--per-conversation must be at least 1");
    let binary = chatdesk_binary(args.chatdesk.as_deref())?;
    let dir = std::env::temp_dir().join(format!("chatdesk-search-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run(&args, &binary, &dir).await;
    // A million rows' database is a gigabyte of disk: it goes whether the run failed or not
    // (the servers were stopped when `run` returned).
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run(args: &Args, binary: &Path, dir: &Path) -> anyhow::Result<()> {
    let mut redis = RedisServer::start(RedisOptions::new(dir.join("redis"))).await?;
    let mut postgres = PostgresServer::start(PostgresOptions::new(dir.join("postgres"))).await?;
    let database_url = postgres.url();
    let migrate = std::process::Command::new(binary).arg("migrate").env("DATABASE_URL", &database_url).output()?;
    ensure!(migrate.status.success(), "chatdesk migrate: {}", String::from_utf8_lossy(&migrate.stderr));

    let corpus = Corpus::new(args.messages)?;
    let mut tenants = Vec::new();
    for label in ["larger", "smaller"] {
        let email = format!("owner-{label}@bench.test");
        let created = admin(
            binary,
            &database_url,
            &["tenant", "create", "--name", label, "--owner-email", &email, "--password", "bench-pass-1"],
        )?;
        let id = created["tenant_id"].as_str().context("tenant_id")?.to_owned();
        let inbox = admin(
            binary,
            &database_url,
            &["inbox", "create", "--tenant", &id, "--kind", "generic", "--name", "bench"],
        )?;
        tenants.push(Tenant {
            label,
            id: id.parse()?,
            owner: created["user_id"].as_str().context("user_id")?.parse()?,
            inbox: inbox["inbox_id"].as_str().context("inbox_id")?.parse()?,
            email,
            token: String::new(),
            counts: Counts::new(&corpus),
            messages: HashSet::new(),
            conversations: HashSet::new(),
            contacts: HashSet::new(),
        });
    }
    let mut tenants: [Tenant; 2] = tenants.try_into().map_err(|_| anyhow::anyhow!("two tenants"))?;

    let pool = chatdesk_store::connect(&database_url, 4).await?;
    let seeded = seed(&pool, args, &corpus, &mut tenants).await?;
    let sizes: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT pg_relation_size('messages'), pg_relation_size('messages_search'), pg_indexes_size('messages'), \
                pg_total_relation_size('messages')",
    )
    .fetch_one(&pool)
    .await?;
    let postgres_version: String = sqlx::query_scalar("SHOW server_version").fetch_one(&pool).await?;
    let shared_buffers: String = sqlx::query_scalar("SHOW shared_buffers").fetch_one(&pool).await?;

    let (server, address) = serve(binary, &redis.url(), &database_url, dir).await?;
    let http = chatdesk_outbound::http_client(Duration::from_secs(120))?;
    for tenant in tenants.iter_mut() {
        let login: Value = http
            .post(format!("http://{address}/v1/auth/login"))
            .json(&serde_json::json!({"email": tenant.email, "password": "bench-pass-1"}))
            .send()
            .await?
            .json()
            .await?;
        tenant.token = login["token"].as_str().with_context(|| format!("login: {login}"))?.to_owned();
    }

    println!(
        "search-bench: GET /v1/search of `chatdesk serve --roles ingress`, PostgreSQL {postgres_version} \
         (shared_buffers {shared_buffers}), one query at a time over loopback"
    );
    println!(
        "data: {} messages in {} conversations ({} per conversation): larger tenant {}, smaller tenant {}",
        thousands(args.messages),
        thousands(seeded.conversations),
        args.per_conversation,
        thousands(tenants[0].counts.messages),
        thousands(tenants[1].counts.messages)
    );
    println!(
        "seeding: contacts and conversations {:.1} s; messages by COPY with the indexes in place {:.1} s \
         ({:.0} messages/s); VACUUM ANALYZE {:.1} s; all {:.0} messages/s",
        seeded.setup.as_secs_f64(),
        seeded.copy.as_secs_f64(),
        args.messages as f64 / seeded.copy.as_secs_f64(),
        seeded.vacuum.as_secs_f64(),
        args.messages as f64 / (seeded.setup + seeded.copy + seeded.vacuum).as_secs_f64()
    );
    println!(
        "sizes: messages table {}, messages_search (GIN) {}, all indexes of messages {}, messages in all {}",
        mib(sizes.0),
        mib(sizes.1),
        mib(sizes.2),
        mib(sizes.3)
    );

    let mut plans = Vec::new();
    for tenant in &tenants {
        let size = tenant.counts.messages as f64;
        plans.push(vec![
            Class { name: "rare word (~10 hits)", queries: tenant.counts.words_near(&corpus, 10.0) },
            Class { name: "medium word (~1%)", queries: tenant.counts.words_near(&corpus, size * 0.01) },
            Class { name: "common word (~10%)", queries: tenant.counts.words_near(&corpus, size * 0.10) },
            Class { name: "two-word phrase (~1%)", queries: tenant.counts.phrases_near(&corpus, size * 0.01) },
        ]);
    }
    println!("queries (matching messages of the tenant):");
    for (tenant, classes) in tenants.iter().zip(&plans) {
        for class in classes {
            let listed: Vec<String> = class
                .queries
                .iter()
                .map(|query| format!("{} ({})", query.text, thousands(query.hits as usize)))
                .collect();
            println!("  {:<8} {:<22} {}", tenant.label, class.name, listed.join(", "));
        }
    }

    // Each query once before timing: the figures are of a warm server, as a busy one is.
    for (tenant, classes) in tenants.iter_mut().zip(&plans) {
        for query in classes.iter().flat_map(|class| &class.queries) {
            search(&http, address, tenant, query).await?;
        }
    }

    let own = std::process::id();
    let own_name = std::fs::read_to_string("/proc/self/comm").unwrap_or_default().trim().to_owned();
    let cpu_before = (cpu_seconds(own)?, tree_cpu_seconds(own), Instant::now());
    let mut measured = Vec::new();
    for (tenant, classes) in tenants.iter_mut().zip(&plans) {
        for class in classes {
            let before = scrape(address).await?;
            let (mut client, mut timeouts) = (Vec::new(), 0);
            for _ in 0..args.repeats {
                for query in &class.queries {
                    let (elapsed, timed_out) = search(&http, address, tenant, query).await?;
                    client.push(elapsed);
                    timeouts += usize::from(timed_out);
                }
            }
            let after = scrape(address).await?;
            let filter = ["route=\"/v1/search\""];
            let server = histogram(&after, "chatdesk_http_request_duration_seconds", &filter).since(&histogram(
                &before,
                "chatdesk_http_request_duration_seconds",
                &filter,
            ));
            client.sort();
            measured.push(Measured {
                tenant: tenant.label,
                class: class.name,
                client,
                server,
                store_messages: Vec::new(),
                store_contacts: Vec::new(),
                timeouts,
            });
        }
    }
    let wall = cpu_before.2.elapsed().as_secs_f64();
    let generator = (cpu_seconds(own)? - cpu_before.0) / wall;
    let (mut servers_before, mut servers_after) = (cpu_before.1, tree_cpu_seconds(own));
    servers_before.remove(&own_name);
    servers_after.remove(&own_name);
    let servers = cpu_shares(&servers_before, &servers_after, wall);

    // The endpoint's two queries alone, straight from the store (the handler asks one more
    // message than the page, to know whether there is a next one).
    let mut index = 0;
    for (tenant, classes) in tenants.iter().zip(&plans) {
        for class in classes {
            let figures = &mut measured[index];
            index += 1;
            for _ in 0..2 {
                for query in &class.queries {
                    let started = Instant::now();
                    chatdesk_store::workspace::search_messages(&pool, tenant.id, &query.text, None, 0, PAGE as i64 + 1)
                        .await?;
                    figures.store_messages.push(started.elapsed());
                    let started = Instant::now();
                    chatdesk_store::workspace::search_contacts(&pool, tenant.id, &query.text, None, 10).await?;
                    figures.store_contacts.push(started.elapsed());
                }
            }
            figures.store_messages.sort();
            figures.store_contacts.sort();
        }
    }

    for tenant in &tenants {
        check_isolation(&pool, tenant).await?;
    }

    println!();
    println!(
        "client latency per class ({} queries each: {} queries x {} runs; goal {GOAL_MS:.0} ms; ms):",
        QUERIES_PER_CLASS * args.repeats,
        QUERIES_PER_CLASS,
        args.repeats
    );
    println!(
        "{:<8} {:<22} {:>8} {:>8} {:>8} {:>8} {:>9} {:>12} {:>11} {:>15} {:>13} {:>9}",
        "tenant",
        "class",
        "p50",
        "p95",
        "p99",
        "max",
        "p99/goal",
        "server mean",
        "server p99",
        "store msgs p50",
        "contacts p50",
        "timeouts"
    );
    let mut slowest: Option<&Measured> = None;
    for figures in &measured {
        let p99 = percentile(&figures.client, 0.99);
        println!(
            "{:<8} {:<22} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>12.2} {:>11.2} {:>15.2} {:>13.2} {:>9}",
            figures.tenant,
            figures.class,
            ms(percentile(&figures.client, 0.50)),
            ms(percentile(&figures.client, 0.95)),
            ms(p99),
            ms(figures.client.last().copied().unwrap_or_default()),
            ms(p99) / GOAL_MS,
            figures.server.mean().unwrap_or(f64::NAN) * 1000.0,
            figures.server.quantile(0.99).unwrap_or(f64::NAN) * 1000.0,
            ms(percentile(&figures.store_messages, 0.50)),
            ms(percentile(&figures.store_contacts, 0.50)),
            figures.timeouts,
        );
        if slowest.is_none_or(|worst| percentile(&worst.client, 0.99) < p99) {
            slowest = Some(figures);
        }
    }
    println!("CPU over the timed queries (100% = one core): load generator {:.0}%, {servers}", generator * 100.0);
    println!("tenant isolation: every returned message, conversation and contact was the searching tenant's");
    if let Some(worst) = slowest {
        println!(
            "slowest class: {} of the {} tenant, {} messages",
            worst.class,
            worst.tenant,
            thousands(args.messages)
        );
        println!("slowest p99 ms: {:.2}", ms(percentile(&worst.client, 0.99)));
    }

    if args.hold {
        println!();
        println!("servers kept up: DATABASE_URL={database_url} REDIS_URL={} chatdesk http://{address}", redis.url());
        println!("press Enter to stop them");
        tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new())).await??;
    }
    pool.close().await;
    stop(server).await;
    redis.stop().await;
    postgres.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::timestamp;

    #[test]
    fn timestamps_are_utc_civil_dates() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00.000+00");
        assert_eq!(timestamp(1_735_689_600_000), "2025-01-01 00:00:00.000+00");
        assert_eq!(timestamp(1_709_164_800_000 + 3_723_004), "2024-02-29 01:02:03.004+00");
        assert_eq!(timestamp(951_868_799_999), "2000-02-29 23:59:59.999+00");
    }
}
