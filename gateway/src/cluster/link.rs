//! The cluster's I/O: the tasks between NATS and the hub.
//!
//! - `publish`: each queued publish goes to NATS. QoS 0 on the core subject
//!   `<prefix>.v.<tokens>`; QoS 1/2 to JetStream on `<prefix>.d.<tokens>` (the stream's
//!   subjects) with `Nats-Msg-Id` for de-duplication, and the hub is told
//!   ([`Hub::persisted`]) once JetStream acknowledged the store (then the PUBACK / PUBREC
//!   goes out) or failed to (0x80; a failure while connected is retried for up to
//!   [`HOLD`] first). A retained message is also written to the KV bucket (or its key
//!   deleted) before that. While NATS is not connected, QoS 1/2 publishes fail at once
//!   (never acknowledged) and QoS 0 ones are dropped and counted.
//! - `interest`: one core NATS subscription per filter this gateway's sessions hold
//!   (`<prefix>.*.<filter tokens>`), shared by all of them; each message received is handed
//!   to [`Hub::deliver`] (the broker matches it against its sessions). A message two
//!   overlapping subscriptions both receive is delivered once (by its `Fleet-Id`).
//! - `replay_after_reconnect`: what the stream stored while this gateway was cut off from
//!   NATS is read back for every filter held and delivered (once, by `Fleet-Id`).
//! - `setup`: creates (or finds) the stream and the buckets, then watches the retained
//!   bucket into the local copy; it retries every second while NATS is unreachable.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, kv, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use fleet_protocol::mqtt::QoS;
use futures_util::StreamExt;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;

use super::backend::{lock, Interest, Outbound, Queue, SharedRetained};
use super::config::ClusterConfig;
use super::{envelope, subject};
use crate::broker::{Message, StoreOutcome};
use crate::hub::Hub;

/// The header naming a message across the cluster (de-duplication on delivery).
pub const FLEET_ID: &str = "Fleet-Id";
/// Message ids remembered to drop a second copy of one message.
const RECENT_IDS: usize = 16_384;
/// How long a QoS 1/2 publish JetStream did not store is retried before it is refused.
const HOLD: Duration = Duration::from_secs(5);
/// How long the round trip after new subscriptions may take before SUBACKs go out anyway.
const FLUSH_WITHIN: Duration = Duration::from_secs(1);
/// How long one try waits for JetStream's acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// The pause between two tries.
const RETRY_STORE: Duration = Duration::from_millis(100);
/// How far before the connection was lost a replay starts (stream timestamps are the NATS
/// servers' clocks).
const REPLAY_MARGIN: Duration = Duration::from_secs(2);
/// How long a replay is tried before it is given up (and logged as an error).
const REPLAY_WITHIN: Duration = Duration::from_secs(30);
/// How long to wait before setting up the stream and buckets again.
const RETRY: Duration = Duration::from_secs(1);

/// Whether the cluster can take messages, and why not.
#[derive(Debug, Default)]
pub struct Status {
    connected: AtomicBool,
    /// When the connection to NATS was last lost (replay starts a little before).
    lost_at: Mutex<Option<SystemTime>>,
    /// Woken when the connection comes back.
    pub(super) reconnected: tokio::sync::Notify,
    set_up: AtomicBool,
    problem: Mutex<Option<String>>,
    /// QoS 0 messages dropped because NATS was not ready, not yet in the metrics.
    pub dropped_volatile: AtomicU64,
    /// QoS 1/2 publishes refused (0x80 / close) because the store did not take them, not yet
    /// in the metrics.
    pub store_failures: AtomicU64,
}

impl Status {
    /// `Ok` when connected to NATS with the stream and buckets in place; else what is wrong.
    pub fn ready(&self) -> Result<(), String> {
        if !self.connected.load(Ordering::Acquire) {
            let why = self.problem();
            return Err(format!(
                "not connected to NATS{}",
                why.map_or(String::new(), |w| format!(" ({w})"))
            ));
        }
        if !self.set_up.load(Ordering::Acquire) {
            let why = self.problem().unwrap_or_else(|| "in progress".into());
            return Err(format!("JetStream stream and buckets not set up: {why}"));
        }
        Ok(())
    }

