//! Who may do what: the one place the gateway decides access. Every handler asks
//! [`authorize`] before it acts; a new action is denied until it is listed here.
//!
//! | Action | Allowed to |
//! |---|---|
//! | call Nexus endpoints ([`caller`]) | a namespace; a registered cluster, by its certificate or a secret in the URL |
//! | call one endpoint ([`authorize_call`]) | a caller in its `allowedCallerNamespaces` (`ns`, or `ns@cluster`) |
//! | complete an operation | anyone holding the sealed token; with a namespace certificate, only the target namespace |
//! | poll a task queue, answer a task | the queue's, the task's own namespace |
//! | manage endpoints, clusters, completions | an admin |
//! | use the console on the data port ([`authorize_console`]) | an admin |
//! | read the console on the ops port | whoever reaches the port (loopback by default), by an address or `localhost` |
//! | change things from the ops port's console | the same, when `[console] writable = true` |
//! | read attribution | metering |
//! | hand a forwarded task to this replica's workers | another replica: its signature verifies |
//!
//! Without a certificate (the handshake lets such connections in for Temporal servers), only
//! cluster-secret calls and completions pass: everything else is 401. A known identity doing
//! what it may not is 403. Every console write, on either port, must come from the console's
//! own page: it carries `X-Nexus-Console: 1` and an `Origin` naming the host it was sent to.

use std::sync::Arc;

use nexus_certs::{Identity, IdentityError, PeerIdentity};
use nexus_registry::{Cluster, Endpoint, Registry};

use crate::error::GatewayError;

/// Who is on the other end of a connection, as its certificate says.
pub type Peer = Result<PeerIdentity, IdentityError>;

/// What a request wants to do.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
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
    /// Take a task another replica forwarded; `signed` says whether its signature (made with
    /// the key only replicas share) verified.
    AcceptForwardedTask {
        signed: bool,
    },
    ManageClusters,
    ManageCompletions,
    ReadAttribution,
    /// Read or change anything through the operator console on the data port.
    UseConsole,
}

/// Who starts or cancels an operation.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A namespace certificate.
    Namespace(crate::names::Namespace),
    /// A trusted cluster, which names the namespace it acts for in each request.
    Cluster {
        cluster: Arc<Cluster>,
        /// How it proved itself, for attribution: its certificate's URI or `secret:<id>`.
        credential: String,
    },
}

/// Who may start or cancel operations: a namespace certificate, a cluster certificate of a
/// registered cluster, or (`secret`, from the URL) a valid secret of a registered cluster.
pub fn caller(
    peer: &Peer,
    secret: Option<&str>,
    registry: &Registry,
) -> Result<Caller, GatewayError> {
    if let Some(secret) = secret {
        // Not echoed: the secret is a credential.
        let (cluster, id) = registry.cluster_by_secret(secret).ok_or_else(|| {
            GatewayError::unauthenticated(
                "the cluster secret in the URL is unknown, revoked or expired",
            )
        })?;
        return Ok(Caller::Cluster {
            cluster,
            credential: format!("secret:{id}"),
        });
    }
    let peer = peer.as_ref().map_err(|error| {
        GatewayError::unauthenticated(format!("client certificate not accepted: {error}"))
    })?;
    match &peer.identity {
        Identity::Namespace(ns) => Ok(Caller::Namespace(crate::names::Namespace::new(ns.as_str()))),
        Identity::Cluster(name) => {
            let cluster = registry.cluster(name).ok_or_else(|| {
                GatewayError::unauthorized(format!(
                    "cluster {name:?} is not registered: nexus-gateway cluster add --name {name} ..."
                ))
            })?;
            Ok(Caller::Cluster {
                cluster,
                credential: peer.uri.clone(),
            })
        }
        other => Err(GatewayError::unauthorized(format!(
            "{other} may not call Nexus endpoints: a namespace or cluster certificate is required"
        ))),
    }
}

/// Whether `caller` (`ns`, or `ns@cluster` for a cluster's namespace) may call `endpoint`.
pub fn authorize_call(caller: &str, endpoint: &Endpoint) -> Result<(), GatewayError> {
    if endpoint.allows_caller(caller) {
        Ok(())
    } else {
        Err(GatewayError::unauthorized(format!(
            "namespace {caller:?} is not allowed to call endpoint {:?}",
            endpoint.spec.name
        )))
    }
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
    // The sealed token is the credential of a completion: a handler without a certificate
    // (a stock Temporal server) may post one.
    if let (Action::CompleteOperation { .. }, Err(IdentityError::NoClientCertificate)) =
        (action, peer)
    {
        return Ok("");
    }
    // Replicas authenticate to each other by the signature, not a certificate.
    if let Action::AcceptForwardedTask { signed } = action {
        return if signed {
            Ok("")
        } else {
            Err(GatewayError::unauthenticated(
                "a forwarded task must carry a valid replica signature",
            ))
        };
    }
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
        // A cluster's handlers hold the token like a certificate-less one.
        Action::CompleteOperation { .. } if matches!(identity, Identity::Cluster(_)) => Ok(""),
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
        Action::AcceptForwardedTask { .. } => unreachable!("decided above"),
        Action::ManageClusters => role(
            matches!(identity, Identity::Admin(_)),
            "manage clusters",
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
        Action::UseConsole => role(
            matches!(identity, Identity::Admin(_)),
            "use the console",
            "an admin",
        ),
    }
}

