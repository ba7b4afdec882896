//! The broker's partition replicas in the simulation: per partition a production
//! `partition::Partition` (the decisions), and the glue that carries its effects out, each
//! piece named after the production shell it stands for: `ReplicaSet::apply_roles`,
//! `Replica::append` and `Replica::complete` (the acks=all wait), the flusher, the Fetch
//! handler's leader check and long poll (`handlers::fetch`, `Replica::read`), the follower's
//! fetch loop (`fetcher::follow`: one Fetch per leader for every partition followed from it,
//! answered per partition) and the ISR change task (`send_isr_change`).

use std::collections::BTreeMap;

use bytes::Bytes;
use uuid::Uuid;

use super::Ctx;
use super::client::{ProduceAnswer, ProduceRequest};
use super::net::{FetchRequest, Payload};
use super::node::{Image, MIN_ISR, Node, PROPOSAL_TIMEOUT_MS, Purpose, TOPIC};
use super::replica_state::{BACKOFF_MS, Fetcher, IsrTask, Parked, PendingAck, Replica};
use crate::cluster::commands::{CommandOutcome, IsrChange, MetadataCommand};
use crate::cluster::{NO_LEADER, PartitionState};
use crate::protocol::ErrorCode;
use crate::replication::fetch_session::{FetchPartition, FetchedPartition};
use crate::replication::follower::{self, Action, Applied};
use crate::replication::partition::{
    Effects, FollowerFetch, FollowerRead, IsrAnswer, IsrNext, IsrProposal, Partition,
};
use crate::replication::replica::append_error_code;
use crate::storage::{AppendError, StorageError};

/// The partitions of the topic in an image.
pub fn partition_states(image: &Image) -> &[PartitionState] {
    image
        .metadata
        .topics
        .get(TOPIC)
        .map_or(&[], |t| &t.partitions[..])
}

impl Node {
    // ---- The replicas (`ReplicaSet::apply_roles`, `Replica`) -------------------------------------

    /// Every published image: each replica follows its partition's state (`Replica::apply`)
    /// and a fetch loop starts for a leader this broker now follows.
    pub(super) fn apply_roles(&mut self, ctx: &mut Ctx) {
        let now = ctx.now;
        let count = self
            .proc
            .as_ref()
            .map_or(0, |p| partition_states(&p.image).len());
        for index in 0..count {
            let partition = index as i32;
            let (durable, hw) = {
                let log = self.log_mut(partition);
                log.set_replicated();
                (log.durable_end(), log.high_watermark())
            };
            let Some(p) = self.proc.as_mut() else {
                return;
            };
            let state = &partition_states(&p.image)[index];
            if !p.replicas.contains_key(&partition) && !state.replicas.contains(&self.id) {
                continue;
            }
            let replica = p.replicas.entry(partition).or_insert_with(|| Replica {
                partition: Partition::new(self.id),
                acks: Vec::new(),
                committing: BTreeMap::new(),
                flush_at: None,
            });
            let before = replica.partition.leader_epoch();
            let effects = replica
                .partition
                .on_metadata(state, durable, hw, now, MIN_ISR);
            let r = &replica.partition;
            if r.leader_epoch() != before {
                ctx.note(|| format!("{} p{partition}: role {:?}", self.id, r.role()));
            }
            if let Some((leader, _)) = r.following() {
                p.fetchers.entry(leader).or_insert(Fetcher::Idle(now));
            }
            self.carry_out(ctx, partition, effects);
        }
    }

    /// What `Replica::carry_out` does with a partition's effects: publish the high
    /// watermark, answer the decided acks, send the ISR change.
    fn carry_out(&mut self, ctx: &mut Ctx, partition: i32, effects: Effects) {
        if let Some(hw) = effects.high_watermark {
            self.log_mut(partition).set_high_watermark(hw);
        }
        let Some(replica) = self
            .proc
            .as_mut()
            .and_then(|p| p.replicas.get_mut(&partition))
        else {
            return;
        };
        for (id, code) in effects.acks {
            if let Some(ack) = replica.committing.remove(&id) {
                answer_ack(ctx, self.id, &ack, code);
            }
        }
        if let Some(proposal) = effects.propose_isr {
            self.start_isr_task(ctx, partition, proposal);
        }
    }

