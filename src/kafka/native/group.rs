//! The native consumer's group membership, on its own connection to the
//! group coordinator: join and sync (the leader assigns with the assignor the
//! group chose, `cooperative-sticky` or `roundrobin`: see `assignor.rs`),
//! the committed offsets of the new assignment, heartbeats, offset commits
//! every `commit_interval`, and a new rebalance when the subscription's
//! topics or partitions change. Before this member gives its partitions up
//! (a rebalance, shutdown) it commits what the store has committed.

use super::assignor;
use super::bootstrap::Bootstrap;
use super::conn::{Conn, ConnError};
use super::consumer::{Assignment, Settings, Shared};
use super::group_protocol as gp;
use super::protocol;
use crate::kafka::diagnosis::{Diagnosis, ErrorReporter, Step};
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

// Kafka error codes the group task acts on.
const NONE: i16 = 0;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const NOT_COORDINATOR: i16 = 16;
const ILLEGAL_GENERATION: i16 = 22;
const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const GROUP_AUTHORIZATION_FAILED: i16 = 30;
const MEMBER_ID_REQUIRED: i16 = 79;

/// Why the membership loop ended.
enum Next {
    /// Join again (a rebalance, a new subscription, a fenced member).
    Rejoin,
    /// Find the coordinator again.
    Rediscover,
    /// Shut down: offsets committed, group left.
    Left,
}

#[derive(Debug, thiserror::Error)]
enum GroupError {
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error("group coordinator: {0}")]
    Broker(String),
}

/// The topics the subscription matches, with their partition counts.
type Topics = BTreeMap<String, i32>;

pub struct Group {
    s: Arc<Settings>,
    shared: Arc<Shared>,
    errors: Arc<ErrorReporter>,
    assignment: watch::Sender<Arc<Assignment>>,
    final_commit: mpsc::Receiver<oneshot::Sender<()>>,
    coordinator: Option<Conn>,
    /// A connection to any broker, for metadata.
    meta: Bootstrap,
    member_id: String,
    generation: i32,
    epoch: u64,
    /// The partitions assigned now, and the offsets last committed for them.
    assigned: HashSet<(Arc<str>, i32)>,
    committed: HashMap<(Arc<str>, i32), i64>,
    /// What the subscription matched when this member last joined.
    joined_topics: Topics,
    /// Commits asked for at shutdown, answered once done.
    leaving: Option<oneshot::Sender<()>>,
}

impl Group {
    pub fn new(
        s: Arc<Settings>,
        shared: Arc<Shared>,
        errors: Arc<ErrorReporter>,
        assignment: watch::Sender<Arc<Assignment>>,
        final_commit: mpsc::Receiver<oneshot::Sender<()>>,
    ) -> Self {
        let meta = s.bootstrap_conn();
        Self {
            s,
            shared,
            errors,
            assignment,
            final_commit,
            coordinator: None,
            meta,
            member_id: String::new(),
            generation: -1,
            epoch: 0,
            assigned: HashSet::new(),
            committed: HashMap::new(),
            joined_topics: Topics::new(),
            leaving: None,
        }
    }

