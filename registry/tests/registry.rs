//! Behaviour of `Registry` over real redb stores (in memory and on disk).

use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use nexus_registry::{Endpoint, EndpointSpec, RedbStore, Registry, RegistryError, Store, Target};

fn spec(name: &str) -> EndpointSpec {
    EndpointSpec {
        name: name.into(),
        description: format!("{name} endpoint"),
        target: Target::Worker {
            namespace: "target-ns".into(),
            task_queue: "tq".into(),
        },
        allowed_caller_namespaces: vec!["caller-ns".into()],
    }
}

fn memory_registry() -> Registry {
    Registry::new(RedbStore::in_memory().unwrap()).unwrap()
}

#[test]
fn create_get_resolve() {
    let registry = memory_registry();
    assert!(registry.is_empty());
    let created = registry.create(spec("alpha")).unwrap();
    assert_eq!(created.version, 1);
    assert_eq!(
        created.url_prefix,
        format!("/nexus/endpoints/{}/services", created.id)
    );
    assert_eq!(created.created_time, created.last_modified_time);
    humantime::parse_rfc3339(&created.created_time).unwrap();
    assert!(created.created_time.ends_with('Z') && created.created_time.len() == 24);
    uuid::Uuid::parse_str(&created.id).unwrap();

    assert_eq!(registry.get(&created.id).unwrap(), created);
    assert_eq!(registry.resolve(&created.id).unwrap(), created);
    assert_eq!(registry.resolve("alpha").unwrap(), created);
    assert!(registry.resolve("beta").is_none());
    assert_eq!(
        registry.get("alpha"),
        Err(RegistryError::NotFound("alpha".into())),
        "get is by id only"
    );
    assert_eq!(registry.len(), 1);
    assert_eq!(registry.table_version(), 1);
    assert!(created.allows_caller("caller-ns"));
    assert!(!created.allows_caller("target-ns"));
}

#[test]
fn invalid_spec_is_rejected_before_writing() {
    let registry = memory_registry();
    let err = registry.create(spec("1x")).unwrap_err();
    assert!(matches!(err, RegistryError::Invalid(ref m) if m.contains("endpoint name \"1x\"")));
    assert_eq!(registry.table_version(), 0);
    let created = registry.create(spec("ok")).unwrap();
    let err = registry.update(&created.id, 1, spec("-bad")).unwrap_err();
    assert!(matches!(err, RegistryError::Invalid(_)));
    assert_eq!(registry.get(&created.id).unwrap().version, 1);
}

#[test]
fn duplicate_name_conflicts() {
    let registry = memory_registry();
    let first = registry.create(spec("alpha")).unwrap();
    assert_eq!(
        registry.create(spec("alpha")),
        Err(RegistryError::AlreadyExists("alpha".into()))
    );
    let second = registry.create(spec("beta")).unwrap();
    assert_eq!(
        registry.update(&second.id, 1, spec("alpha")),
        Err(RegistryError::AlreadyExists("alpha".into()))
    );
    // Keeping its own name is not a conflict.
    registry.update(&first.id, 1, spec("alpha")).unwrap();
    assert_eq!(registry.len(), 2);
    assert_eq!(registry.table_version(), 3);
}

#[test]
fn update_checks_and_bumps_version() {
    let registry = memory_registry();
    let created = registry.create(spec("alpha")).unwrap();
    let mut changed = spec("alpha");
    changed.target = Target::External {
        url: "https://example.com/nexus".into(),
    };
    changed.allowed_caller_namespaces = vec!["other".into()];

    let updated = registry.update(&created.id, 1, changed.clone()).unwrap();
    assert_eq!(updated.version, 2);
    assert_eq!(updated.id, created.id);
    assert_eq!(updated.created_time, created.created_time);
    assert_eq!(updated.spec, changed);
    assert_eq!(registry.resolve("alpha").unwrap(), updated);
    assert!(updated.allows_caller("other") && !updated.allows_caller("caller-ns"));

    let stale = registry.update(&created.id, 1, spec("alpha")).unwrap_err();
    assert_eq!(
        stale,
        RegistryError::VersionConflict {
            id: created.id.clone(),
            expected: 1,
            actual: 2
        }
    );
    assert_eq!(registry.get(&created.id).unwrap(), updated);
    assert_eq!(
        registry.update("missing", 1, spec("x1")),
        Err(RegistryError::NotFound("missing".into()))
    );
}

#[test]
fn rename_frees_old_name() {
    let registry = memory_registry();
    let created = registry.create(spec("old-name")).unwrap();
    registry.update(&created.id, 1, spec("new-name")).unwrap();
    assert!(registry.resolve("old-name").is_none());
    assert_eq!(registry.resolve("new-name").unwrap().id, created.id);
    // The store agrees: the old name can be taken again.
    let other = registry.create(spec("old-name")).unwrap();
    assert_eq!(registry.resolve("old-name").unwrap(), other);
}