    /// Every `replica.lag.time.max.ms / 2`: each led partition's ISR shrink check.
    pub(super) fn shrink_checks(&mut self, ctx: &mut Ctx) {
        for partition in self.replica_ids() {
            let effects =
                self.with_partition(partition, |r| r.shrink_check(ctx.now, ctx.settings.lag_ms));
            self.carry_out(ctx, partition, effects);
        }
    }

    /// Answers the acks whose deadline passed.
    pub(super) fn expire_acks(&mut self, ctx: &mut Ctx) {
        for partition in self.replica_ids() {
            let effects = self.with_partition(partition, |r| r.expire(ctx.now));
            self.carry_out(ctx, partition, effects);
        }
    }

    fn replica_ids(&self) -> Vec<i32> {
        self.proc
            .as_ref()
            .map_or_else(Vec::new, |p| p.replicas.keys().copied().collect())
    }

    /// Runs `f` on the partition's decisions, if the process has that replica.
    fn with_partition(
        &mut self,
        partition: i32,
        f: impl FnOnce(&mut Partition) -> Effects,
    ) -> Effects {
        self.proc
            .as_mut()
            .and_then(|p| p.replicas.get_mut(&partition))
            .map(|r| f(&mut r.partition))
            .unwrap_or_default()
    }

    /// A client's acks=all produce of one record (`Replica::append`): accepted by a leader
    /// whose ISR is at least `min.insync.replicas`; a batch the log's producer state already
    /// has is answered with its original offset once that is committed. Every answer,
    /// now or later, goes to `Seen::answers`.
    pub fn produce(&mut self, ctx: &mut Ctx, request: ProduceRequest) {
        let (id, partition) = (self.id, request.partition);
        let Some(replica) = self
            .proc
            .as_mut()
            .and_then(|p| p.replicas.get_mut(&partition))
        else {
            let code = ErrorCode::NotLeaderOrFollower.code();
            return ctx.seen.answers.push(refusal(id, request, code));
        };
        let epoch = match replica.partition.check_produce(-1) {
            Ok(epoch) => epoch,
            Err(e) => return ctx.seen.answers.push(refusal(id, request, e.code())),
        };
        let record = request.record;
        let offset = match self.logs[partition as usize].append_leader(epoch, record) {
            Ok(offset) => offset,
            Err(AppendError::DuplicateSequence { base_offset }) => {
                ctx.seen.counts.duplicates += 1;
                base_offset
            }
            Err(e) => {
                ctx.note(|| format!("{id}: produce #{} p{partition} refused: {e}", record.id));
                return ctx
                    .seen
                    .answers
                    .push(refusal(id, request, append_error_code(&e)));
            }
        };
        replica.acks.push(PendingAck {
            request,
            offset,
            epoch,
            deadline: ctx.now + ctx.settings.produce_timeout_ms,
        });
        // Answered after the flush (at once, in production, if already durable).
        replica.schedule_flush(ctx);
        ctx.note(|| {
            format!(
                "{id}: produce #{} (producer {} seq {}) p{partition} @{offset} e{epoch}",
                record.id, record.producer_id, record.sequence
            )
        });
        // Followers' long polls wake on the append, not on the flush.
        self.fire_parked(ctx, false);
    }

    /// `Replica::complete` once the records are durable: the partition learns the durable
    /// end, then answers each ack now or later (`Effects::acks`).
    fn durable_acks(&mut self, ctx: &mut Ctx, partition: i32) {
        let durable = self.log(partition).durable_end();
        let Some(replica) = self
            .proc
            .as_mut()
            .and_then(|p| p.replicas.get_mut(&partition))
        else {
            return;
        };
        let (done, waiting): (Vec<PendingAck>, Vec<PendingAck>) = std::mem::take(&mut replica.acks)
            .into_iter()
            .partition(|a| a.offset < durable);
        replica.acks = waiting;
        let mut effects = replica.partition.on_durable(durable);
        for ack in done {
            match replica
                .partition
                .await_commit(ack.offset + 1, ack.epoch, ack.deadline)
            {
                Ok(code) => answer_ack(ctx, self.id, &ack, code),
                Err(id) => {
                    replica.committing.insert(id, ack);
                }
            }
        }
        effects.acks.extend(replica.partition.expire(ctx.now).acks);
        self.carry_out(ctx, partition, effects);
    }

