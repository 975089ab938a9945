//! Matching: in-memory sync match of Nexus tasks to polling workers, per (namespace, task queue).
//!
//! A start or cancel for a worker target waits for a poller; a poll waits for a task. Nothing
//! is persisted: like Temporal's matching for Nexus, a task that finds no worker before the
//! caller's deadline fails with a retryable 520 and the caller retries. Every wait is bounded and
//! the number of tasks waiting per queue is capped (past it: 429).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
/// Seeded per map; SipHash's stronger guarantee cost ~5 % of a request (BENCHMARKS.md, round 7).
type DashMap<K, V> = dashmap::DashMap<K, V, foldhash::fast::RandomState>;
use http::{HeaderMap, StatusCode};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::GatewayError;
use crate::names::{Namespace, TaskQueue};

/// Settings for matching; each default is Temporal-like and documented.
#[derive(Debug, Clone)]
pub struct MatchingSettings {
    /// Tasks that may wait for a poller per task queue (default 1000); past it callers get 429
    /// at once rather than queueing without bound.
    pub max_waiting_tasks: usize,
    /// How long before the caller's deadline the gateway answers 520 itself (default 1 s), so
    /// the caller gets an answer rather than a dropped connection.
    pub deadline_buffer: Duration,
    /// How long a start or cancel without `Request-Timeout` waits for a worker (default 60 s).
    pub default_request_timeout: Duration,
    /// Longest long-poll (default 60 s); a poll may ask for less with `Request-Timeout`.
    pub max_poll: Duration,
}

impl Default for MatchingSettings {
    fn default() -> Self {
        MatchingSettings {
            max_waiting_tasks: 1000,
            deadline_buffer: Duration::from_secs(1),
            default_request_timeout: Duration::from_secs(60),
            max_poll: Duration::from_secs(60),
        }
    }
}

/// A caller's request, re-addressed to a worker.
#[derive(Debug)]
pub struct Task {
    pub token: String,
    /// Headers for the worker: the caller's Nexus headers plus the `Nexus-Task-*` ones.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the gateway stops waiting for the worker's answer.
    pub deadline: Instant,
    /// Ends when a worker takes the task (recorded only when traced).
    pub queue_wait: crate::telemetry::Span,
}

/// What a worker answered: relayed to the caller as is.
#[derive(Debug)]
pub struct TaskResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueKey {
    pub namespace: Namespace,
    pub task_queue: TaskQueue,
}

struct Pending {
    namespace: Namespace,
    reply: oneshot::Sender<TaskResponse>,
}

#[derive(Default)]
struct QueueState {
    pollers: VecDeque<(u64, oneshot::Sender<Task>)>,
    tasks: VecDeque<Task>,
}

#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    /// When a worker last polled (ms since the epoch): replicas announce queues polled lately.
    last_poll_ms: AtomicU64,
}

impl Queue {
    /// Hands the task to a waiting poller, or queues it if there is room; false when full.
    fn offer(&self, mut task: Task, max_waiting: usize) -> bool {
        let mut state = self.state.lock().expect("queue lock");
        while let Some((_, poller)) = state.pollers.pop_front() {
            match poller.send(task) {
                Ok(()) => return true,
                // That poller gave up; try the next.
                Err(returned) => task = returned,
            }
        }
        if state.tasks.len() >= max_waiting {
            return false;
        }
        state.tasks.push_back(task);
        true
    }

    /// Puts back a task a poller took but could not deliver, ahead of the others.
    fn requeue(&self, task: Task) {
        let mut state = self.state.lock().expect("queue lock");
        let mut task = task;
        while let Some((_, poller)) = state.pollers.pop_front() {
            match poller.send(task) {
                Ok(()) => return,
                Err(returned) => task = returned,
            }
        }
        state.tasks.push_front(task);
    }

    fn remove_task(&self, token: &str) {
        let mut state = self.state.lock().expect("queue lock");
        state.tasks.retain(|t| t.token != token);
    }

    fn remove_poller(&self, id: u64) {
        let mut state = self.state.lock().expect("queue lock");
        state.pollers.retain(|(pid, _)| *pid != id);
    }
}

/// All task queues and the tasks handed to workers that still await an answer.
pub struct Matching {
    settings: MatchingSettings,
    queues: DashMap<QueueKey, Arc<Queue>>,
    pending: DashMap<String, Pending>,
    next_poller: AtomicU64,
}

/// Gauges for `/metrics`.
#[derive(Debug, Clone)]
pub struct QueueStats {
    pub key: QueueKey,
    pub pollers: usize,
    pub waiting_tasks: usize,
}

impl Matching {
    pub fn new(settings: MatchingSettings) -> Self {
        Matching {
            settings,
            queues: DashMap::default(),
            pending: DashMap::default(),
            next_poller: AtomicU64::new(1),
        }
    }

    pub fn settings(&self) -> &MatchingSettings {
        &self.settings
    }

    fn queue(&self, key: &QueueKey) -> Arc<Queue> {
        if let Some(q) = self.queues.get(key) {
            return q.clone();
        }
        self.queues.entry(key.clone()).or_default().clone()
    }

