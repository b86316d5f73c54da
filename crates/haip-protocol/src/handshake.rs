//! HAI negotiation (contract section 3).
//!
//! Each side announces itself with HAI. Reading the peer's HAI gives the [`PeerTerms`] this
//! side must respect when sending: which event types the peer accepts, how much credit it
//! grants, how many runs it allows, whether it takes binary frames, and (on resume) the
//! last seq it received. The same function serves the server reading a client's HAI and a
//! client reading the server's.

use serde_json::{json, Map, Value};

use crate::event::{EventSet, EventType};
use crate::flow::Credit;
use crate::payload::{Capabilities, FlowCredits, Hai};
use crate::{HAIP_MAJOR, HAIP_VERSION};

/// What this side offers in its own HAI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub binary_frames: bool,
    /// Credit the peer may use towards this side; `Credit::UNLIMITED` omits flow_control.
    pub credit: Credit,
    pub max_concurrent_runs: u64,
    /// Resume point to announce (a client resuming; the server confirming a resume).
    pub last_rx_seq: Option<u64>,
}

/// Builds this side's HAI payload: version 1.1.2, major 1, every event type.
pub fn hai(offer: &Offer) -> Hai {
    let flow_control = (!offer.credit.is_unlimited()).then_some(FlowCredits {
        initial_credit_messages: offer.credit.messages,
        initial_credit_bytes: offer.credit.bytes,
    });
    Hai {
        haip_version: HAIP_VERSION.to_string(),
        accept_major: vec![HAIP_MAJOR],
        accept_events: EventType::ALL
            .iter()
            .map(|t| t.as_str().to_string())
            .collect(),
        capabilities: Some(Capabilities {
            binary_frames: Some(offer.binary_frames),
            flow_control,
            max_concurrent_runs: Some(offer.max_concurrent_runs),
            signed_envelopes: Some(false),
            extra: Map::new(),
        }),
        last_rx_seq: offer.last_rx_seq,
        extra: Map::new(),
    }
}

/// What the peer's HAI obliges this side to respect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTerms {
    /// Types this side may send. HAI and ERROR are always in it.
    pub accepts: EventSet,
    /// The credit the peer grants per channel (unlimited where it set none).
    pub credit: Credit,
    pub max_concurrent_runs: Option<u64>,
    pub binary_frames: bool,
    pub last_rx_seq: Option<u64>,
}

impl PeerTerms {
    /// The terms towards a peer that sent no HAI: no filter, unlimited credit.
    pub fn defaults() -> PeerTerms {
        PeerTerms {
            accepts: EventSet::all(),
            credit: Credit::UNLIMITED,
            max_concurrent_runs: None,
            binary_frames: false,
            last_rx_seq: None,
        }
    }

    /// The run limit of the session: the smaller of this side's and the peer's.
    pub fn run_limit(&self, own_limit: u64) -> u64 {
        self.max_concurrent_runs
            .map_or(own_limit, |peer| peer.min(own_limit))
    }
}

/// The peer's HAI does not accept protocol major 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("peer accepts majors {accept_major:?}; this side speaks {HAIP_VERSION}")]
pub struct VersionIncompatible {
    pub accept_major: Vec<u64>,
}

impl VersionIncompatible {
    /// The `detail` of the VERSION_INCOMPATIBLE error the contract prescribes.
    pub fn detail() -> Value {
        json!({ "accept_major": [HAIP_MAJOR], "supported_versions": [HAIP_VERSION] })
    }
}