/// A name may spell another endpoint's id (a UUID starting with a letter is a valid name): the
/// id wins, and the name resolves again once that endpoint is gone.
#[test]
fn an_id_shadows_an_equal_name_until_it_is_deleted() {
    let registry = memory_registry();
    let mut letter_ids = (0..200)
        .map(|n| registry.create(spec(&format!("e{n}"))).unwrap())
        .filter(|e| e.id.as_bytes()[0].is_ascii_alphabetic());
    let shadowing = letter_ids
        .next()
        .expect("a random id starting with a letter");
    let renamed_onto = letter_ids.next().expect("another one");
    let named_like_it = registry.create(spec(&shadowing.id)).unwrap();
    assert_eq!(registry.resolve(&shadowing.id).unwrap(), shadowing);
    assert_eq!(registry.resolve(&named_like_it.id).unwrap(), named_like_it);

    registry.delete(&shadowing.id, shadowing.version).unwrap();
    assert_eq!(registry.resolve(&shadowing.id).unwrap(), named_like_it);
    registry
        .update(&named_like_it.id, named_like_it.version, spec("renamed"))
        .unwrap();
    assert!(registry.resolve(&shadowing.id).is_none());
    assert_eq!(registry.resolve("renamed").unwrap().id, named_like_it.id);

    // An endpoint renamed to another's id does not take the id over either.
    let onto = registry
        .update(
            &named_like_it.id,
            named_like_it.version + 1,
            spec(&renamed_onto.id),
        )
        .unwrap();
    assert_eq!(registry.resolve(&renamed_onto.id).unwrap(), renamed_onto);
    registry
        .delete(&renamed_onto.id, renamed_onto.version)
        .unwrap();
    assert_eq!(registry.resolve(&renamed_onto.id).unwrap(), onto);
}

#[test]
fn delete_checks_version() {
    let registry = memory_registry();
    let created = registry.create(spec("alpha")).unwrap();
    registry.update(&created.id, 1, spec("alpha")).unwrap();
    assert_eq!(
        registry.delete(&created.id, 1),
        Err(RegistryError::VersionConflict {
            id: created.id.clone(),
            expected: 1,
            actual: 2
        })
    );
    assert!(registry.resolve("alpha").is_some());
    registry.delete(&created.id, 2).unwrap();
    assert!(registry.resolve(&created.id).is_none());
    assert!(registry.resolve("alpha").is_none());
    assert_eq!(
        registry.delete(&created.id, 2),
        Err(RegistryError::NotFound(created.id.clone()))
    );
    assert!(registry.is_empty());
    assert_eq!(registry.table_version(), 3);
    // The name is free again.
    registry.create(spec("alpha")).unwrap();
}

#[test]
fn list_paginates_in_id_order_and_filters_by_name() {
    let registry = memory_registry();
    let mut ids: Vec<String> = (0..25)
        .map(|i| registry.create(spec(&format!("ep{i}"))).unwrap().id.clone())
        .collect();
    ids.sort();

    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..10 {
        let page = registry.list(10, token.as_deref(), None).unwrap();
        assert_eq!(page.table_version, 25);
        assert!(page.endpoints.len() <= 10);
        seen.extend(page.endpoints.iter().map(|e| e.id.clone()));
        token = page.next_page_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen, ids);

    // Exactly full last page: no dangling token.
    let page = registry.list(25, None, None).unwrap();
    assert_eq!(page.endpoints.len(), 25);
    assert_eq!(page.next_page_token, None);
    // 0 means the default (100); empty token means the first page.
    assert_eq!(
        registry.list(0, Some(""), None).unwrap().endpoints.len(),
        25
    );

    // A deleted cursor endpoint does not break pagination.
    let first = registry.list(5, None, None).unwrap();
    let last = first.endpoints.last().unwrap();
    registry.delete(&last.id, 1).unwrap();
    let next = registry
        .list(5, first.next_page_token.as_deref(), None)
        .unwrap();
    assert_eq!(next.endpoints[0].id, ids[5]);

    // By the name of one that is still there (ids are random: any one may have been deleted).
    let kept = next.endpoints[0].spec.name.clone();
    let by_name = registry.list(0, None, Some(&kept)).unwrap();
    assert_eq!(by_name.endpoints.len(), 1);
    assert_eq!(by_name.endpoints[0].spec.name, kept);
    assert_eq!(by_name.next_page_token, None);
    assert!(
        registry
            .list(0, None, Some("ep"))
            .unwrap()
            .endpoints
            .is_empty()
    );

    assert!(matches!(
        registry.list(10, Some("not-a-token"), None),
        Err(RegistryError::Invalid(m)) if m.contains("nextPageToken")
    ));
}

