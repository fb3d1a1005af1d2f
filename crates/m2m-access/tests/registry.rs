//! The device registry on a real store on disk.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use m2m_access::{verify_password, Group, NewDevice, Registry, RegistryError, Who};
use m2m_store::{Store, StoreConfig};
use m2m_topic::{parse_subscription, TopicName};

fn open(dir: &std::path::Path) -> Registry {
    let (store, _) = Store::open(StoreConfig::new(dir)).unwrap();
    Registry::open(Some(store), vec!["allow subscribe broadcast/#".parse().unwrap()]).unwrap()
}

fn device(id: &str, password: &str, groups: &[&str], rules: &[&str]) -> NewDevice {
    NewDevice {
        id: id.into(),
        password: Some(password.into()),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        rules: rules.iter().map(|r| (*r).to_owned()).collect(),
        ..NewDevice::default()
    }
}

fn may_publish(registry: &Registry, device: &str, topic: &str) -> bool {
    let d = registry.device(device).unwrap();
    let groups: Vec<Arc<str>> = d.groups.iter().map(|g| Arc::from(g.as_str())).collect();
    let who = Who::new(device).with_username(device).with_device(device).with_groups(&groups);
    registry.acl().check_publish(&who, &TopicName::try_from(topic).unwrap()).is_allowed()
}

#[test]
fn devices_and_groups_survive_a_reopen_and_compile_into_rules_that_deny_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = open(dir.path());
    assert!(!registry.is_enabled());
    let anyone = Who::new("tool");
    let topic = TopicName::try_from("anything").unwrap();
    assert!(registry.acl().check_publish(&anyone, &topic).is_allowed(), "an empty registry grants all");

    registry.add_device(device("press-1", "pw1", &["line"], &["allow publish press/%c/#"]), 1000).unwrap();
    registry.set_group(Group { name: "line".into(), rules: vec!["allow both line/#".into()] }).unwrap();
    assert!(registry.is_enabled());
    assert!(!registry.acl().check_publish(&anyone, &topic).is_allowed(), "default deny once enabled");
    let sub = parse_subscription("broadcast/x").unwrap();
    assert!(registry.acl().check_subscribe(&anyone, &sub).is_allowed(), "global rules apply to all");
    drop(registry);

    let registry = open(dir.path());
    let d = registry.device("press-1").unwrap();
    assert_eq!((d.created_ms, d.enabled, d.groups.as_slice()), (1000, true, &["line".to_owned()][..]));
    let hash = d.password_hash.as_deref().unwrap();
    assert!(
        hash.starts_with("$argon2id$") && verify_password(b"pw1", hash) && !verify_password(b"pw2", hash)
    );
    assert!(may_publish(&registry, "press-1", "press/press-1/temp"), "device rule with %c");
    assert!(!may_publish(&registry, "press-1", "press/press-2/temp"));
    assert!(may_publish(&registry, "press-1", "line/speed"), "group rule");
    assert_eq!(registry.groups().count(), 1);
}

#[test]
fn bad_names_rules_and_duplicates_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = open(dir.path());
    for id in ["", "a/b", "a#", "has space", &"x".repeat(129)] {
        let err = registry.add_device(device(id, "pw", &[], &[]), 0).unwrap_err();
        assert!(matches!(err, RegistryError::InvalidName { .. }), "{id:?}: {err}");
    }
    let err = registry.add_device(device("ok", "pw", &[], &["allow publish a/#/b"]), 0).unwrap_err();
    assert!(err.to_string().starts_with("rule \"allow publish a/#/b\""), "{err}");
    registry.add_device(device("ok", "pw", &[], &[]), 0).unwrap();
    assert!(matches!(registry.add_device(device("ok", "pw", &[], &[]), 0), Err(RegistryError::Exists(_))));
    assert!(matches!(registry.remove_device("nope"), Err(RegistryError::NotFound { .. })));
    registry.remove_device("ok").unwrap();
    drop(registry);
    assert_eq!(open(dir.path()).devices().count(), 0);
}

#[test]
fn imports_are_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = open(dir.path());
    let csv = "id,password,groups,disabled\ncam-1,pw,site;cams,\ncam-2,,cams,true\n";
    assert_eq!(registry.import_csv(csv, 5).unwrap(), 2);
    let cam2 = registry.device("cam-2").unwrap();
    assert!(!cam2.enabled && cam2.password_hash.is_none());
    assert_eq!(registry.device("cam-1").unwrap().groups, ["site", "cams"]);

    let json = r#"[{"id": "lamp-1", "password": "x", "attributes": {"street": "Main"}},
                   {"id": "cam-1"}]"#;
    assert!(matches!(registry.import_json(json, 6), Err(RegistryError::Exists(_))));
    assert!(registry.device("lamp-1").is_none(), "nothing of a failed import is kept");
    let err = registry.import_csv("a,b,c,maybe\n", 7).unwrap_err();
    assert!(err.to_string().contains("line 1"), "{err}");
    assert_eq!(
        registry.import_json(r#"[{"id": "lamp-1", "rules": ["allow publish lamps/%c"]}]"#, 8).unwrap(),
        1
    );
    assert_eq!(registry.devices().count(), 3);
}
