//! Who may do what: the one place the gateway decides access. Every handler asks
//! [`authorize`] before it acts; a new action is denied until it is listed here.
//!
//! | Action | Allowed to |
//! |---|---|
//! | call Nexus endpoints | a namespace |
//! | call one endpoint | a namespace in its `allowedCallerNamespaces` |
//! | complete an operation | a namespace; the target namespace when the operation has one |
//! | poll a task queue, answer a task | the queue's, the task's own namespace |
//! | manage endpoints, manage completions | an admin |
//! | read attribution | metering |
//!
//! No certificate identity at all is 401; a known identity doing what it may not is 403.

use nexus_certs::{Identity, IdentityError, PeerIdentity};
use nexus_registry::Endpoint;

use crate::error::GatewayError;

/// Who is on the other end of a connection, as its certificate says.
pub type Peer = Result<PeerIdentity, IdentityError>;

/// What a request wants to do.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// Start or cancel operations at all (checked before the endpoint is known).
    CallEndpoints,
    /// Start or cancel operations of this endpoint.
    CallEndpoint(&'a Endpoint),
    /// Post a completion; `target` is the namespace that handled the operation, if known.
    CompleteOperation {
        target: Option<&'a str>,
    },
    PollQueue {
        namespace: &'a str,
    },
    AnswerTasks,
    /// Answer one task, of namespace `owner`.
    AnswerTask {
        owner: &'a str,
    },
    ManageEndpoints,
    ManageCompletions,
    ReadAttribution,
}

/// The verified identity, or 401 saying why there is none.
pub fn identity(peer: &Peer) -> Result<&Identity, GatewayError> {
    peer.as_ref().map(|p| &p.identity).map_err(|error| {
        GatewayError::unauthenticated(format!("client certificate not accepted: {error}"))
    })
}

/// Allows `action` or says why not. Returns the caller's namespace for namespace actions
/// (empty for the others).
pub fn authorize<'p>(peer: &'p Peer, action: Action<'_>) -> Result<&'p str, GatewayError> {
    let identity = identity(peer)?;
    let namespace = |verb: &str| match identity {
        Identity::Namespace(ns) => Ok(ns.as_str()),
        other => Err(GatewayError::unauthorized(format!(
            "{other} may not {verb}: a namespace certificate is required"
        ))),
    };
    let role = |allowed: bool, verb: &str, required: &str| {
        if allowed {
            Ok("")
        } else {
            Err(GatewayError::unauthorized(format!(
                "{identity} may not {verb}: {required} certificate is required"
            )))
        }
    };
    match action {
        Action::CallEndpoints => namespace("call Nexus endpoints"),
        Action::CallEndpoint(endpoint) => {
            let caller = namespace("call Nexus endpoints")?;
            if endpoint.allows_caller(caller) {
                Ok(caller)
            } else {
                Err(GatewayError::unauthorized(format!(
                    "namespace {caller:?} is not allowed to call endpoint {:?}",
                    endpoint.spec.name
                )))
            }
        }
        Action::CompleteOperation { target } => {
            let sender = namespace("complete operations")?;
            match target {
                Some(target) if target != sender => Err(GatewayError::unauthorized(format!(
                    "namespace {sender:?} may not complete operations handled by namespace {target:?}"
                ))),
                _ => Ok(sender),
            }
        }
        Action::PollQueue { namespace: queue } => {
            let own = namespace("poll task queues")?;
            if own == queue {
                Ok(own)
            } else {
                Err(GatewayError::unauthorized(format!(
                    "namespace {own:?} may not poll task queues of namespace {queue:?}"
                )))
            }
        }
        Action::AnswerTasks => namespace("answer Nexus tasks"),
        Action::AnswerTask { owner } => {
            let own = namespace("answer Nexus tasks")?;
            if own == owner {
                Ok(own)
            } else {
                // Which namespace owns it is not this worker's business.
                Err(GatewayError::unauthorized(format!(
                    "namespace {own:?} may not answer this task: it belongs to another namespace"
                )))
            }
        }
        Action::ManageEndpoints => role(
            matches!(identity, Identity::Admin(_)),
            "manage endpoints",
            "an admin",
        ),
        Action::ManageCompletions => role(
            matches!(identity, Identity::Admin(_)),
            "manage completions",
            "an admin",
        ),
        Action::ReadAttribution => role(
            matches!(identity, Identity::Metering(_)),
            "read attribution",
            "a metering",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_registry::{EndpointSpec, Target};

    fn peer(identity: Identity) -> Peer {
        Ok(PeerIdentity {
            uri: identity.uri("td"),
            identity,
        })
    }

    fn endpoint(callers: &[&str]) -> Endpoint {
        Endpoint {
            id: "id".into(),
            version: 1,
            created_time: String::new(),
            last_modified_time: String::new(),
            url_prefix: String::new(),
            spec: EndpointSpec {
                name: "payments".into(),
                description: String::new(),
                target: Target::Worker {
                    namespace: "billing".into(),
                    task_queue: "q".into(),
                },
                allowed_caller_namespaces: callers.iter().map(|c| c.to_string()).collect(),
            },
        }
    }

    /// Who may do what, as one table: (identity, action, allowed).
    #[test]
    fn the_policy_table() {
        let orders = || peer(Identity::Namespace("orders".into()));
        let billing = || peer(Identity::Namespace("billing".into()));
        let admin = || peer(Identity::Admin("root".into()));
        let metering = || peer(Identity::Metering("m".into()));
        let allowed = endpoint(&["orders"]);
        let closed = endpoint(&[]);
        let cases: Vec<(Peer, Action, bool)> = vec![
            (orders(), Action::CallEndpoints, true),
            (admin(), Action::CallEndpoints, false),
            (orders(), Action::CallEndpoint(&allowed), true),
            (billing(), Action::CallEndpoint(&allowed), false),
            (orders(), Action::CallEndpoint(&closed), false),
            (
                billing(),
                Action::CompleteOperation {
                    target: Some("billing"),
                },
                true,
            ),
            (
                orders(),
                Action::CompleteOperation {
                    target: Some("billing"),
                },
                false,
            ),
            (orders(), Action::CompleteOperation { target: None }, true),
            (
                metering(),
                Action::CompleteOperation { target: None },
                false,
            ),
            (
                billing(),
                Action::PollQueue {
                    namespace: "billing",
                },
                true,
            ),
            (
                orders(),
                Action::PollQueue {
                    namespace: "billing",
                },
                false,
            ),
            (orders(), Action::AnswerTasks, true),
            (billing(), Action::AnswerTask { owner: "billing" }, true),
            (orders(), Action::AnswerTask { owner: "billing" }, false),
            (admin(), Action::AnswerTasks, false),
            (admin(), Action::ManageEndpoints, true),
            (orders(), Action::ManageEndpoints, false),
            (metering(), Action::ManageEndpoints, false),
            (admin(), Action::ManageCompletions, true),
            (billing(), Action::ManageCompletions, false),
            (metering(), Action::ReadAttribution, true),
            (admin(), Action::ReadAttribution, false),
        ];
        for (peer, action, expected) in cases {
            let got = authorize(&peer, action);
            assert_eq!(got.is_ok(), expected, "{peer:?} {action:?}: {got:?}");
            if let Err(e) = got {
                assert_eq!(e.kind.status(), 403, "{e}");
            }
        }
        let anonymous: Peer = Err(IdentityError::NoClientCertificate);
        let e = authorize(&anonymous, Action::ManageEndpoints).unwrap_err();
        assert_eq!(e.kind.status(), 401);
    }
}
