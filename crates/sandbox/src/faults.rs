//! Fault injection: the next N calls of an endpoint fail in a chosen way, as KRA and
//! networks do.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use ushuru_kra::EndpointName;

/// How a call fails.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Answer with this KRA result code, without processing.
    ResultCode {
        code: String,
        message: Option<String>,
    },
    /// Answer with this HTTP status and body (a gateway's HTML page), without processing.
    HttpStatus { status: u16, body: Option<String> },
    /// Wait, then process and answer normally.
    Delay { ms: u64 },
    /// Close the connection before processing: nothing happened.
    Drop,
    /// Process and commit, then close the connection without answering: the call
    /// happened, the caller cannot know it.
    LostAnswer,
}

/// Faults per endpoint, each with how many calls it still applies to (so a count of four
/// billion costs nothing).
#[derive(Debug, Default)]
pub struct FaultQueue {
    queued: Mutex<HashMap<EndpointName, VecDeque<(Fault, u32)>>>,
}

impl FaultQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<EndpointName, VecDeque<(Fault, u32)>>> {
        self.queued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `fault` for the next `count` calls of `endpoint`, after any already queued.
    pub fn push(&self, endpoint: EndpointName, fault: Fault, count: u32) {
        let mut queued = self.lock();
        if count > 0 {
            queued
                .entry(endpoint)
                .or_default()
                .push_back((fault, count));
        }
    }

    /// The fault for this call, if one is queued.
    pub fn take(&self, endpoint: EndpointName) -> Option<Fault> {
        let mut queued = self.lock();
        let queue = queued.get_mut(&endpoint)?;
        let (fault, remaining) = queue.front_mut()?;
        let fault = fault.clone();
        *remaining -= 1;
        if *remaining == 0 {
            queue.pop_front();
        }
        if queue.is_empty() {
            queued.remove(&endpoint);
        }
        Some(fault)
    }

    /// What is queued, per endpoint (by OSCU name).
    /// Each fault with the number of calls it still applies to.
    pub fn pending(&self) -> HashMap<&'static str, Vec<serde_json::Value>> {
        self.lock()
            .iter()
            .map(|(endpoint, faults)| {
                let listed = faults
                    .iter()
                    .map(|(fault, count)| serde_json::json!({"fault": fault, "count": count}))
                    .collect();
                (endpoint.oscu_name(), listed)
            })
            .collect()
    }

    pub fn clear(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_come_out_in_order_and_run_out() {
        let queue = FaultQueue::default();
        queue.push(EndpointName::SaveItem, Fault::Drop, 2);
        queue.push(EndpointName::SaveItem, Fault::Delay { ms: 5 }, 1);
        assert_eq!(queue.take(EndpointName::SelectCodeList), None);
        assert_eq!(queue.take(EndpointName::SaveItem), Some(Fault::Drop));
        assert_eq!(queue.take(EndpointName::SaveItem), Some(Fault::Drop));
        assert_eq!(
            queue.take(EndpointName::SaveItem),
            Some(Fault::Delay { ms: 5 })
        );
        assert_eq!(queue.take(EndpointName::SaveItem), None);
        assert!(queue.pending().is_empty());
    }

    #[test]
    fn faults_read_as_json() {
        let fault: Fault =
            serde_json::from_str(r#"{"kind":"result_code","code":"994","message":null}"#).unwrap();
        assert_eq!(
            fault,
            Fault::ResultCode {
                code: "994".into(),
                message: None
            }
        );
        let fault: Fault = serde_json::from_str(r#"{"kind":"lost_answer"}"#).unwrap();
        assert_eq!(fault, Fault::LostAnswer);
    }
}
