//! Bookkeeping of runs and tool calls (contract sections 5 and 10).
//!
//! A run opens with RUN_STARTED and closes with RUN_FINISHED or RUN_ERROR; at most
//! `limit` runs may be open at once. RUN_CANCEL marks a run as cancelled so that its producer
//! stops and closes it with status CANCELLED. Tool calls are tracked the same way, by call id.

use std::collections::HashMap;

use crate::payload::ToolProgress;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("{limit} runs are already open")]
    LimitExceeded { limit: u64 },
    #[error("no open run {0:?}")]
    NotFound(String),
    #[error("run {0:?} is already open")]
    AlreadyOpen(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRun {
    pub thread_id: Option<String>,
    pub opened_ms: u64,
    pub cancelled: bool,
}

/// The open runs of one session.
#[derive(Debug)]
pub struct RunTable {
    limit: u64,
    open: HashMap<String, OpenRun>,
}

impl RunTable {
    pub fn new(limit: u64) -> RunTable {
        RunTable {
            limit,
            open: HashMap::new(),
        }
    }

    /// The effective limit: the smaller of this side's and the peer's (set after HAI).
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn open(
        &mut self,
        run_id: &str,
        thread_id: Option<String>,
        now_ms: u64,
    ) -> Result<(), RunError> {
        if self.open.contains_key(run_id) {
            return Err(RunError::AlreadyOpen(run_id.to_string()));
        }
        if self.open.len() as u64 >= self.limit {
            return Err(RunError::LimitExceeded { limit: self.limit });
        }
        self.open.insert(
            run_id.to_string(),
            OpenRun {
                thread_id,
                opened_ms: now_ms,
                cancelled: false,
            },
        );
        Ok(())
    }

    /// Closes a run (RUN_FINISHED or RUN_ERROR went out or came in).
    pub fn close(&mut self, run_id: &str) -> Result<OpenRun, RunError> {
        self.open
            .remove(run_id)
            .ok_or_else(|| RunError::NotFound(run_id.to_string()))
    }

    /// Marks a run cancelled (RUN_CANCEL). The run stays open until its producer closes it.
    /// Cancelling twice is harmless.
    pub fn cancel(&mut self, run_id: &str) -> Result<(), RunError> {
        let run = self
            .open
            .get_mut(run_id)
            .ok_or_else(|| RunError::NotFound(run_id.to_string()))?;
        run.cancelled = true;
        Ok(())
    }

    pub fn get(&self, run_id: &str) -> Option<&OpenRun> {
        self.open.get(run_id)
    }

    pub fn is_cancelled(&self, run_id: &str) -> bool {
        self.open.get(run_id).is_some_and(|r| r.cancelled)
    }

    /// The open runs, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &OpenRun)> {
        self.open.iter().map(|(id, run)| (id.as_str(), run))
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolCallError {
    #[error("tool call {0:?} is already running")]
    Duplicate(String),
    #[error("no running tool call {0:?}")]
    NotFound(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolCallState {
    pub tool: String,
    pub run_id: Option<String>,
    pub status: ToolProgress,
    pub started_ms: u64,
}

/// The tool calls of one session that have not answered TOOL_DONE yet.
#[derive(Debug, Default)]
pub struct ToolCalls {
    calls: HashMap<String, ToolCallState>,
}

impl ToolCalls {
    pub fn start(
        &mut self,
        call_id: &str,
        tool: &str,
        run_id: Option<String>,
        now_ms: u64,
    ) -> Result<(), ToolCallError> {
        if self.calls.contains_key(call_id) {
            return Err(ToolCallError::Duplicate(call_id.to_string()));
        }
        self.calls.insert(
            call_id.to_string(),
            ToolCallState {
                tool: tool.to_string(),
                run_id,
                status: ToolProgress::Running,
                started_ms: now_ms,
            },
        );
        Ok(())
    }

    /// Marks a call as being cancelled (TOOL_CANCEL arrived, or its run was cancelled).
    pub fn cancel(&mut self, call_id: &str) -> Result<&ToolCallState, ToolCallError> {
        let call = self
            .calls
            .get_mut(call_id)
            .ok_or_else(|| ToolCallError::NotFound(call_id.to_string()))?;
        call.status = ToolProgress::Cancelling;
        Ok(call)
    }

    /// Removes a call that answered TOOL_DONE.
    pub fn finish(&mut self, call_id: &str) -> Result<ToolCallState, ToolCallError> {
        self.calls
            .remove(call_id)
            .ok_or_else(|| ToolCallError::NotFound(call_id.to_string()))
    }

    pub fn get(&self, call_id: &str) -> Option<&ToolCallState> {
        self.calls.get(call_id)
    }

    /// The calls that belong to a run, so that cancelling the run cancels them too.
    pub fn of_run(&self, run_id: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, c)| c.run_id.as_deref() == Some(run_id))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_open_up_to_the_limit() {
        let mut runs = RunTable::new(2);
        runs.open("a", None, 0).unwrap();
        runs.open("b", Some("t".into()), 0).unwrap();
        assert_eq!(
            runs.open("c", None, 0),
            Err(RunError::LimitExceeded { limit: 2 })
        );
        runs.close("a").unwrap();
        runs.open("c", None, 0).unwrap();
        assert_eq!(runs.open_count(), 2);
        assert_eq!(
            runs.get("b").and_then(|r| r.thread_id.clone()),
            Some("t".into())
        );
    }

    #[test]
    fn a_run_id_cannot_be_open_twice() {
        let mut runs = RunTable::new(5);
        runs.open("a", None, 0).unwrap();
        assert_eq!(
            runs.open("a", None, 0),
            Err(RunError::AlreadyOpen("a".into()))
        );
    }

    #[test]
    fn lowering_the_limit_applies_to_new_runs() {
        let mut runs = RunTable::new(10);
        runs.open("a", None, 0).unwrap();
        runs.set_limit(1);
        assert_eq!(runs.limit(), 1);
        assert!(matches!(
            runs.open("b", None, 0),
            Err(RunError::LimitExceeded { .. })
        ));
    }

    #[test]
    fn cancel_marks_and_unknown_runs_are_not_found() {
        let mut runs = RunTable::new(2);
        runs.open("a", None, 5).unwrap();
        assert!(!runs.is_cancelled("a"));
        runs.cancel("a").unwrap();
        runs.cancel("a").unwrap();
        assert!(runs.is_cancelled("a"));
        assert_eq!(runs.close("a").map(|r| r.opened_ms), Ok(5));
        assert_eq!(runs.cancel("a"), Err(RunError::NotFound("a".into())));
        assert_eq!(runs.close("zzz"), Err(RunError::NotFound("zzz".into())));
    }

    #[test]
    fn tool_calls_track_status_and_runs() {
        let mut calls = ToolCalls::default();
        calls.start("c1", "sleep", Some("r1".into()), 0).unwrap();
        calls.start("c2", "add", None, 0).unwrap();
        calls.start("c3", "echo", Some("r1".into()), 0).unwrap();
        assert_eq!(
            calls.start("c1", "sleep", None, 0),
            Err(ToolCallError::Duplicate("c1".into()))
        );
        assert_eq!(calls.of_run("r1"), vec!["c1".to_string(), "c3".to_string()]);
        assert_eq!(
            calls.cancel("c1").map(|c| c.status),
            Ok(ToolProgress::Cancelling)
        );
        assert_eq!(calls.finish("c1").map(|c| c.tool), Ok("sleep".to_string()));
        assert_eq!(calls.len(), 2);
        assert_eq!(
            calls.cancel("c1").err(),
            Some(ToolCallError::NotFound("c1".into()))
        );
    }
}