    // ---- Disk (each log's flusher) ----------------------------------------------------------

    pub(super) fn fire_flushes(&mut self, ctx: &mut Ctx) {
        let now = ctx.now;
        let due: Vec<i32> = self.proc.as_ref().map_or_else(Vec::new, |p| {
            p.replicas
                .iter()
                .filter(|(_, r)| r.flush_at.is_some_and(|t| t <= now))
                .map(|(i, _)| *i)
                .collect()
        });
        for partition in due {
            self.flush(ctx, partition);
        }
    }

    fn flush(&mut self, ctx: &mut Ctx, partition: i32) {
        let now = ctx.now;
        self.log_mut(partition).flush();
        let Some(p) = self.proc.as_mut() else {
            return;
        };
        let logs = &self.logs;
        for f in p.fetchers.values_mut() {
            if let Fetcher::Durable { targets, backoff } = f
                && targets
                    .iter()
                    .all(|(i, end)| logs[*i as usize].durable_end() >= *end)
            {
                *f = Fetcher::Idle(now + if *backoff { BACKOFF_MS } else { 0 });
            }
        }
        let Some(replica) = p.replicas.get_mut(&partition) else {
            return;
        };
        replica.flush_at = None;
        if !replica.acks.is_empty() {
            self.durable_acks(ctx, partition);
        }
        self.fire_parked(ctx, false);
    }

    // ---- The leader's Fetch handling (`handlers::fetch`, `Replica::read`) ----------------

    /// A follower's Fetch: each partition is answered with an error (not led here, stale
    /// epoch) or read; without data nor error the request waits for data, as long as
    /// `max_wait_ms`.
    pub fn on_fetch(&mut self, ctx: &mut Ctx, from: i32, request: FetchRequest) {
        let Some(p) = self.proc.as_ref() else {
            return;
        };
        let checks: Vec<Result<(), i16>> = request
            .asked
            .iter()
            .map(|a| resolve(&p.image, self.id, a.partition, a.current_leader_epoch))
            .collect();
        let mut answers = Vec::with_capacity(checks.len());
        let mut effects = Vec::new();
        for (asked, check) in request.asked.iter().zip(checks) {
            match check {
                Err(code) => answers.push(error_answer(asked.partition, code)),
                Ok(()) => {
                    let (answer, e) = self.read_part(ctx, &request, asked);
                    answers.push(answer);
                    effects.push((asked.partition, e));
                }
            }
        }
        let ready = answers
            .iter()
            .any(|a| a.error_code != 0 || a.diverging_epoch.is_some() || !a.records.is_empty());
        if ready {
            ctx.send(self.id, from, fetch_response(request.id, answers));
        } else if let Some(p) = self.proc.as_mut() {
            let seen = request
                .asked
                .iter()
                .zip(&answers)
                .map(|(asked, a)| asked.fetch_offset.max(a.high_watermark))
                .collect();
            p.parked.push(Parked {
                from,
                request,
                seen,
                deadline: ctx.now + ctx.settings.fetch_wait_ms,
            });
        }
        // An ISR change is sent by a task of its own, after this answer.
        for (partition, e) in effects {
            self.carry_out(ctx, partition, e);
        }
    }