/// The header the console's page sends with every write. A cross-site form cannot send a
/// custom header, and a cross-site script cannot either without a CORS preflight, which the
/// gateway never grants.
pub const CONSOLE_HEADER: &str = "x-nexus-console";

/// Where a console request came in.
#[derive(Debug, Clone, Copy)]
pub enum ConsoleDoor<'a> {
    /// The plain-HTTP ops port: no identity. `writable` is `[console] writable`.
    OpsPort { writable: bool },
    /// The data port, with the certificate's identity.
    DataPort(&'a Peer),
}

/// What decides a console request beyond who sent it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsoleRequest<'a> {
    /// Anything but GET and HEAD.
    pub write: bool,
    /// The host the request was sent to (`Host` or the HTTP/2 authority).
    pub host: Option<&'a str>,
    pub origin: Option<&'a str>,
    /// Whether it carries [`CONSOLE_HEADER`]` = 1`.
    pub from_console: bool,
}

/// Allows a console request or says why not.
pub fn authorize_console(
    door: ConsoleDoor<'_>,
    request: ConsoleRequest<'_>,
) -> Result<(), GatewayError> {
    let host = request.host.unwrap_or_default();
    match door {
        ConsoleDoor::DataPort(peer) => {
            authorize(peer, Action::UseConsole)?;
        }
        ConsoleDoor::OpsPort { writable } => {
            // DNS rebinding: a page of another site whose name resolves to 127.0.0.1 reaches
            // the ops port with its own name in Host; an address or localhost cannot be theirs.
            if !is_address_or_localhost(host) {
                return Err(GatewayError::unauthorized(format!(
                    "the console on the ops port answers only requests sent to an IP address or localhost, not {host:?}"
                )));
            }
            if request.write && !writable {
                return Err(GatewayError::unauthorized(
                    "the console on the ops port is read-only: set [console] writable = true in the config file to change endpoints and completions from it",
                ));
            }
        }
    }
    if !request.write {
        return Ok(());
    }
    if !request.from_console {
        return Err(GatewayError::unauthorized(format!(
            "console writes must carry the header {CONSOLE_HEADER}: 1, as the console's page sends it"
        )));
    }
    let origin_host = request
        .origin
        .and_then(|o| o.parse::<http::Uri>().ok())
        .and_then(|uri| uri.authority().map(|a| a.as_str().to_owned()));
    match origin_host {
        Some(origin) if origin.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(GatewayError::unauthorized(format!(
            "console writes must come from a page of {host:?}: Origin is {:?}",
            request.origin.unwrap_or("missing")
        ))),
    }
}