    /// Keep the membership until shutdown.
    pub async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.member().await {
                Ok(Next::Left) => break,
                Ok(Next::Rejoin) => backoff = BACKOFF_MIN,
                Ok(Next::Rediscover) => {
                    self.coordinator = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(e) => {
                    self.problem(&e);
                    self.revoke().await;
                    self.coordinator = None;
                    self.meta.disconnect();
                    if self.wait_or_leave(backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        if let Some(done) = self.leaving.take() {
            let _ = done.send(());
        }
        // Nothing more to do; the sink stops this task with the others.
        std::future::pending::<()>().await;
    }

    /// Sleep `d`, unless shutdown asks for the final commit first (then there
    /// is no assignment to commit for: answer and stop).
    async fn wait_or_leave(&mut self, d: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(d) => false,
            Some(done) = self.final_commit.recv() => {
                self.leaving = Some(done);
                true
            }
        }
    }

    fn problem(&self, e: &GroupError) {
        self.errors.report(match e {
            GroupError::Conn(c) => c.diagnosis(),
            GroupError::Broker(_) => Diagnosis { step: Step::Other, detail: e.to_string() },
        });
    }

    /// One membership: join, sync, then heartbeat and commit until it ends.
    async fn member(&mut self) -> Result<Next, GroupError> {
        if self.coordinator.is_none() {
            self.coordinator = Some(self.find_coordinator().await?);
        }
        let topics = self.subscribed_topics().await?;
        let joined = match self.join(&topics).await? {
            Ok(j) => j,
            Err(next) => return Ok(next),
        };
        let mine = match self.sync(&joined).await? {
            Ok(m) => m,
            Err(next) => return Ok(next),
        };
        self.joined_topics = topics;
        self.errors.clear();
        self.start(mine).await?;
        self.heartbeat_loop().await
    }

    async fn find_coordinator(&mut self) -> Result<Conn, GroupError> {
        let group = &self.s.group;
        let c = self
            .meta
            .call(|c| gp::find_coordinator_request(c.client_id(), group), |b, _| gp::find_coordinator_response(b))
            .await?;
        if c.error != NONE {
            return Err(GroupError::Broker(format!("FindCoordinator for group {group} answered error {}", c.error)));
        }
        let port = u16::try_from(c.port).map_err(|_| GroupError::Broker(format!("coordinator port {}", c.port)))?;
        tracing::debug!(node = c.node_id, host = c.host, port, "Group coordinator found.");
        Ok(Conn::open_consumer(&c.host, port, self.s.tls.as_ref(), self.s.client_id.clone(), self.s.request_timeout)
            .await?)
    }

    /// The cluster's topics the subscription matches, with partition counts.
    async fn subscribed_topics(&mut self) -> Result<Topics, GroupError> {
        let subscription = &self.s.subscription;
        let build = |c: &Conn| {
            if subscription.has_patterns() {
                protocol::metadata_request_all(c.client_id())
            } else {
                let refs: Vec<&str> = subscription.names.iter().map(String::as_str).collect();
                protocol::metadata_request(c.client_id(), &refs, false)
            }
        };
        let md = self.meta.call(build, |b, _| protocol::metadata_response(b)).await?;
        Ok(md
            .topics
            .into_iter()
            .filter(|t| t.error == NONE && !t.partitions.is_empty() && self.s.subscription.matches(&t.name))
            .map(|t| (t.name, i32::try_from(t.partitions.len()).unwrap_or(i32::MAX)))
            .collect())
    }

    /// Partition counts of `names` (topics other members subscribe to).
    async fn partition_counts(&mut self, names: &[&str]) -> Result<Topics, GroupError> {
        let mut out = Topics::new();
        for chunk in names.chunks(1_000) {
            let md = self
                .meta
                .call(
                    |c| protocol::metadata_request(c.client_id(), chunk, false),
                    |b, _| protocol::metadata_response(b),
                )
                .await?;
            for t in md.topics {
                if t.error == NONE && !t.partitions.is_empty() {
                    out.insert(t.name, i32::try_from(t.partitions.len()).unwrap_or(i32::MAX));
                }
            }
        }
        Ok(out)
    }

    /// A call to the coordinator; the connection is dropped on failure.
    async fn coordinator_call(&mut self, timeout: Duration, mut request: BytesMut) -> Result<Bytes, GroupError> {
        let Some(conn) = self.coordinator.as_mut() else {
            return Err(GroupError::Broker("no coordinator connection".into()));
        };
        match conn.call_within(&mut request, timeout).await {
            Ok(body) => Ok(body),
            Err(e) => {
                self.coordinator = None;
                Err(e.into())
            }
        }
    }

    /// The coordinator's error codes that end a membership step.
    fn after(&mut self, api: &str, error: i16) -> Result<Option<Next>, GroupError> {
        match error {
            NONE => Ok(None),
            UNKNOWN_MEMBER_ID => {
                self.member_id.clear();
                self.generation = -1;
                Ok(Some(Next::Rejoin))
            }
            ILLEGAL_GENERATION | REBALANCE_IN_PROGRESS => Ok(Some(Next::Rejoin)),
            COORDINATOR_NOT_AVAILABLE | NOT_COORDINATOR | COORDINATOR_LOAD_IN_PROGRESS => Ok(Some(Next::Rediscover)),
            INCONSISTENT_GROUP_PROTOCOL => Err(GroupError::Broker(format!(
                "{api}: the group {} assigns with an assignor this member does not offer (it offers `{}` and \
                 `{}`; a librdkafka sink with a `partition.assignment.strategy` of its own?): this member reads \
                 nothing and waits for them to leave, retrying every few seconds (docs/sink.md, \"Two consumers\")",
                self.s.group,
                assignor::COOPERATIVE_STICKY,
                assignor::ROUND_ROBIN
            ))),
            GROUP_AUTHORIZATION_FAILED => {
                Err(GroupError::Broker(format!("{api}: not authorized to use group {}", self.s.group)))
            }
            e => Err(GroupError::Broker(format!("{api} answered error {e}"))),
        }
    }

    async fn join(&mut self, topics: &Topics) -> Result<Result<gp::JoinGroup, Next>, GroupError> {
        let names: Vec<&str> = topics.keys().map(String::as_str).collect();
        let offered = assignor::offered(&names);
        let session_ms = i32::try_from(self.s.session_timeout.as_millis()).unwrap_or(i32::MAX);
        let rebalance_ms = i32::try_from(self.s.rebalance_timeout.as_millis()).unwrap_or(i32::MAX);
        let wait = self.s.rebalance_timeout + self.s.request_timeout;
        loop {
            let request = gp::join_group_request(
                &self.s.client_id,
                &self.s.group,
                session_ms,
                rebalance_ms,
                &self.member_id,
                "consumer",
                &offered.each_ref().map(|(name, metadata)| (*name, metadata.as_slice())),
            );
            let body = self.coordinator_call(wait, request).await?;
            let j = gp::join_group_response(&body).map_err(|e| GroupError::Broker(e.to_string()))?;
            if j.error == MEMBER_ID_REQUIRED {
                self.member_id = j.member_id;
                continue;
            }
            if let Some(next) = self.after("JoinGroup", j.error)? {
                return Ok(Err(next));
            }
            self.member_id.clone_from(&j.member_id);
            self.generation = j.generation;
            tracing::info!(
                generation = j.generation,
                leader = j.leader == j.member_id,
                members = j.members.len(),
                topics = topics.len(),
                "Joined the consumer group."
            );
            return Ok(Ok(j));
        }
    }

    /// As the leader, the assignment of every member.
    async fn assign(&mut self, joined: &gp::JoinGroup) -> Result<Vec<(String, Vec<u8>)>, GroupError> {
        let mut members = Vec::with_capacity(joined.members.len());
        for (id, metadata) in &joined.members {
            let subscription = assignor::parse_subscription(metadata).unwrap_or_else(|e| {
                tracing::warn!(member = id, error = %e, "A member's subscription does not parse; it gets nothing.");
                assignor::Subscription::default()
            });
            members.push((id.clone(), subscription));
        }
        let mut counts = self.joined_topics.clone();
        let missing: Vec<&str> = {
            let mut m: Vec<&str> = members
                .iter()
                .flat_map(|(_, s)| s.topics.iter().map(String::as_str))
                .filter(|t| !counts.contains_key(*t))
                .collect();
            m.sort_unstable();
            m.dedup();
            m
        };
        if !missing.is_empty() {
            let missing: Vec<String> = missing.into_iter().map(str::to_string).collect();
            let refs: Vec<&str> = missing.iter().map(String::as_str).collect();
            counts.extend(self.partition_counts(&refs).await?);
        }
        let plan =
            assignor::assign(&joined.protocol, &members, &counts).map_err(|e| GroupError::Broker(e.to_string()))?;
        Ok(plan.into_iter().map(|(member, parts)| (member, gp::assignment(&parts))).collect())
    }

    async fn sync(&mut self, joined: &gp::JoinGroup) -> Result<Result<Vec<(String, Vec<i32>)>, Next>, GroupError> {
        let assignments = if joined.leader == joined.member_id {
            // The leader's counts are those it joined with.
            self.joined_topics = self.subscribed_topics().await?;
            self.assign(joined).await?
        } else {
            Vec::new()
        };
        let wait = self.s.rebalance_timeout + self.s.request_timeout;
        let request =
            gp::sync_group_request(&self.s.client_id, &self.s.group, self.generation, &self.member_id, &assignments);
        let body = self.coordinator_call(wait, request).await?;
        let (error, mine) = gp::sync_group_response(&body).map_err(|e| GroupError::Broker(e.to_string()))?;
        if let Some(next) = self.after("SyncGroup", error)? {
            return Ok(Err(next));
        }
        Ok(Ok(gp::parse_assignment(&mine).map_err(|e| GroupError::Broker(e.to_string()))?))
    }

    /// Look up where the new assignment starts and hand it to the fetcher.
    async fn start(&mut self, mine: Vec<(String, Vec<i32>)>) -> Result<(), GroupError> {
        let mut starts: HashMap<(String, i32), i64> = HashMap::new();
        for chunk in mine.chunks(1_000) {
            let request: Vec<(&str, Vec<i32>)> = chunk.iter().map(|(t, p)| (t.as_str(), p.clone())).collect();
            let request = gp::offset_fetch_request(&self.s.client_id, &self.s.group, &request);
            let body = self.coordinator_call(self.s.request_timeout, request).await?;
            for (topic, partition, offset, error) in
                gp::offset_fetch_response(&body).map_err(|e| GroupError::Broker(e.to_string()))?
            {
                if error != NONE && error != UNKNOWN_TOPIC_OR_PARTITION {
                    if let Some(_next) = self.after("OffsetFetch", error)? {
                        return Err(GroupError::Broker(format!("OffsetFetch answered error {error}")));
                    }
                }
                starts.insert((topic, partition), if error == NONE { offset } else { -1 });
            }
        }
        self.epoch += 1;
        self.assigned.clear();
        self.committed.clear();
        let mut partitions = Vec::new();
        for (topic, parts) in mine {
            let topic: Arc<str> = Arc::from(topic);
            for p in parts {
                let start = starts.get(&(topic.to_string(), p)).copied().unwrap_or(-1);
                if start >= 0 {
                    self.committed.insert((topic.clone(), p), start);
                }
                self.assigned.insert((topic.clone(), p));
                partitions.push((topic.clone(), p, start));
            }
        }
        partitions.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        self.shared.assigned.store(partitions.len(), Relaxed);
        self.shared.epoch.store(self.epoch, Relaxed);
        tracing::info!(partitions = partitions.len(), generation = self.generation, "Partitions assigned.");
        let _ = self.assignment.send(Arc::new(Assignment { epoch: self.epoch, partitions }));
        Ok(())
    }

    /// Stop reading the current assignment and commit what the store has
    /// committed of it.
    async fn revoke(&mut self) {
        if self.assigned.is_empty() {
            return;
        }
        self.epoch += 1;
        self.shared.epoch.store(self.epoch, Relaxed);
        let _ = self.assignment.send(Arc::new(Assignment { epoch: self.epoch, partitions: Vec::new() }));
        if let Err(e) = self.commit().await {
            tracing::warn!(error = %e, "Commit before giving partitions up failed; records will be re-read.");
        }
        tracing::info!(partitions = self.assigned.len(), "Partitions revoked.");
        self.assigned.clear();
        self.committed.clear();
        self.shared.assigned.store(0, Relaxed);
    }

    /// Commit the stored offsets of assigned partitions that moved.
    async fn commit(&mut self) -> Result<Option<Next>, GroupError> {
        let moved: Vec<((Arc<str>, i32), i64)> = {
            let Ok(mut stored) = self.shared.stored.lock() else { return Ok(None) };
            // Offsets of partitions no longer assigned are forgotten.
            stored.retain(|k, _| self.assigned.contains(k));
            stored.iter().filter(|(k, o)| self.committed.get(*k) != Some(*o)).map(|(k, o)| (k.clone(), *o)).collect()
        };
        if moved.is_empty() || self.coordinator.is_none() {
            return Ok(None);
        }
        let mut by_topic: BTreeMap<&str, Vec<(i32, i64)>> = BTreeMap::new();
        for ((t, p), o) in &moved {
            by_topic.entry(t).or_default().push((*p, *o));
        }
        let offsets: Vec<(&str, Vec<(i32, i64)>)> = by_topic.into_iter().collect();
        let request =
            gp::offset_commit_request(&self.s.client_id, &self.s.group, self.generation, &self.member_id, &offsets);
        let body = self.coordinator_call(self.s.request_timeout, request).await?;
        let results = gp::offset_commit_response(&body).map_err(|e| GroupError::Broker(e.to_string()))?;
        let failed: HashMap<(&str, i32), i16> =
            results.iter().filter(|r| r.2 != NONE).map(|(t, p, e)| ((t.as_str(), *p), *e)).collect();
        for ((t, p), o) in moved {
            if !failed.contains_key(&(&*t, p)) {
                self.committed.insert((t, p), o);
            }
        }
        match failed.values().next() {
            None => Ok(None),
            Some(&e) => {
                tracing::warn!(partitions = failed.len(), error = e, "Offset commit refused for some partitions.");
                self.after("OffsetCommit", e)
            }
        }
    }

    async fn heartbeat_loop(&mut self) -> Result<Next, GroupError> {
        let mut heartbeat = tokio::time::interval(self.s.heartbeat_interval);
        let mut commit = tokio::time::interval(self.s.commit_interval);
        let mut metadata = tokio::time::interval(self.s.metadata_interval);
        for t in [&mut heartbeat, &mut commit, &mut metadata] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t.reset();
        }
        loop {
            let next = tokio::select! {
                _ = heartbeat.tick() => {
                    let request =
                        gp::heartbeat_request(&self.s.client_id, &self.s.group, self.generation, &self.member_id);
                    let body = self.coordinator_call(self.s.request_timeout, request).await;
                    match body {
                        Ok(body) => {
                            let error = gp::heartbeat_response(&body).map_err(|e| GroupError::Broker(e.to_string()))?;
                            self.after("Heartbeat", error)?
                        }
                        Err(e) => {
                            self.revoke().await;
                            return Err(e);
                        }
                    }
                }
                _ = commit.tick() => match self.commit().await {
                    Ok(next) => next,
                    Err(e) => {
                        self.revoke().await;
                        return Err(e);
                    }
                },
                _ = metadata.tick() => {
                    let now = self.subscribed_topics().await?;
                    if now != self.joined_topics {
                        tracing::info!(
                            before = self.joined_topics.len(),
                            now = now.len(),
                            "The subscription's topics or partitions changed; rebalancing."
                        );
                        Some(Next::Rejoin)
                    } else {
                        None
                    }
                }
                Some(done) = self.final_commit.recv() => {
                    self.leaving = Some(done);
                    self.leave().await;
                    return Ok(Next::Left);
                }
            };
            if let Some(next) = next {
                self.revoke().await;
                return Ok(next);
            }
        }
    }

    /// Shutdown: commit, give the partitions up, and leave the group so the
    /// others take them over now, not after the session timeout.
    async fn leave(&mut self) {
        self.revoke().await;
        if self.member_id.is_empty() {
            return;
        }
        let request = gp::leave_group_request(&self.s.client_id, &self.s.group, &self.member_id);
        match self.coordinator_call(self.s.request_timeout, request).await {
            Ok(body) => match gp::leave_group_response(&body) {
                Ok(NONE) => tracing::info!("Left the consumer group."),
                Ok(e) => tracing::debug!(error = e, "LeaveGroup answered an error."),
                Err(e) => tracing::debug!(error = %e, "LeaveGroup answer does not parse."),
            },
            Err(e) => tracing::debug!(error = %e, "LeaveGroup not sent."),
        }
    }
}