    /// Sends a task to a worker of `key` and waits for its answer until `task.deadline`.
    pub async fn dispatch(&self, key: &QueueKey, task: Task) -> Result<TaskResponse, GatewayError> {
        let token = task.token.clone();
        let deadline = task.deadline;
        let (reply, answer) = oneshot::channel();
        self.pending.insert(
            token.clone(),
            Pending {
                namespace: key.namespace.clone(),
                reply,
            },
        );
        let queue = self.queue(key);
        // Cleans up on every exit, including the caller going away mid-wait.
        let _guard = DispatchGuard {
            matching: self,
            queue: &queue,
            token: &token,
        };
        if !queue.offer(task, self.settings.max_waiting_tasks) {
            return Err(GatewayError::resource_exhausted(format!(
                "task queue {:?} of namespace {:?} has {} tasks waiting for a worker",
                key.task_queue, key.namespace, self.settings.max_waiting_tasks
            ))
            .with_retry_after(Duration::from_secs(1)));
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) | Err(_) => Err(GatewayError::upstream_timeout(format!(
                "no worker of namespace {:?} answered on task queue {:?} before the deadline",
                key.namespace, key.task_queue
            ))
            .from_upstream()),
        }
    }

    /// Long-polls `key` for a task for at most `wait`. `None` when nothing came.
    pub async fn poll(&self, key: &QueueKey, wait: Duration) -> Option<Task> {
        let queue = self.queue(key);
        queue.last_poll_ms.store(now_ms(), Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let id = self.next_poller.fetch_add(1, Ordering::Relaxed);
        {
            let mut state = queue.state.lock().expect("queue lock");
            while let Some(task) = state.tasks.pop_front() {
                // Skip tasks whose caller has already given up.
                if self.pending.contains_key(&task.token) {
                    return Some(task);
                }
            }
            state.pollers.push_back((id, tx));
        }
        let mut guard = PollGuard {
            queue,
            id,
            rx: Some(rx),
        };
        let rx = guard.rx.as_mut().expect("receiver");
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(task)) => {
                guard.rx = None;
                Some(task)
            }
            _ => None,
        }
    }

    /// Delivers a worker's answer if `allowed` accepts the task's namespace (checked and
    /// taken in one step). Errors: unknown or late token 404, or what `allowed` said.
    pub fn complete(
        &self,
        token: &str,
        allowed: impl FnOnce(&str) -> Result<(), GatewayError>,
        response: TaskResponse,
    ) -> Result<(), GatewayError> {
        let unknown = || {
            GatewayError::not_found(format!(
                "task token {token:?} is unknown or its caller stopped waiting"
            ))
        };
        let mut verdict = Ok(());
        let pending = self
            .pending
            .remove_if(token, |_, p| {
                verdict = allowed(&p.namespace);
                verdict.is_ok()
            })
            .map(|(_, p)| p);
        match pending {
            Some(p) => p.reply.send(response).map_err(|_| unknown()),
            None => verdict.and_then(|()| Err(unknown())),
        }
    }

    pub fn stats(&self) -> Vec<QueueStats> {
        self.queues
            .iter()
            .map(|entry| {
                let state = entry.value().state.lock().expect("queue lock");
                QueueStats {
                    key: entry.key().clone(),
                    pollers: state.pollers.len(),
                    waiting_tasks: state.tasks.len(),
                }
            })
            .collect()
    }

    /// Whether a worker polls `key` here: one waits now, or one polled within `within`.
    pub fn has_poller(&self, key: &QueueKey, within: Duration) -> bool {
        let Some(queue) = self.queues.get(key).map(|q| q.clone()) else {
            return false;
        };
        let recent = now_ms().saturating_sub(queue.last_poll_ms.load(Ordering::Relaxed))
            <= within.as_millis() as u64;
        recent || !queue.state.lock().expect("queue lock").pollers.is_empty()
    }

    /// The queues workers polled here within `within`.
    pub fn polled_queues(&self, within: Duration) -> Vec<QueueKey> {
        self.queues
            .iter()
            .filter(|q| self.has_poller(q.key(), within))
            .map(|q| q.key().clone())
            .collect()
    }

    /// Tasks handed out or queued whose callers still wait.
    pub fn pending_tasks(&self) -> usize {
        self.pending.len()
    }
}

struct DispatchGuard<'a> {
    matching: &'a Matching,
    queue: &'a Queue,
    token: &'a str,
}

impl Drop for DispatchGuard<'_> {
    fn drop(&mut self) {
        self.matching.pending.remove(self.token);
        self.queue.remove_task(self.token);
    }
}

struct PollGuard {
    queue: Arc<Queue>,
    id: u64,
    rx: Option<oneshot::Receiver<Task>>,
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        self.queue.remove_poller(self.id);
        // A task may have been handed over just as this poll timed out or was dropped: give it
        // back rather than lose it.
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if let Ok(task) = rx.try_recv() {
                self.queue.requeue(task);
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the worker API passes: allowed when the task is `namespace`'s.
    fn owned_by(namespace: &str) -> impl FnOnce(&str) -> Result<(), GatewayError> + '_ {
        move |owner| {
            if owner == namespace {
                Ok(())
            } else {
                Err(GatewayError::unauthorized("not yours"))
            }
        }
    }