    /// Answers the parked fetches whose wait is over: data appended past what they saw, or
    /// (`deadlines`) their `max_wait_ms` passed.
    pub(super) fn fire_parked(&mut self, ctx: &mut Ctx, deadlines: bool) {
        let Some(p) = self.proc.as_mut() else {
            return;
        };
        let now = ctx.now;
        let logs = &self.logs;
        let (due, waiting): (Vec<Parked>, Vec<Parked>) =
            std::mem::take(&mut p.parked).into_iter().partition(|w| {
                let data = w
                    .request
                    .asked
                    .iter()
                    .zip(&w.seen)
                    .any(|(asked, seen)| logs[asked.partition as usize].end() > *seen);
                data || (deadlines && w.deadline <= now)
            });
        p.parked = waiting;
        let mut after = Vec::new();
        for w in due {
            let mut answers = Vec::with_capacity(w.request.asked.len());
            for asked in &w.request.asked {
                let (answer, effects) = self.read_part(ctx, &w.request, asked);
                answers.push(answer);
                after.push((asked.partition, effects));
            }
            ctx.send(self.id, w.from, fetch_response(w.request.id, answers));
        }
        for (partition, effects) in after {
            self.carry_out(ctx, partition, effects);
        }
    }

    /// `Replica::read` for a follower: the partition's divergence check and bookkeeping of
    /// the follower's position (`Partition::on_follower_fetch`), then the records up to the
    /// log end. Returns the answer and the effects still to carry out (acks, an ISR
    /// change), the high watermark already published.
    fn read_part(
        &mut self,
        ctx: &mut Ctx,
        request: &FetchRequest,
        asked: &FetchPartition,
    ) -> (FetchedPartition, Effects) {
        let (from, fetch_id) = (request.replica_id, request.id);
        let mut answer = error_answer(asked.partition, 0);
        let Some(p) = self.proc.as_mut() else {
            return (answer, Effects::default());
        };
        let Some(replica) = p.replicas.get_mut(&asked.partition) else {
            answer.error_code = ErrorCode::UnknownTopicOrPartition.code();
            return (answer, Effects::default());
        };
        let image = &p.image.metadata;
        let fetch = FollowerFetch {
            replica_id: from,
            fetch_offset: asked.fetch_offset,
            last_fetched_epoch: asked.last_fetched_epoch,
            current_leader_epoch: asked.current_leader_epoch,
            live: image.is_live(from) && !image.shutting_down.contains(&from),
        };
        let log = &mut self.logs[asked.partition as usize];
        let (read, mut effects) =
            replica
                .partition
                .on_follower_fetch(fetch, log.real(), log.durable_end(), ctx.now);
        if let Some(hw) = effects.high_watermark.take() {
            log.set_high_watermark(hw);
        }
        answer.high_watermark = log.high_watermark();
        let visible_end = match read {
            FollowerRead::Diverging { epoch, end_offset } => {
                ctx.note(|| {
                    format!(
                        "{}: fetch #{fetch_id} from {from} p{} @{} e{}: diverging ({epoch}, \
                         {end_offset})",
                        self.id, asked.partition, asked.fetch_offset, asked.last_fetched_epoch
                    )
                });
                ctx.seen.counts.diverging_answers += 1;
                answer.diverging_epoch = Some((epoch, end_offset));
                return (answer, effects);
            }
            FollowerRead::Refused(code) => {
                answer.error_code = code.code();
                answer.log_start_offset = 0;
                return (answer, effects);
            }
            FollowerRead::Records { end } => end,
        };
        answer.log_start_offset = 0;
        let offset = asked.fetch_offset;
        // Between the visible end and the log end the data exists but is not yet visible.
        if offset < visible_end || offset > log.end() {
            // Everything appended (as up to `replica.fetch.max.bytes`) or, to vary the
            // interleavings, a few batches (of about 80 bytes).
            let max_bytes = if ctx.rng.chance(500) {
                usize::MAX
            } else {
                ctx.rng.between(1, 600) as usize
            };
            match log.read(offset, visible_end, max_bytes) {
                Ok(records) => answer.records = records,
                Err(StorageError::OffsetOutOfRange { .. }) => {
                    answer.error_code = ErrorCode::OffsetOutOfRange.code()
                }
                Err(e) => {
                    ctx.note(|| format!("{}: read failed: {e}", self.id));
                    answer.error_code = ErrorCode::KafkaStorageError.code();
                }
            }
        }
        ctx.note(|| {
            format!(
                "{}: fetch #{fetch_id} from {from} p{} @{offset}: {} bytes, hw {}",
                self.id,
                asked.partition,
                answer.records.len(),
                answer.high_watermark
            )
        });
        (answer, effects)
    }