    /// Whether the connection to NATS is up now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn set_problem(&self, problem: Option<String>) {
        *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = problem;
    }

    pub(super) fn set_connected(&self, connected: bool) {
        let was = self.connected.swap(connected, Ordering::AcqRel);
        if was && !connected {
            *self.lost_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(SystemTime::now());
        }
        if !was && connected {
            self.reconnected.notify_one();
        }
    }

    fn take_lost_at(&self) -> Option<SystemTime> {
        self.lost_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// Message ids seen lately, oldest first out.
#[derive(Debug, Default)]
struct Recent {
    ids: HashSet<Box<str>>,
    order: VecDeque<Box<str>>,
}

impl Recent {
    /// False when `id` was already seen.
    fn first_time(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() >= RECENT_IDS {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self.ids.insert(id.into());
        self.order.push_back(id.into());
        true
    }
}

/// What the link tasks share.
pub struct Link {
    pub(super) config: ClusterConfig,
    pub(super) client: async_nats::Client,
    pub(super) js: jetstream::Context,
    pub(super) hub: Arc<Hub>,
    pub(super) status: Arc<Status>,
    pub(super) retained: SharedRetained,
    retained_kv: Mutex<Option<kv::Store>>,
    /// This gateway's name in the cluster.
    pub(super) name: String,
    /// Prefix of this process's message ids (gateway name and start time).
    ids: String,
    recent: Mutex<Recent>,
    /// The filters the interest task subscribes to (what a replay covers).
    held: Mutex<HashSet<Box<str>>>,
}

impl Link {
    pub(super) fn new(
        config: ClusterConfig,
        client: async_nats::Client,
        hub: Arc<Hub>,
        status: Arc<Status>,
        retained: SharedRetained,
        name: &str,
    ) -> Link {
        let started = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Link {
            // A publish whose stream leader is gone (a NATS node died) times out after this
            // and is retried (see `Link::store`) rather than waited on for the default 5 s.
            js: jetstream::ContextBuilder::new()
                .timeout(ACK_TIMEOUT)
                .build(client.clone()),
            config,
            client,
            hub,
            status,
            retained,
            retained_kv: Mutex::new(None),
            name: name.to_owned(),
            ids: format!("{name}-{}-{started:x}", std::process::id()),
            recent: Mutex::new(Recent::default()),
            held: Mutex::new(HashSet::new()),
        }
    }

    fn subject(&self, kind: char, topic: &str) -> String {
        format!(
            "{}.{kind}.{}",
            self.config.subject_prefix,
            subject::topic_to_tokens(topic)
        )
    }

    fn kv(&self) -> Option<kv::Store> {
        self.retained_kv
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sends queued publishes to NATS until the channel closes.
    pub(super) async fn publish(
        self: Arc<Self>,
        mut queue: UnboundedReceiver<Outbound>,
        counters: Arc<Queue>,
    ) {
        while let Some(Outbound { ticket, message }) = queue.recv().await {
            counters.waiting.fetch_sub(1, Ordering::Relaxed);
            let durable = message.qos != QoS::AtMostOnce;
            if let Err(why) = self.status.ready() {
                if durable {
                    self.status.store_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(topic = %message.topic, "QoS {} publish not stored, refused: {why}", message.qos as u8);
                    self.hub.persisted(ticket, StoreOutcome::Failed);
                } else {
                    // Counted in the metrics; /readyz and the connection errors say why.
                    self.status.dropped_volatile.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(topic = %message.topic, "QoS 0 publish dropped: {why}");
                }
                continue;
            }
            let id = format!("{}-{}", self.ids, ticket.get());
            let body = envelope::encode(&message, SystemTime::now());
            let mut headers = HeaderMap::new();
            headers.insert(FLEET_ID, id.as_str());
            if !durable {
                let subject = self.subject('v', &message.topic);
                if let Err(e) = self
                    .client
                    .publish_with_headers(subject, headers, body.clone())
                    .await
                {
                    self.status.dropped_volatile.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(topic = %message.topic, error = %e, "QoS 0 publish to NATS failed");
                }
                if message.retain {
                    let _ = self.write_retained(&message, body).await;
                }
                continue;
            }
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
            let subject = self.subject('d', &message.topic);
            let sent = self
                .js
                .publish_with_headers(subject.clone(), headers.clone(), body.clone())
                .await;
            let link = self.clone();
            tokio::spawn(async move {
                let stored = link.store(sent, subject, headers, body.clone()).await;
                let stored = match stored {
                    Ok(_) if message.retain => link.write_retained(&message, body).await,
                    Ok(_) => Ok(()),
                    Err(e) => Err(e),
                };
                let outcome = match stored {
                    Ok(()) => StoreOutcome::Stored,
                    Err(e) => {
                        link.status.store_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(topic = %message.topic, error = %e, "JetStream did not store a QoS {} publish: refused", message.qos as u8);
                        StoreOutcome::Failed
                    }
                };
                link.hub.persisted(ticket, outcome);
            });
        }
    }

    /// Waits for JetStream's acknowledgement of a publish; while NATS is connected, a failure
    /// (a stream leader being elected after a NATS node died, a timeout) is retried with the
    /// same `Nats-Msg-Id` (JetStream keeps one copy; gateways deliver one by `Fleet-Id`) for
    /// up to [`HOLD`]: the client's acknowledgement is held, not refused.
    async fn store(
        &self,
        mut sent: Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError>,
        subject: String,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<(), String> {
        let until = Instant::now() + HOLD;
        loop {
            let outcome = match sent {
                Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match outcome {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= until || self.status.ready().is_err() => return Err(e),
                Err(e) => tracing::debug!(error = %e, "JetStream publish not stored yet; retrying"),
            }
            tokio::time::sleep(RETRY_STORE).await;
            sent = self
                .js
                .publish_with_headers(subject.clone(), headers.clone(), body.clone())
                .await;
        }
    }

    /// Puts a retained message into the bucket, or deletes its key (empty payload).
    async fn write_retained(&self, message: &Message, body: Bytes) -> Result<(), String> {
        let Some(kv) = self.kv() else {
            return Err("the retained bucket is not set up".into());
        };
        let key = subject::topic_to_tokens(&message.topic);
        let written = if message.payload.is_empty() {
            kv.delete(&key).await.map_err(|e| e.to_string())
        } else {
            kv.put(&key, body)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        };
        written.map_err(|e| format!("retained bucket {}: {e}", self.config.retained_bucket))
    }

    /// Keeps one core NATS subscription per filter the sessions hold. After each batch of
    /// changes it flushes (the NATS server has the subscriptions) and publishes how many
    /// changes are in effect on `done`.
    pub(super) async fn interest(
        self: Arc<Self>,
        mut changes: UnboundedReceiver<Interest>,
        done: tokio::sync::watch::Sender<u64>,
    ) {
        let mut held: HashMap<Box<str>, (usize, Vec<JoinHandle<()>>)> = HashMap::new();
        let mut applied = 0u64;
        while let Some(change) = changes.recv().await {
            applied += 1;
            match change {
                Interest::Add(filter) => {
                    let entry = held.entry(filter.clone()).or_default();
                    entry.0 += 1;
                    if entry.0 == 1 {
                        entry.1 = self.clone().listen(&filter).await;
                        self.held_filters().insert(filter);
                    }
                }
                Interest::Remove(filter) => {
                    let gone = held.get_mut(&filter).is_some_and(|(n, _)| {
                        *n = n.saturating_sub(1);
                        *n == 0
                    });
                    if gone {
                        self.held_filters().remove(&filter);
                        if let Some((_, readers)) = held.remove(&filter) {
                            // Dropping a subscriber unsubscribes it.
                            readers.iter().for_each(JoinHandle::abort);
                        }
                    }
                }
            }
            if changes.is_empty() {
                if self.status.ready().is_ok() {
                    let _ = tokio::time::timeout(FLUSH_WITHIN, self.round_trip()).await;
                }
                done.send_replace(applied);
            }
        }
    }

    /// A round trip through the NATS server on this connection: when it returns, the server
    /// has processed every SUB this client sent before it. (async-nats' `flush` only writes
    /// the socket: a SUBACK sent after it alone raced a publish from another gateway, which
    /// the server could route before reading this SUB.) A request to a subject nobody
    /// subscribes to is answered by the server itself ("no responders") after it processed
    /// everything before it on this connection.
    async fn round_trip(&self) {
        let subject = format!("_FLEET_SYNC.{}", subject::token(&self.ids));
        let _ = self.client.request(subject, Bytes::new()).await;
    }

    fn held_filters(&self) -> std::sync::MutexGuard<'_, HashSet<Box<str>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After each reconnection to NATS: the QoS 1/2 messages stored while this gateway was
    /// cut off (core NATS does not keep them) are read back from the stream for every filter
    /// held, from [`REPLAY_MARGIN`] before the connection was lost, and delivered; those
    /// already delivered are recognised by their `Fleet-Id` and skipped.
    pub(super) async fn replay_after_reconnect(self: Arc<Self>) {
        loop {
            self.status.reconnected.notified().await;
            let Some(lost) = self.status.take_lost_at() else {
                continue;
            };
            let from = lost - REPLAY_MARGIN;
            let filters: Vec<Box<str>> = self.held_filters().iter().cloned().collect();
            let mut replayed = 0;
            for filter in filters {
                // The stream may be electing a leader (a NATS node died): try again.
                let until = Instant::now() + REPLAY_WITHIN;
                loop {
                    match self.replay(&filter, from).await {
                        Ok(n) => {
                            replayed += n;
                            break;
                        }
                        Err(e) if Instant::now() < until => {
                            tracing::debug!(filter = %filter, error = %e, "cluster: replay not possible yet");
                            tokio::time::sleep(RETRY_STORE).await;
                        }
                        Err(e) => {
                            tracing::error!(filter = %filter, error = %e, "cluster: replay after reconnecting failed; QoS 1/2 messages of this filter sent while disconnected may be missing");
                            break;
                        }
                    }
                }
            }
            tracing::info!(
                replayed,
                "cluster: reconnected to NATS; stored messages replayed"
            );
        }
    }

    /// Reads `filter`'s stored messages since `from` with an ordered consumer (deleted when
    /// done) and hands them to [`Link::incoming`]; returns how many were read.
    async fn replay(&self, filter: &str, from: SystemTime) -> Result<usize, String> {
        let stream = self
            .js
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| e.to_string())?;
        let start_time = time::OffsetDateTime::from(from);
        let prefix = &self.config.subject_prefix;
        let mut read = 0;
        for subject in subject::nats_filters(prefix, filter) {
            let durable = subject.replacen(&format!("{prefix}.*."), &format!("{prefix}.d."), 1);
            let consumer = stream
                .create_consumer(jetstream::consumer::pull::OrderedConfig {
                    filter_subject: durable,
                    deliver_policy: jetstream::consumer::DeliverPolicy::ByStartTime { start_time },
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            let pending = consumer.cached_info().num_pending;
            if pending == 0 {
                continue;
            }
            let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
            loop {
                let next = tokio::time::timeout(Duration::from_secs(2), messages.next()).await;
                let Ok(Some(m)) = next else {
                    return Err("the stream stopped answering during the replay".into());
                };
                let m = m.map_err(|e| e.to_string())?;
                let left = m.info().map(|i| i.pending).unwrap_or(0);
                self.incoming(&m.subject, m.headers.as_ref(), m.payload.clone());
                read += 1;
                if left == 0 {
                    break;
                }
            }
        }
        Ok(read)
    }

    /// Subscribes to the subjects of `filter` and reads each on its own task.
    async fn listen(self: Arc<Self>, filter: &str) -> Vec<JoinHandle<()>> {
        let mut readers = Vec::new();
        for subject in subject::nats_filters(&self.config.subject_prefix, filter) {
            match self.client.subscribe(subject.clone()).await {
                Ok(mut sub) => {
                    let link = self.clone();
                    readers.push(tokio::spawn(async move {
                        while let Some(m) = sub.next().await {
                            link.incoming(&m.subject, m.headers.as_ref(), m.payload);
                        }
                    }));
                }
                Err(e) => {
                    tracing::error!(filter, subject, error = %e, "cannot subscribe on NATS: messages for this filter from other gateways will not arrive")
                }
            }
        }
        readers
    }

    /// A message from NATS for the local sessions.
    fn incoming(&self, subject: &str, headers: Option<&HeaderMap>, payload: Bytes) {
        let tokens = subject
            .strip_prefix(self.config.subject_prefix.as_str())
            .and_then(|s| s.strip_prefix('.'))
            .and_then(|s| s.split_once('.'))
            .map(|(_, t)| t);
        let Some(tokens) = tokens else {
            return;
        };
        if let Some(id) = headers.and_then(|h| h.get(FLEET_ID)) {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if !recent.first_time(id.as_str()) {
                return;
            }
        }
        let decoded = subject::tokens_to_topic(tokens)
            .map_err(|e| e.to_string())
            .and_then(|topic| {
                envelope::decode(&topic, payload, Instant::now(), SystemTime::now())
                    .map_err(|e| e.to_string())
            });
        match decoded {
            Ok(message) => self.hub.deliver(Arc::new(message), Instant::now()),
            Err(e) => tracing::warn!(subject, error = %e, "message from NATS ignored"),
        }
    }

    /// Sets up the stream and buckets (retrying while NATS is unreachable), then keeps the
    /// local copy of the retained messages current; sets up again if the watch ends.
    pub(super) async fn setup(self: Arc<Self>) {
        loop {
            match self.prepare().await {
                Ok(retained) => {
                    self.status.set_problem(None);
                    self.status.set_up.store(true, Ordering::Release);
                    tracing::info!(stream = %self.config.stream, "cluster: JetStream stream and buckets ready");
                    if let Err(e) = self.watch_retained(&retained).await {
                        tracing::warn!(error = %e, "cluster: retained bucket watch ended; watching again");
                    }
                }
                Err(e) => {
                    self.status.set_up.store(false, Ordering::Release);
                    tracing::error!(servers = ?self.config.servers, "cluster: {e}; retrying in {} s", RETRY.as_secs());
                    self.status.set_problem(Some(e));
                }
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// The stream and the buckets, created when missing.
    async fn prepare(&self) -> Result<kv::Store, String> {
        let c = &self.config;
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err("NATS is unreachable".into());
        }
        self.js
            .get_or_create_stream(stream::Config {
                name: c.stream.clone(),
                subjects: vec![format!("{}.d.>", c.subject_prefix)],
                max_age: c.max_age,
                num_replicas: c.replicas,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("JetStream stream {}: {e}", c.stream))?;
        let retained = self.bucket(&c.retained_bucket).await?;
        self.bucket(&c.control_bucket).await?;
        *self.retained_kv.lock().unwrap_or_else(|p| p.into_inner()) = Some(retained.clone());
        Ok(retained)
    }

    pub(super) async fn bucket(&self, name: &str) -> Result<kv::Store, String> {
        if let Ok(store) = self.js.get_key_value(name).await {
            return Ok(store);
        }
        self.js
            .create_key_value(kv::Config {
                bucket: name.to_owned(),
                history: 1,
                num_replicas: self.config.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("JetStream KV bucket {name}: {e}"))
    }

    /// Applies every retained message in the bucket, then every change, to the local copy.
    async fn watch_retained(&self, kv: &kv::Store) -> Result<(), String> {
        let mut watch = kv
            .watch_with_history(">")
            .await
            .map_err(|e| e.to_string())?;
        while let Some(entry) = watch.next().await {
            let entry = entry.map_err(|e| e.to_string())?;
            let topic = match subject::tokens_to_topic(&entry.key) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "retained bucket: key ignored");
                    continue;
                }
            };
            let message = match entry.operation {
                kv::Operation::Put => {
                    envelope::decode(&topic, entry.value, Instant::now(), SystemTime::now())
                }
                // An empty retained message clears the topic.
                kv::Operation::Delete | kv::Operation::Purge => {
                    Ok(Message::new(&topic, Bytes::new(), QoS::AtMostOnce, true))
                }
            };
            match message {
                Ok(m) => {
                    lock(&self.retained).set(&Arc::new(m));
                }
                Err(e) => tracing::warn!(topic, error = %e, "retained bucket: value ignored"),
            }
        }
        Err("the watch stream ended".into())
    }
}