    fn key() -> QueueKey {
        QueueKey {
            namespace: "handler".into(),
            task_queue: "tq".into(),
        }
    }

    fn task(token: &str, wait: Duration) -> Task {
        Task {
            token: token.into(),
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"input"),
            deadline: Instant::now() + wait,
            queue_wait: Default::default(),
        }
    }

    fn ok() -> TaskResponse {
        TaskResponse {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"result"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn task_waiting_before_poll_is_matched() {
        let m = Arc::new(Matching::new(MatchingSettings::default()));
        let m2 = m.clone();
        let caller = tokio::spawn(async move {
            m2.dispatch(&key(), task("t1", Duration::from_secs(5)))
                .await
        });
        tokio::task::yield_now().await;
        let got = m.poll(&key(), Duration::from_secs(1)).await.expect("task");
        assert_eq!(got.body, "input");
        m.complete("t1", owned_by("handler"), ok()).unwrap();
        assert_eq!(caller.await.unwrap().unwrap().body, "result");
        assert_eq!(m.pending_tasks(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn poll_waiting_before_task_is_matched() {
        let m = Arc::new(Matching::new(MatchingSettings::default()));
        let m2 = m.clone();
        let poller = tokio::spawn(async move { m2.poll(&key(), Duration::from_secs(30)).await });
        tokio::task::yield_now().await;
        let m3 = m.clone();
        let caller = tokio::spawn(async move {
            m3.dispatch(&key(), task("t1", Duration::from_secs(5)))
                .await
        });
        let got = poller.await.unwrap().expect("task");
        assert_eq!(got.token, "t1");
        m.complete("t1", owned_by("handler"), ok()).unwrap();
        assert!(caller.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn no_worker_before_deadline_is_520_and_late_answer_404() {
        let m = Matching::new(MatchingSettings::default());
        let err = m
            .dispatch(&key(), task("t1", Duration::from_secs(2)))
            .await
            .unwrap_err();
        assert_eq!(err.kind.status(), 520);
        assert!(err.is_retryable());
        // The expired task is gone: a poll finds nothing and a late answer is refused.
        assert!(m.poll(&key(), Duration::from_millis(10)).await.is_none());
        assert_eq!(
            m.complete("t1", owned_by("handler"), ok())
                .unwrap_err()
                .kind
                .status(),
            404
        );
    }

    #[tokio::test(start_paused = true)]
    async fn empty_poll_returns_none_after_its_wait() {
        let m = Matching::new(MatchingSettings::default());
        let started = Instant::now();
        assert!(m.poll(&key(), Duration::from_secs(3)).await.is_none());
        assert_eq!(started.elapsed().as_secs(), 3);
        assert_eq!(m.stats()[0].pollers, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn backlog_is_bounded() {
        let settings = MatchingSettings {
            max_waiting_tasks: 2,
            ..Default::default()
        };
        let m = Arc::new(Matching::new(settings));
        let mut callers = Vec::new();
        for i in 0..2 {
            let m = m.clone();
            callers.push(tokio::spawn(async move {
                m.dispatch(&key(), task(&format!("t{i}"), Duration::from_secs(5)))
                    .await
            }));
        }
        tokio::task::yield_now().await;
        let err = m
            .dispatch(&key(), task("t9", Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert_eq!(err.kind.status(), 429);
        assert!(err.retry_after.is_some());
        for c in callers {
            assert_eq!(c.await.unwrap().unwrap_err().kind.status(), 520);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn other_namespace_cannot_answer() {
        let m = Arc::new(Matching::new(MatchingSettings::default()));
        let m2 = m.clone();
        let caller = tokio::spawn(async move {
            m2.dispatch(&key(), task("t1", Duration::from_secs(5)))
                .await
        });
        tokio::task::yield_now().await;
        m.poll(&key(), Duration::from_secs(1)).await.unwrap();
        let err = m.complete("t1", owned_by("intruder"), ok()).unwrap_err();
        assert_eq!(err.kind.status(), 403);
        m.complete("t1", owned_by("handler"), ok()).unwrap();
        assert!(caller.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_poll_gives_its_task_back() {
        let m = Arc::new(Matching::new(MatchingSettings::default()));
        // A poll that is abandoned after the task was handed to it.
        let q = m.queue(&key());
        let (tx, rx) = oneshot::channel();
        q.state.lock().unwrap().pollers.push_back((99, tx));
        let guard = PollGuard {
            queue: q.clone(),
            id: 99,
            rx: Some(rx),
        };
        let m2 = m.clone();
        let caller = tokio::spawn(async move {
            m2.dispatch(&key(), task("t1", Duration::from_secs(5)))
                .await
        });
        tokio::task::yield_now().await;
        drop(guard);
        let got = m
            .poll(&key(), Duration::from_secs(1))
            .await
            .expect("requeued task");
        assert_eq!(got.token, "t1");
        m.complete("t1", owned_by("handler"), ok()).unwrap();
        assert!(caller.await.unwrap().is_ok());
    }
}