/// Reads the peer's HAI.
pub fn accept_peer_hai(peer: &Hai) -> Result<PeerTerms, VersionIncompatible> {
    if !peer.accept_major.contains(&HAIP_MAJOR) {
        return Err(VersionIncompatible {
            accept_major: peer.accept_major.clone(),
        });
    }
    let mut accepts: EventSet = peer
        .accept_events
        .iter()
        .filter_map(|name| EventType::parse(name))
        .collect();
    accepts.insert(EventType::Hai);
    accepts.insert(EventType::Error);
    let caps = peer.capabilities.as_ref();
    let credit = caps
        .and_then(|c| c.flow_control.as_ref())
        .map_or(Credit::UNLIMITED, |fc| {
            Credit::new(fc.initial_credit_messages, fc.initial_credit_bytes)
        });
    Ok(PeerTerms {
        accepts,
        credit,
        max_concurrent_runs: caps.and_then(|c| c.max_concurrent_runs),
        binary_frames: caps.and_then(|c| c.binary_frames).unwrap_or(false),
        last_rx_seq: peer.last_rx_seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_hai(accept_major: Vec<u64>, events: &[&str]) -> Hai {
        Hai {
            haip_version: "1.1.2".into(),
            accept_major,
            accept_events: events.iter().map(|s| s.to_string()).collect(),
            capabilities: None,
            last_rx_seq: None,
            extra: Map::new(),
        }
    }

    #[test]
    fn server_hai_announces_version_major_and_all_types() {
        let h = hai(&Offer {
            binary_frames: true,
            credit: Credit::new(Some(1000), Some(1 << 20)),
            max_concurrent_runs: 10,
            last_rx_seq: None,
        });
        assert_eq!(h.haip_version, "1.1.2");
        assert_eq!(h.accept_major, vec![1]);
        assert_eq!(h.accept_events.len(), 22);
        let caps = h.capabilities.expect("capabilities");
        assert_eq!(caps.binary_frames, Some(true));
        assert_eq!(caps.signed_envelopes, Some(false));
        assert_eq!(caps.max_concurrent_runs, Some(10));
        let fc = caps.flow_control.expect("flow control");
        assert_eq!(fc.initial_credit_messages, Some(1000));
        assert_eq!(fc.initial_credit_bytes, Some(1 << 20));
    }

    #[test]
    fn unlimited_offer_omits_flow_control() {
        let h = hai(&Offer {
            binary_frames: false,
            credit: Credit::UNLIMITED,
            max_concurrent_runs: 3,
            last_rx_seq: Some(7),
        });
        assert_eq!(h.capabilities.and_then(|c| c.flow_control), None);
        assert_eq!(h.last_rx_seq, Some(7));
    }

    #[test]
    fn version_without_major_one_is_incompatible() {
        let err = accept_peer_hai(&client_hai(vec![2, 3], &[])).unwrap_err();
        assert_eq!(err.accept_major, vec![2, 3]);
        assert_eq!(
            VersionIncompatible::detail(),
            json!({"accept_major": [1], "supported_versions": ["1.1.2"]})
        );
        assert!(accept_peer_hai(&client_hai(vec![2, 1], &[])).is_ok());
    }

    #[test]
    fn accept_events_filter_always_allows_hai_and_error() {
        let terms = accept_peer_hai(&client_hai(
            vec![1],
            &["MESSAGE_START", "TEXT_MESSAGE_PART", "FUTURE_TYPE"],
        ))
        .unwrap();
        assert!(terms.accepts.contains(EventType::MessageStart));
        assert!(terms.accepts.contains(EventType::MessagePart));
        assert!(terms.accepts.contains(EventType::Hai));
        assert!(terms.accepts.contains(EventType::Error));
        assert!(!terms.accepts.contains(EventType::RunStarted));
        assert!(!terms.accepts.contains(EventType::Ping));
        assert_eq!(terms.accepts.len(), 4);
    }

    #[test]
    fn capabilities_set_credit_runs_and_binary() {
        let mut h = client_hai(vec![1], &["HAI"]);
        h.capabilities = Some(Capabilities {
            binary_frames: Some(true),
            flow_control: Some(FlowCredits {
                initial_credit_messages: Some(5),
                initial_credit_bytes: None,
            }),
            max_concurrent_runs: Some(2),
            signed_envelopes: None,
            extra: Map::new(),
        });
        h.last_rx_seq = Some(42);
        let terms = accept_peer_hai(&h).unwrap();
        assert_eq!(terms.credit, Credit::new(Some(5), None));
        assert_eq!(terms.run_limit(10), 2);
        assert_eq!(terms.run_limit(1), 1);
        assert!(terms.binary_frames);
        assert_eq!(terms.last_rx_seq, Some(42));
    }

    #[test]
    fn no_capabilities_means_unlimited_credit_and_own_run_limit() {
        let terms = accept_peer_hai(&client_hai(vec![1], &[])).unwrap();
        assert_eq!(terms.credit, Credit::UNLIMITED);
        assert_eq!(terms.run_limit(10), 10);
        assert!(!terms.binary_frames);
        let d = PeerTerms::defaults();
        assert_eq!(d.accepts.len(), 22);
        assert_eq!(d.credit, Credit::UNLIMITED);
    }
}