    // ---- The follower's fetch loops (`fetcher::follow`) ------------------------------------

    pub(super) fn fire_fetchers(&mut self, ctx: &mut Ctx) {
        let Some(p) = self.proc.as_mut() else {
            return;
        };
        let now = ctx.now;
        let leaders: Vec<i32> = p.fetchers.keys().copied().collect();
        for leader in leaders {
            let Some(p) = self.proc.as_mut() else {
                return;
            };
            match p.fetchers[&leader] {
                Fetcher::Idle(at) if at <= now => self.fetch(ctx, leader),
                Fetcher::InFlight { deadline, id, .. } if deadline <= now => {
                    ctx.note(|| format!("{}: fetch #{id} from {leader} failed", self.id));
                    p.fetchers.insert(leader, Fetcher::Idle(now + BACKOFF_MS));
                }
                _ => {}
            }
        }
    }

    /// One round of the loop: ends it if this broker follows `leader` for no partition, else
    /// sends one Fetch for every partition it follows from `leader`, from their log ends.
    fn fetch(&mut self, ctx: &mut Ctx, leader: i32) {
        let Some(p) = self.proc.as_mut() else {
            return;
        };
        let following: Vec<(i32, i32)> = p
            .replicas
            .iter()
            .filter_map(|(i, r)| match r.partition.following() {
                Some((l, epoch)) if l == leader => Some((*i, epoch)),
                _ => None,
            })
            .collect();
        if following.is_empty() {
            p.fetchers.remove(&leader);
            return;
        }
        if !p.image.metadata.brokers.contains_key(&leader) {
            p.fetchers
                .insert(leader, Fetcher::Idle(ctx.now + BACKOFF_MS));
            return;
        }
        let asked: Vec<FetchPartition> = following
            .iter()
            .map(|&(partition, epoch)| {
                let (fetch_offset, last_fetched_epoch) =
                    follower::fetch_point(self.logs[partition as usize].real());
                FetchPartition {
                    topic: TOPIC.into(),
                    topic_id: Uuid::nil(),
                    partition,
                    fetch_offset,
                    last_fetched_epoch,
                    current_leader_epoch: epoch,
                    log_start_offset: 0,
                }
            })
            .collect();
        let id = ctx.id();
        let deadline = ctx.now + ctx.settings.fetch_wait_ms + ctx.settings.fetch_slack_ms;
        p.fetchers.insert(
            leader,
            Fetcher::InFlight {
                id,
                asked: asked.clone(),
                deadline,
            },
        );
        let request = FetchRequest {
            id,
            replica_id: self.id,
            asked,
        };
        ctx.send(self.id, leader, Payload::Fetch(request));
    }

    /// The leader's answers, one per partition asked: each carried out as `follower::apply`
    /// does, then the loop waits for every appended record to be durable before the next
    /// round.
    pub fn on_fetch_response(
        &mut self,
        ctx: &mut Ctx,
        leader: i32,
        id: u64,
        answers: Vec<FetchedPartition>,
    ) {
        let now = ctx.now;
        let Some(p) = self.proc.as_mut() else {
            return;
        };
        let asked = match p.fetchers.get(&leader) {
            Some(Fetcher::InFlight { id: i, asked, .. }) if *i == id => asked.clone(),
            // Its fetch timed out: the loop went on.
            _ => return,
        };
        let mut backoff = false;
        for (asked, answer) in asked.iter().zip(&answers) {
            let applied = self.apply_answer(ctx, leader, id, asked, answer);
            backoff |= matches!(applied, Applied::Backoff(_));
        }
        let targets: Vec<(i32, i64)> = asked
            .iter()
            .map(|a| (a.partition, self.log(a.partition).end()))
            .filter(|(i, end)| self.log(*i).durable_end() < *end)
            .collect();
        let Some(p) = self.proc.as_mut() else {
            return;
        };
        for (partition, _) in &targets {
            if let Some(replica) = p.replicas.get_mut(partition) {
                replica.schedule_flush(ctx);
            }
        }
        let next = if targets.is_empty() {
            Fetcher::Idle(now + if backoff { BACKOFF_MS } else { 0 })
        } else {
            Fetcher::Durable { targets, backoff }
        };
        p.fetchers.insert(leader, next);
    }