/// Whether `host` (with or without a port) is an IP address or `localhost`.
fn is_address_or_localhost(host: &str) -> bool {
    let Ok(authority) = host.parse::<http::uri::Authority>() else {
        return false;
    };
    let name = authority.host();
    let name = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
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
        let cases: Vec<(Peer, Action, bool)> = vec![
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
            (admin(), Action::ManageClusters, true),
            (orders(), Action::ManageClusters, false),
            (
                peer(Identity::Cluster("east".into())),
                Action::CompleteOperation {
                    target: Some("billing"),
                },
                true,
            ),
            (
                peer(Identity::Cluster("east".into())),
                Action::ManageEndpoints,
                false,
            ),
            (orders(), Action::ManageEndpoints, false),
            (metering(), Action::ManageEndpoints, false),
            (admin(), Action::ManageCompletions, true),
            (billing(), Action::ManageCompletions, false),
            (metering(), Action::ReadAttribution, true),
            (admin(), Action::ReadAttribution, false),
            (admin(), Action::UseConsole, true),
            (orders(), Action::UseConsole, false),
            (metering(), Action::UseConsole, false),
        ];
        for (peer, action, expected) in cases {
            let got = authorize(&peer, action);
            assert_eq!(got.is_ok(), expected, "{peer:?} {action:?}: {got:?}");
            if let Err(e) = got {
                assert_eq!(e.kind.status(), 403, "{e}");
            }
        }
        // Without a certificate only a completion passes: its sealed token is the credential.
        let anonymous: Peer = Err(IdentityError::NoClientCertificate);
        for action in [
            Action::ManageEndpoints,
            Action::ManageClusters,
            Action::ManageCompletions,
            Action::ReadAttribution,
            Action::UseConsole,
            Action::PollQueue {
                namespace: "billing",
            },
            Action::AnswerTasks,
            Action::AnswerTask { owner: "billing" },
        ] {
            let e = authorize(&anonymous, action).unwrap_err();
            assert_eq!(e.kind.status(), 401, "{action:?}");
        }
        let complete = Action::CompleteOperation {
            target: Some("billing"),
        };
        assert_eq!(authorize(&anonymous, complete).unwrap(), "");
        let unrecognised: Peer = Err(IdentityError::NoUriSan {
            trust_domain: "td".into(),
        });
        assert_eq!(
            authorize(&unrecognised, complete)
                .unwrap_err()
                .kind
                .status(),
            401
        );
    }

    #[test]
    fn who_may_use_the_console() {
        let ops = |writable| ConsoleDoor::OpsPort { writable };
        let read = |host| ConsoleRequest {
            host: Some(host),
            ..Default::default()
        };
        let write = |host, origin, from_console| ConsoleRequest {
            write: true,
            host: Some(host),
            origin,
            from_console,
        };
        let page = Some("http://127.0.0.1:7080");
        let status = |door, request| authorize_console(door, request).map_err(|e| e.to_string());
        assert!(status(ops(false), read("127.0.0.1:7080")).is_ok());
        assert!(status(ops(false), read("localhost:7080")).is_ok());
        assert!(status(ops(false), read("[::1]:7080")).is_ok());
        let rebound = status(ops(true), read("evil.example:7080")).unwrap_err();
        assert!(rebound.contains("\"evil.example:7080\""), "{rebound}");
        let read_only = status(ops(false), write("127.0.0.1:7080", page, true)).unwrap_err();
        assert!(
            read_only.contains("[console] writable = true"),
            "{read_only}"
        );
        assert!(status(ops(true), write("127.0.0.1:7080", page, true)).is_ok());
        let unmarked = status(ops(true), write("127.0.0.1:7080", page, false)).unwrap_err();
        assert!(unmarked.contains(CONSOLE_HEADER), "{unmarked}");
        for origin in [None, Some("http://evil.example"), Some("null")] {
            let e = status(ops(true), write("127.0.0.1:7080", origin, true)).unwrap_err();
            assert!(e.contains("Origin"), "{e}");
        }

        let admin = peer(Identity::Admin("root".into()));
        let orders = peer(Identity::Namespace("orders".into()));
        let anonymous: Peer = Err(IdentityError::NoClientCertificate);
        let data = "gw.example:7443";
        let from_data = Some("https://gw.example:7443");
        assert!(
            authorize_console(ConsoleDoor::DataPort(&admin), write(data, from_data, true)).is_ok()
        );
        for (peer, expected) in [(&orders, 403), (&anonymous, 401)] {
            let e = authorize_console(ConsoleDoor::DataPort(peer), read(data)).unwrap_err();
            assert_eq!(e.kind.status(), expected, "{e}");
        }
        let cross = authorize_console(
            ConsoleDoor::DataPort(&admin),
            write(data, Some("https://evil.example"), true),
        );
        assert_eq!(cross.unwrap_err().kind.status(), 403);
    }

    #[test]
    fn who_may_call() {
        let registry = Registry::new(nexus_registry::RedbStore::in_memory().unwrap()).unwrap();
        let spec = nexus_registry::ClusterSpec {
            callback_url_template: "https://t/namespaces/{namespace}/cb".into(),
            description: String::new(),
        };
        let (_, secret) = registry.create_cluster("east", spec, true).unwrap();
        let secret = secret.unwrap();
        let anonymous: Peer = Err(IdentityError::NoClientCertificate);
        assert_eq!(
            caller(&anonymous, None, &registry)
                .unwrap_err()
                .kind
                .status(),
            401
        );
        let e = caller(&anonymous, Some("ngs_wrong"), &registry).unwrap_err();
        assert_eq!(e.kind.status(), 401);
        assert!(!e.to_string().contains("ngs_wrong"), "{e}");
        match caller(&anonymous, Some(&secret), &registry).unwrap() {
            Caller::Cluster {
                cluster,
                credential,
            } => {
                assert_eq!(cluster.name, "east");
                assert!(credential.starts_with("secret:") && !credential.contains(&secret[4..]));
            }
            other => panic!("{other:?}"),
        }
        let east = peer(Identity::Cluster("east".into()));
        assert!(matches!(
            caller(&east, None, &registry),
            Ok(Caller::Cluster { .. })
        ));
        let west = peer(Identity::Cluster("west".into()));
        assert_eq!(
            caller(&west, None, &registry).unwrap_err().kind.status(),
            403
        );
        let admin = peer(Identity::Admin("a".into()));
        assert_eq!(
            caller(&admin, None, &registry).unwrap_err().kind.status(),
            403
        );
        let orders = peer(Identity::Namespace("orders".into()));
        assert!(matches!(
            caller(&orders, None, &registry),
            Ok(Caller::Namespace(_))
        ));

        let allowed = endpoint(&["orders", "orders@east"]);
        assert!(authorize_call("orders", &allowed).is_ok());
        assert!(authorize_call("orders@east", &allowed).is_ok());
        assert_eq!(
            authorize_call("orders@west", &allowed)
                .unwrap_err()
                .kind
                .status(),
            403
        );
        assert_eq!(
            authorize_call("billing", &endpoint(&[]))
                .unwrap_err()
                .kind
                .status(),
            403
        );
    }
}