#[test]
fn list_clamps_page_size() {
    let endpoints = (0..1005).map(|i| endpoint(i, &format!("n{i}"))).collect();
    let registry = Registry::new(FixedStore(endpoints)).unwrap();
    let page = registry.list(5000, None, None).unwrap();
    assert_eq!(page.endpoints.len(), 1000);
    assert!(page.next_page_token.is_some());
    assert_eq!(registry.list(0, None, None).unwrap().endpoints.len(), 100);

    // Pages of an odd size walk the whole table once, in id order.
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = registry.list(37, token.as_deref(), None).unwrap();
        seen.extend(page.endpoints.iter().map(|e| e.id.clone()));
        token = page.next_page_token;
        if token.is_none() {
            break;
        }
    }
    let mut ids = seen.clone();
    ids.sort();
    ids.dedup();
    assert_eq!((seen.len(), &seen), (1005, &ids));
    assert!(
        memory_registry()
            .list(0, None, None)
            .unwrap()
            .endpoints
            .is_empty()
    );
}

#[test]
fn persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.redb");
    let (before, table_version) = {
        let registry = Registry::open(&path).unwrap();
        let a = registry.create(spec("a1")).unwrap();
        let b = registry.create(spec("b1")).unwrap();
        let c = registry.create(spec("c1")).unwrap();
        registry.update(&b.id, 1, spec("b2")).unwrap();
        registry.update(&a.id, 1, spec("a1")).unwrap();
        registry.delete(&c.id, 1).unwrap();
        let page = registry.list(0, None, None).unwrap();
        (page.endpoints, registry.table_version())
    };
    assert_eq!(table_version, 6);

    let registry = Registry::open(&path).unwrap();
    assert_eq!(registry.table_version(), table_version);
    assert_eq!(registry.list(0, None, None).unwrap().endpoints, before);
    assert!(registry.resolve("b1").is_none());
    assert!(registry.resolve("c1").is_none());
    assert_eq!(registry.resolve("b2").unwrap().version, 2);
    // The name index was persisted too.
    assert_eq!(
        registry.create(spec("b2")),
        Err(RegistryError::AlreadyExists("b2".into()))
    );
    registry.create(spec("b1")).unwrap();
    assert_eq!(registry.table_version(), table_version + 1);
}

#[test]
fn second_open_of_same_file_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.redb");
    let _registry = Registry::open(&path).unwrap();
    assert!(matches!(
        Registry::open(&path),
        Err(RegistryError::Storage(_))
    ));
}

#[test]
fn store_checks_inside_transaction() {
    // Direct store calls, as another writer bypassing the snapshot would make.
    let store = RedbStore::in_memory().unwrap();
    let a = endpoint(1, "same");
    assert_eq!(store.put(&a, None).unwrap(), 1);
    assert!(matches!(
        store.put(&a, None),
        Err(RegistryError::Storage(_))
    ));
    assert_eq!(
        store.put(&endpoint(2, "same"), None),
        Err(RegistryError::AlreadyExists("same".into()))
    );
    assert_eq!(
        store.put(&endpoint(2, "x2"), Some(1)),
        Err(RegistryError::NotFound(endpoint(2, "x2").id))
    );
    assert!(matches!(
        store.put(&a, Some(7)),
        Err(RegistryError::VersionConflict {
            expected: 7,
            actual: 1,
            ..
        })
    ));
    assert!(matches!(
        store.delete(&a.id, 7),
        Err(RegistryError::VersionConflict {
            expected: 7,
            actual: 1,
            ..
        })
    ));
    assert_eq!(store.delete(&a.id, 1).unwrap(), 2);
    assert_eq!(store.load().unwrap(), (2, vec![]));
}

#[test]
fn writes_are_visible_to_the_next_lookup_from_any_thread() {
    let registry = Arc::new(memory_registry());
    let (tx, rx) = mpsc::channel::<String>();
    let reader = {
        let registry = registry.clone();
        thread::spawn(move || {
            for name in rx {
                assert!(registry.resolve(&name).is_some(), "{name} not visible");
            }
        })
    };
    for i in 0..50 {
        let name = format!("ep{i}");
        registry.create(spec(&name)).unwrap();
        tx.send(name).unwrap();
    }
    drop(tx);
    reader.join().unwrap();
}

#[test]
fn resolves_every_endpoint_of_10k_by_id_or_name() {
    let endpoints: Vec<Endpoint> = (0..10_000)
        .map(|i| endpoint(i, &format!("name{i}")))
        .collect();
    let keys: Vec<String> = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            if i % 2 == 0 {
                e.id.clone()
            } else {
                e.spec.name.clone()
            }
        })
        .collect();
    let registry = Registry::new(FixedStore(endpoints)).unwrap();
    assert_eq!(registry.len(), 10_000);

    // Speed is measured in the bench (scenario S6), never asserted here.
    for key in &keys {
        assert!(registry.resolve(key).is_some(), "{key}");
    }
    assert!(registry.resolve("missing").is_none());
}