    /// `follower::apply` for one partition: the production decision, carried out on the
    /// log.
    fn apply_answer(
        &mut self,
        ctx: &mut Ctx,
        leader: i32,
        id: u64,
        asked: &FetchPartition,
        answer: &FetchedPartition,
    ) -> Applied {
        let partition = asked.partition;
        let following = self
            .proc
            .as_ref()
            .and_then(|p| p.partition(partition))
            .and_then(Partition::following)
            .map(|(_, e)| e);
        let log = &mut self.logs[partition as usize];
        let action = follower::decide(asked, following, answer, log.real());
        ctx.note(|| {
            format!(
                "{}: answer #{id} from {leader} p{partition} @{} (log end {}): {action:?}",
                self.id,
                asked.fetch_offset,
                log.end()
            )
        });
        match action {
            Action::ResetTo(start) => panic!("reset to {start}: no retention in the simulation"),
            Action::Corrupt(e) => panic!("corrupt batch from leader {leader}: {e}"),
            Action::TruncateTo { offset, .. } => match log.truncate_to(offset) {
                Ok(end) if end < asked.fetch_offset => {
                    ctx.seen.counts.truncations += 1;
                    Applied::Truncated
                }
                Ok(_) => Applied::Truncated,
                Err(_) => Applied::Backoff(ErrorCode::KafkaStorageError.code()),
            },
            Action::Append {
                batches,
                leader_high_watermark,
            } => {
                if !batches.is_empty()
                    && let Err(e) = log.append_replicated(&answer.records, &batches)
                {
                    ctx.note(|| format!("{}: replicated append refused: {e}", self.id));
                    Applied::Backoff(ErrorCode::KafkaStorageError.code())
                } else {
                    let end = log.end();
                    log.set_high_watermark(follower::follower_high_watermark(
                        leader_high_watermark,
                        end,
                    ));
                    Applied::Appended
                }
            }
            Action::Stale => Applied::Backoff(ErrorCode::FencedLeaderEpoch.code()),
            Action::Backoff(code) => Applied::Backoff(code),
        }
    }

    // ---- ISR changes (`send_isr_change`) ----------------------------------------------------

    fn start_isr_task(&mut self, ctx: &mut Ctx, partition: i32, proposal: IsrProposal) {
        let Some(p) = self.proc.as_mut() else {
            return;
        };
        ctx.note(|| format!("{} p{partition}: proposes ISR {proposal:?}", self.id));
        p.isr_tasks.push(IsrTask {
            id: ctx.id(),
            partition,
            proposal,
            retry_at: Some(ctx.now),
        });
        self.fire_isr_tasks(ctx);
    }

    pub(super) fn fire_isr_tasks(&mut self, ctx: &mut Ctx) {
        let Some(p) = self.proc.as_mut() else {
            return;
        };
        let now = ctx.now;
        let due: Vec<u64> = p
            .isr_tasks
            .iter()
            .filter(|t| t.retry_at.is_some_and(|at| at <= now))
            .map(|t| t.id)
            .collect();
        for task in due {
            let Some(p) = self.proc.as_mut() else {
                return;
            };
            let Some(i) = p.isr_tasks.iter().position(|t| t.id == task) else {
                continue;
            };
            let t = &p.isr_tasks[i];
            let pending = p
                .partition(t.partition)
                .is_some_and(|r| r.is_pending(&t.proposal));
            if !pending {
                p.isr_tasks.remove(i);
                continue;
            }
            let t = &mut p.isr_tasks[i];
            t.retry_at = None;
            let change = IsrChange {
                topic: TOPIC.into(),
                partition: t.partition,
                leader: self.id,
                leader_epoch: t.proposal.leader_epoch,
                partition_epoch: t.proposal.partition_epoch,
                isr: t.proposal.isr.clone(),
            };
            self.propose(
                ctx,
                MetadataCommand::AlterPartition(change),
                Purpose::Isr(task),
                PROPOSAL_TIMEOUT_MS,
            );
        }
    }

