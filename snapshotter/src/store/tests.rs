use std::time::{Duration, UNIX_EPOCH};

use super::*;

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn open(dir: &Path) -> MetaStore {
    MetaStore::open(Layout::new(dir).unwrap()).unwrap()
}

fn new(key: &str, kind: Kind, parent: Option<&str>) -> NewSnapshot {
    NewSnapshot {
        key: key.to_owned(),
        kind,
        parent: parent.map(str::to_owned),
        labels: BTreeMap::new(),
        source: Source::Local,
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Prepare + commit, as containerd unpacks one layer: returns the committed record.
fn layer(store: &mut MetaStore, name: &str, parent: Option<&str>) -> Record {
    let key = format!("extract-{name}");
    store
        .create(new(&key, Kind::Active, parent), t(1), |_| Ok(()))
        .unwrap();
    store
        .commit(
            name,
            &key,
            labels(&[("layer", name)]),
            Usage::default(),
            t(2),
        )
        .unwrap()
}

#[test]
fn commit_builds_a_parent_chain() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let l1 = layer(&mut store, "l1", None);
    let l2 = layer(&mut store, "l2", Some("l1"));
    let rw = store
        .create(new("container", Kind::Active, Some("l2")), t(3), |_| Ok(()))
        .unwrap();

    // Commit keeps the id (the directory containerd unpacked into) and drops the key.
    assert_eq!(l1.kind, Kind::Committed);
    assert!(matches!(
        store.get("extract-l1"),
        Err(Error::NotFound { .. })
    ));
    assert_eq!(store.get("l2").unwrap().parent.as_deref(), Some("l1"));
    assert_eq!(store.get("l2").unwrap().labels, labels(&[("layer", "l2")]));
    let chain: Vec<&str> = store
        .ancestors(&rw)
        .unwrap()
        .iter()
        .map(|r| r.key.as_str())
        .collect();
    assert_eq!(chain, ["l2", "l1"]);
    assert!(store.ancestors(&l1).unwrap().is_empty());
    assert_eq!(store.len(), 3);

    // Everything survives a reopen, and ids are not reused.
    drop(store);
    let mut store = open(dir.path());
    assert_eq!(store.get("l1").unwrap(), &l1);
    assert_eq!(store.get("l2").unwrap(), &l2);
    assert_eq!(store.get("container").unwrap(), &rw);
    let next = store
        .create(new("next", Kind::View, Some("l1")), t(4), |_| Ok(()))
        .unwrap();
    assert!(next.id > rw.id, "{} reused", next.id);
}

#[test]
fn remove_of_a_snapshot_with_children_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    layer(&mut store, "l1", None);
    layer(&mut store, "l2", Some("l1"));
    store
        .create(new("view", Kind::View, Some("l1")), t(3), |_| Ok(()))
        .unwrap();

    match store.remove("l1") {
        Err(Error::HasChildren { key, children }) => {
            assert_eq!((key.as_str(), children), ("l1", 2));
        }
        other => panic!("{other:?}"),
    }
    assert!(store.get("l1").is_ok(), "a refused remove changed nothing");
    assert!(matches!(store.remove("nope"), Err(Error::NotFound { .. })));

    // Children first, then the parent; the records are gone from disk too.
    store.remove("view").unwrap();
    store.remove("l2").unwrap();
    store.remove("l1").unwrap();
    assert!(store.is_empty());
    assert!(open(dir.path()).is_empty());
    assert_eq!(fs::read_dir(dir.path().join("meta")).unwrap().count(), 0);
}

#[test]
fn create_and_commit_check_keys_parents_and_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    layer(&mut store, "l1", None);
    store
        .create(new("active", Kind::Active, Some("l1")), t(1), |_| Ok(()))
        .unwrap();
    store
        .create(new("view", Kind::View, Some("l1")), t(1), |_| Ok(()))
        .unwrap();

    let create = |store: &mut MetaStore, key: &str, parent: Option<&str>| {
        store.create(new(key, Kind::Active, parent), t(1), |_| Ok(()))
    };
    assert!(matches!(create(&mut store, "", None), Err(Error::EmptyKey)));
    assert!(matches!(
        create(&mut store, "l1", None),
        Err(Error::AlreadyExists { key }) if key == "l1"
    ));
    assert!(matches!(
        create(&mut store, "x", Some("missing")),
        Err(Error::ParentNotFound { parent }) if parent == "missing"
    ));
    assert!(matches!(
        create(&mut store, "x", Some("active")),
        Err(Error::ParentNotCommitted { parent }) if parent == "active"
    ));

    let commit = |store: &mut MetaStore, name: &str, key: &str| {
        store.commit(name, key, BTreeMap::new(), Usage::default(), t(2))
    };
    assert!(matches!(
        commit(&mut store, "c", "view"),
        Err(Error::NotActive {
            kind: Kind::View,
            ..
        })
    ));
    assert!(matches!(
        commit(&mut store, "c", "l1"),
        Err(Error::NotActive {
            kind: Kind::Committed,
            ..
        })
    ));
    assert!(matches!(
        commit(&mut store, "l1", "active"),
        Err(Error::AlreadyExists { key }) if key == "l1"
    ));
    assert!(matches!(
        commit(&mut store, "c", "gone"),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        commit(&mut store, "", "active"),
        Err(Error::EmptyKey)
    ));
    assert_eq!(store.get("active").unwrap().kind, Kind::Active);
    let usage = Usage {
        size: 4096,
        inodes: 3,
    };
    let committed = store
        .commit("c", "active", BTreeMap::new(), usage, t(5))
        .unwrap();
    assert_eq!((committed.usage, committed.created), (usage, t(5)));
}