/// A read-only store preloaded with endpoints, to build big registries fast.
struct FixedStore(Vec<Endpoint>);

impl Store for FixedStore {
    fn load(&self) -> Result<(u64, Vec<Endpoint>), RegistryError> {
        Ok((1, self.0.clone()))
    }
    fn put(&self, _: &Endpoint, _: Option<u64>) -> Result<u64, RegistryError> {
        Err(RegistryError::Storage("read-only".into()))
    }
    fn delete(&self, _: &str, _: u64) -> Result<u64, RegistryError> {
        Err(RegistryError::Storage("read-only".into()))
    }
    fn load_clusters(&self) -> Result<Vec<nexus_registry::Cluster>, RegistryError> {
        Ok(Vec::new())
    }
    fn put_cluster(
        &self,
        _: &nexus_registry::Cluster,
        _: Option<u64>,
    ) -> Result<(), RegistryError> {
        Err(RegistryError::Storage("read-only".into()))
    }
    fn delete_cluster(&self, _: &str, _: u64) -> Result<(), RegistryError> {
        Err(RegistryError::Storage("read-only".into()))
    }
}

fn cluster_spec(template: &str) -> nexus_registry::ClusterSpec {
    nexus_registry::ClusterSpec {
        callback_url_template: template.into(),
        description: String::new(),
    }
}

/// Clusters persist like endpoints: a reopened registry knows them and their secrets, rotation
/// keeps the old secret for its overlap only, and a deleted cluster's secret opens nothing.
#[test]
fn clusters_survive_reopen_rotate_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.redb");
    let template = "https://t:7243/namespaces/{{.NamespaceName}}/nexus/callback";
    let first = {
        let r = Registry::open(&path).unwrap();
        let (c, secret) = r
            .create_cluster("east", cluster_spec(template), true)
            .unwrap();
        assert_eq!(c.version, 1);
        assert_eq!(
            c.spec.callback_url_template,
            "https://t:7243/namespaces/{namespace}/nexus/callback"
        );
        let e = r
            .create_cluster("east", cluster_spec(template), false)
            .unwrap_err();
        assert_eq!(e, RegistryError::ClusterExists("east".into()));
        let (mtls, none) = r
            .create_cluster("west", cluster_spec(template), false)
            .unwrap();
        assert!(none.is_none() && mtls.secrets.is_empty());
        secret.unwrap()
    };
    let r = Registry::open(&path).unwrap();
    let (c, _) = r
        .cluster_by_secret(&first)
        .expect("secret valid after reopen");
    assert_eq!(c.name, "east");
    assert!(r.cluster_by_secret("ngs_nope").is_none());

    let e = r
        .rotate_cluster_secret("east", 7, Duration::from_secs(3600))
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::ClusterVersionConflict { actual: 1, .. }),
        "{e}"
    );
    let (c, second) = r
        .rotate_cluster_secret("east", 1, Duration::from_secs(3600))
        .unwrap();
    assert_eq!(c.version, 2);
    assert!(
        r.cluster_by_secret(&first).is_some(),
        "old secret works during the overlap"
    );
    assert!(r.cluster_by_secret(&second).is_some());
    let (_, third) = r.rotate_cluster_secret("east", 2, Duration::ZERO).unwrap();
    assert!(
        r.cluster_by_secret(&first).is_none(),
        "overlap 0 ends the old secrets"
    );
    assert!(r.cluster_by_secret(&second).is_none());
    assert!(r.cluster_by_secret(&third).is_some());

    r.delete_cluster("east", 3).unwrap();
    assert!(r.cluster_by_secret(&third).is_none());
    assert!(r.cluster("east").is_none());
    drop(r);
    let r = Registry::open(&path).unwrap();
    assert!(r.cluster("east").is_none());
    assert_eq!(r.clusters().len(), 1);
    let e = r
        .update_cluster("west", 1, cluster_spec("https://t/no-placeholder"))
        .unwrap_err();
    assert!(e.to_string().contains("exactly once"), "{e}");
}

fn endpoint(i: u128, name: &str) -> Endpoint {
    let id = uuid::Uuid::from_u128(i).to_string();
    Endpoint {
        version: 1,
        created_time: "2024-01-01T00:00:00.000Z".into(),
        last_modified_time: "2024-01-01T00:00:00.000Z".into(),
        url_prefix: nexus_registry::url_prefix(&id),
        id,
        spec: spec(name),
    }
}