    /// `send_isr_change`: the partition decides what the answer means
    /// (`Partition::on_isr_answer`).
    pub(super) fn isr_outcome(
        &mut self,
        ctx: &mut Ctx,
        task: u64,
        outcome: Option<CommandOutcome>,
    ) {
        let now = ctx.now;
        let Some(p) = self.proc.as_mut() else {
            return;
        };
        let Some(i) = p.isr_tasks.iter().position(|t| t.id == task) else {
            return;
        };
        ctx.note(|| format!("{}: ISR change answered {outcome:?}", self.id));
        let answer = match outcome {
            Some(CommandOutcome::Done(Ok(()))) => IsrAnswer::Committed,
            Some(CommandOutcome::Done(Err(e))) => IsrAnswer::Refused(e.code),
            _ => IsrAnswer::Unknown,
        };
        let t = &p.isr_tasks[i];
        let next = match p.replicas.get_mut(&t.partition) {
            Some(r) => r.partition.on_isr_answer(&t.proposal, answer, now),
            None => IsrNext::Done,
        };
        match next {
            IsrNext::Done => {
                p.isr_tasks.remove(i);
            }
            IsrNext::ResendAt(at) => p.isr_tasks[i].retry_at = Some(at),
        }
    }
}

/// The Fetch handler's leader check against the broker's image (`led_partition` and
/// `check_leader_epoch`).
fn resolve(image: &Image, node: i32, partition: i32, client_epoch: i32) -> Result<(), i16> {
    let p = usize::try_from(partition)
        .ok()
        .and_then(|i| partition_states(image).get(i))
        .ok_or(ErrorCode::UnknownTopicOrPartition.code())?;
    match p.leader {
        NO_LEADER => return Err(ErrorCode::LeaderNotAvailable.code()),
        leader if leader != node => return Err(ErrorCode::NotLeaderOrFollower.code()),
        _ => {}
    }
    match client_epoch {
        e if e < 0 || e == p.leader_epoch => Ok(()),
        e if e < p.leader_epoch => Err(ErrorCode::FencedLeaderEpoch.code()),
        _ => Err(ErrorCode::UnknownLeaderEpoch.code()),
    }
}

fn error_answer(partition: i32, code: i16) -> FetchedPartition {
    FetchedPartition {
        topic: TOPIC.into(),
        partition,
        error_code: code,
        high_watermark: -1,
        log_start_offset: -1,
        records: Bytes::new(),
        frame_bytes: 0,
        diverging_epoch: None,
    }
}

/// The answers as the follower decodes them: Fetch v12 carries "no divergence" as epoch -1,
/// so a DivergingEpoch of (-1, -1) reads as none (`fetch::diverging`, `FetchSession`).
fn fetch_response(id: u64, mut answers: Vec<FetchedPartition>) -> Payload {
    for a in &mut answers {
        a.diverging_epoch = a.diverging_epoch.filter(|(epoch, _)| *epoch >= 0);
    }
    Payload::FetchResponse { id, answers }
}

/// Answers an acks=all produce.
fn answer_ack(ctx: &mut Ctx, node: i32, ack: &PendingAck, code: i16) {
    ctx.seen.answers.push(ProduceAnswer {
        node,
        request: ack.request,
        code,
        offset: ack.offset,
    });
}

fn refusal(node: i32, request: ProduceRequest, code: i16) -> ProduceAnswer {
    ProduceAnswer {
        node,
        request,
        code,
        offset: -1,
    }
}