#[test]
fn a_failed_create_leaves_no_record_and_its_directory_is_an_orphan() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let layout = store.layout().clone();
    let made = store
        .create(new("ok", Kind::Active, None), t(1), |id| {
            fs::create_dir_all(layout.fs(id)).map_err(Error::io("create", &layout.fs(id)))
        })
        .unwrap();
    let failed = store.create(new("bad", Kind::Active, None), t(1), |id| {
        fs::create_dir_all(layout.fs(id)).unwrap();
        Err(Error::Io {
            op: "create",
            path: layout.work(id),
            source: io::Error::other("disk full"),
        })
    });
    assert!(matches!(failed, Err(Error::Io { .. })));
    assert!(matches!(store.get("bad"), Err(Error::NotFound { .. })));
    assert_eq!(store.orphans().unwrap(), [layout.snapshot_dir(made.id + 1)]);
    // A removed snapshot's directory is an orphan too, until the caller deletes it.
    store.remove("ok").unwrap();
    assert_eq!(store.orphans().unwrap().len(), 2);
}

#[test]
fn update_changes_only_labels_as_containerd_does() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    store
        .create(
            NewSnapshot {
                labels: labels(&[("a", "1"), ("b", "2")]),
                ..new("s", Kind::Active, None)
            },
            t(1),
            |_| Ok(()),
        )
        .unwrap();
    let paths = |p: &[&str]| p.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    // One label set, one removed (absent from the given labels), the rest kept.
    let updated = store
        .update(
            "s",
            labels(&[("a", "9"), ("z", "x")]),
            &paths(&["labels.a", "labels.b"]),
            t(7),
        )
        .unwrap();
    assert_eq!(updated.labels, labels(&[("a", "9")]));
    assert_eq!((updated.created, updated.updated), (t(1), t(7)));
    // No paths or `labels`: replaced whole.
    let updated = store.update("s", labels(&[("c", "3")]), &[], t(8)).unwrap();
    assert_eq!(updated.labels, labels(&[("c", "3")]));
    let updated = store
        .update("s", labels(&[("d", "4")]), &paths(&["labels"]), t(9))
        .unwrap();
    assert_eq!(updated.labels, labels(&[("d", "4")]));
    assert!(matches!(
        store.update("s", BTreeMap::new(), &paths(&["parent"]), t(9)),
        Err(Error::ImmutableField { field, .. }) if field == "parent"
    ));
    assert!(matches!(
        store.update("none", BTreeMap::new(), &[], t(9)),
        Err(Error::NotFound { .. })
    ));
    assert_eq!(
        open(dir.path()).get("s").unwrap().labels,
        labels(&[("d", "4")])
    );
}

#[test]
fn unreadable_records_are_set_aside_and_their_directories_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let layout = store.layout().clone();
    let kept = layer(&mut store, "kept", None);
    let broken = layer(&mut store, "broken", None);
    let moved = layer(&mut store, "moved", None);
    for id in [kept.id, broken.id, moved.id] {
        fs::create_dir_all(layout.fs(id)).unwrap();
    }
    drop(store);
    let meta = layout.meta_dir();
    fs::write(
        meta.join(format!("{}.json", broken.id)),
        b"{\"version\": 1, \"id\"",
    )
    .unwrap();
    // A record copied under another id's name does not load either.
    fs::rename(
        meta.join(format!("{}.json", moved.id)),
        meta.join("99.json"),
    )
    .unwrap();
    // An interrupted write.
    fs::write(meta.join("5.json.tmp"), b"half").unwrap();

    let store = open(dir.path());
    assert_eq!(store.get("kept").unwrap(), &kept);
    assert!(store.get("broken").is_err() && store.get("moved").is_err());
    assert!(meta.join(format!("{}.json.corrupt", broken.id)).exists());
    assert!(meta.join("99.json.corrupt").exists());
    assert!(!meta.join("5.json.tmp").exists());
    // The broken record's directory is kept for an operator; the one whose record moved away
    // belongs to no record and no quarantined id.
    assert_eq!(store.orphans().unwrap(), [layout.snapshot_dir(moved.id)]);

    // Quarantined ids are not reused either.
    let mut store = store;
    let next = store
        .create(new("next", Kind::Active, None), t(1), |_| Ok(()))
        .unwrap();
    assert_eq!(next.id, 100);
}

#[test]
fn ids_have_one_spelling() {
    assert_eq!(parse_id("7"), Some(7));
    assert_eq!(parse_id("07"), None);
    assert_eq!(parse_id("+7"), None);
    assert_eq!(parse_id("x"), None);
}
