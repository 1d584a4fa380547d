//! Replies and counters: signed grants and refusals, unsigned refusals,
//! and the statistics every answer updates.

use super::*;

impl Waypoint {
    pub(super) fn count_grant(&mut self) {
        self.stats.granted = self.stats.granted.wrapping_add(1);
    }

    pub(super) fn ignore(&mut self, reason: &str) -> Decision {
        self.count("garbage".to_owned());
        Decision::Ignore {
            reason: reason.to_owned(),
        }
    }

    pub(super) fn fit(
        &mut self,
        bytes: Vec<u8>,
        limit: usize,
        make: impl FnOnce(Vec<u8>) -> Decision,
    ) -> Decision {
        if bytes.len() > limit {
            return self.ignore("reply would be larger than the request");
        }
        self.count_grant();
        make(bytes)
    }

    /// Counts a refusal by the reason's name.
    pub(super) fn count_refusal(&mut self, reason: RefusalReason) {
        if reason == RefusalReason::RateLimited {
            // The flood's path: no formatting.
            if let Some(c) = self.stats.refused.get_mut("RateLimited") {
                *c = c.wrapping_add(1);
                return;
            }
        }
        self.count(format!("{reason:?}"));
    }

    pub(super) fn count(&mut self, name: String) {
        // Without a new key, no allocation (a flood's path).
        match self.stats.refused.get_mut(&name) {
            Some(c) => *c = c.wrapping_add(1),
            None => {
                self.stats.refused.insert(name, 1);
            }
        }
    }

    pub(super) fn refusal(
        &mut self,
        wall_ms: u64,
        to: SocketAddr,
        nonce: Nonce,
        reason: RefusalReason,
        detail: String,
        limit: usize,
    ) -> Decision {
        let outcome = Outcome::Refused { reason };
        self.signed_refusal(wall_ms, to, nonce, outcome, detail, limit)
    }

    /// A signed refusal (`outcome` is `Refused` or `WrongSource`).
    pub(super) fn signed_refusal(
        &mut self,
        wall_ms: u64,
        to: SocketAddr,
        nonce: Nonce,
        outcome: Outcome,
        detail: String,
        limit: usize,
    ) -> Decision {
        let what = match &outcome {
            Outcome::Refused { reason } => {
                self.count_refusal(*reason);
                reason.to_string()
            }
            _ => {
                self.count("WrongSource".to_owned());
                "wrong source".to_owned()
            }
        };
        let bytes = self.response_bytes(wall_ms, nonce, outcome);
        if bytes.len() > limit {
            return Decision::Ignore {
                reason: format!("{what}: {detail} (not answered: reply would amplify)"),
            };
        }
        let refused = Some(format!("{what}: {detail}"));
        Decision::Reply { to, bytes, refused }
    }

    /// An unsigned refusal of a request not (yet) authenticated.
    pub(super) fn unsigned(
        &mut self,
        to: SocketAddr,
        nonce: Option<Nonce>,
        reason: RefusalReason,
        detail: String,
        limit: usize,
    ) -> Decision {
        self.count_refusal(reason);
        let bytes = proto::encode(&Message::Refusal(UnsignedRefusal { reason, nonce }));
        if bytes.len() > limit {
            return Decision::Ignore {
                reason: format!("{reason}: {detail} (not answered: reply would amplify)"),
            };
        }
        let refused = Some(format!("{reason}: {detail} (unsigned answer)"));
        Decision::Reply { to, bytes, refused }
    }

    pub(super) fn grant_bytes(
        &mut self,
        wall_ms: u64,
        nonce: Nonce,
        port: u16,
        observed: IpAddr,
    ) -> Vec<u8> {
        let lease_secs = u32::try_from(self.settings.lease.as_secs()).unwrap_or(u32::MAX);
        self.response_bytes(
            wall_ms,
            nonce,
            Outcome::Granted {
                port,
                lease_secs,
                observed,
            },
        )
    }

    pub(super) fn response_bytes(
        &mut self,
        wall_ms: u64,
        nonce: Nonce,
        outcome: Outcome,
    ) -> Vec<u8> {
        let body = ResponseBody {
            nonce,
            timestamp_ms: wall_ms,
            outcome,
        };
        self.last_reply = Some(body.clone());
        self.sign(body)
    }

    pub(super) fn sign(&self, body: ResponseBody) -> Vec<u8> {
        let resp = Response::sign(self.cert.clone(), &self.key, body);
        proto::encode(&Message::Response(resp))
    }
}
